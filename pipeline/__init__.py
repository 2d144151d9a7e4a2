"""Stage 1 of longvid: decode, segment, sample and encode videos into a feature store.

Importing the package detaches standard input when it is a terminal this process does not own
(a background job, ``pipeline extract ... > log 2>&1 &``, or a Ray worker started from one):
such a process that touches the terminal is stopped by job control (SIGTTIN/SIGTTOU). Importing
scenedetect runs ``ffmpeg -v quiet``, which sets terminal modes on its standard input, so a
background extraction sat at 0/N forever. Standard input then reads ``/dev/null``, and every
child process (ffmpeg, Ray's raylet and workers) inherits that. A foreground process keeps its
terminal.
"""

from __future__ import annotations

import os


def detach_background_stdin() -> bool:
    """Point file descriptor 0 at ``/dev/null`` if it is a terminal whose foreground process
    group is not this process's (a background job). Returns whether it did."""
    try:
        if not os.isatty(0) or os.tcgetpgrp(0) == os.getpgrp():
            return False
    except OSError:  # no stdin, or no controlling terminal
        return False
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    return True


detach_background_stdin()

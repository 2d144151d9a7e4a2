"""Fault injection: make a process die at a chosen point of writing a video (tests, chaos drills).

Set ``LONGVID_FAULT=<point>:<video id>[:<marker file>]`` and the process that reaches
``<point>`` for that video exits at once with status 137 (as if SIGKILLed: no cleanup, no
``finally``). With a marker file, only the first process to get there dies (the marker is
created atomically), so a retried video goes through; without one, every attempt dies (a
"poison" video). Several faults are separated by commas (so video ids containing ``:`` or
``,`` cannot be targeted). The driver forwards ``LONGVID_*`` variables to its Ray workers, so the
variable set where ``pipeline extract`` runs reaches every worker process, on any node.

Points, in the order a video passes them:

- ``hang``: at the start, the process sleeps for good instead of exiting (a decoder stuck on
  a network read: ``--video-timeout-sec`` must end it);
- ``start``: the worker took the video, nothing written yet;
- ``mid_part``: the part's arrays are written under their temporary name, not yet published;
- ``after_part``: the part is published (renamed), its index fragment not yet written.

One point is in the training loop (:mod:`heads.loop`), its target
``rank<R>-epoch<E>-step<S>`` (a data-parallel worker's rank, the 1-based epoch and the
0-based step in it):

- ``train_step``: before the step's forward; the process sends itself SIGKILL (a worker
  killed mid-epoch, as a lost node or the OOM killer leaves it).

Unset (the normal case) it costs one dictionary lookup per point.
"""

from __future__ import annotations

import os
import time

POINTS = ("hang", "start", "mid_part", "after_part", "train_step")
EXIT_STATUS = 137


def maybe_crash(point: str, video_id: str) -> None:
    """Exit this process now if ``LONGVID_FAULT`` names ``point`` and ``video_id``.

    Raises:
        ValueError: ``LONGVID_FAULT`` is malformed (names an unknown point).
    """
    specs = os.environ.get("LONGVID_FAULT")
    if not specs:
        return
    for spec in specs.split(","):
        where, _, rest = spec.partition(":")
        target, _, marker = rest.partition(":")
        if where not in POINTS:
            raise ValueError(
                f"LONGVID_FAULT={specs!r}: the point must be one of {', '.join(POINTS)} "
                "(format <point>:<video id>[:<marker file>], comma-separated)"
            )
        if where != point or target != video_id:
            continue
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue  # another process already died here once
        if where == "hang":
            while True:
                time.sleep(3600)
        if where == "train_step":
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(EXIT_STATUS)

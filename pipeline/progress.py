"""Progress bars that suit where they are written.

On a terminal a bar redraws itself in place (tqdm's default). Written to a log file or a Ray
job's log, every redraw stays in the file: about 160 bytes of ``\\r`` updates per video for the
extract bar. Off a terminal the bars here redraw at most every :data:`LOG_INTERVAL_SEC` seconds
(and once at the end), so a day-long job logs a line every half minute, not every video.
"""

from __future__ import annotations

import sys

# Seconds between two redraws of a bar whose stream is not a terminal.
LOG_INTERVAL_SEC = 30.0


def progress_bar(*args, file=None, **kwargs):
    """A ``tqdm`` bar on ``file`` (default stderr), redrawn at most every
    :data:`LOG_INTERVAL_SEC` seconds when ``file`` is not a terminal; arguments as ``tqdm``'s
    (an explicit ``mininterval`` wins)."""
    from tqdm import tqdm

    file = file if file is not None else sys.stderr
    is_terminal = getattr(file, "isatty", lambda: False)()
    if not is_terminal:
        kwargs.setdefault("mininterval", LOG_INTERVAL_SEC)
        kwargs.setdefault("miniters", 1)  # the interval alone decides (no dynamic miniters)
    return tqdm(*args, file=file, **kwargs)

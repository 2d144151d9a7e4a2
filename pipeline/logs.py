"""Logging of both command lines (``pipeline``, ``heads``) and of the Ray workers they start.

Modules log through ``logging.getLogger(__name__)``; nothing is configured at import time. The
CLIs call :func:`configure_logging` from their ``-v`` / ``--log-level`` options: one handler on
the root logger writes ``time LEVEL logger: message`` lines to stderr. This project's loggers
(``pipeline``, ``heads``, ``catalogs``) log at the chosen level; other libraries' loggers stay
at WARNING unless a quieter level is chosen, so ``-vv`` does not bury the run under fsspec's or
matplotlib's debug lines. Standard output keeps the commands' results (summaries, tables).

Ray workers log the same way: the driver passes its level on (:func:`worker_env`, the
``LONGVID_LOG_LEVEL`` variable) and each extractor calls :func:`configure_logging` with it as it
starts; Ray streams a worker's stderr to the driver's (``log_to_driver``), each line prefixed
with the actor and process id, e.g. ``(VideoExtractor pid=4242)``.
"""

from __future__ import annotations

import logging
import sys

# Level names accepted by --log-level and LONGVID_LOG_LEVEL (case-insensitive).
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
DEFAULT_LEVEL = "warning"
LEVEL_ENV = "LONGVID_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The packages of this project: their loggers take the chosen level.
PACKAGES = ("pipeline", "heads", "catalogs")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (a test runner or Ray
    swaps it; a stream kept from configuration time could be closed by then)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property wins
        pass


def parse_level(name: str) -> int:
    """The ``logging`` level of ``name`` (``debug``, ``info``, ``warning``, ``error``; any
    case).

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    level = LEVELS.get(str(name).strip().lower())
    if level is None:
        raise ValueError(f"log level {name!r} (--log-level or {LEVEL_ENV}) is not one of "
                         f"{', '.join(LEVELS)}")
    return level


def cli_level(verbose: int, log_level: str | None) -> int:
    """The level the flags ask for: ``--log-level`` when given, else WARNING lowered one step
    per ``-v`` (``-v`` INFO, ``-vv`` DEBUG).

    Raises:
        ValueError: an unknown ``--log-level`` name.
    """
    if log_level is not None:
        return parse_level(log_level)
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def configure_logging(level: int | str | None) -> None:
    """Send log records at ``level`` and above from this project's loggers, and WARNING and
    above from every other logger (``level``'s, if quieter), to stderr, one line each.

    Calling it again replaces the previous configuration (handler and levels), never adds a
    second handler.

    Args:
        level: A ``logging`` level, a name of :data:`LEVELS`, or None for
            :data:`DEFAULT_LEVEL`.

    Raises:
        ValueError: an unknown level name.
    """
    if level is None:
        level = DEFAULT_LEVEL
    if isinstance(level, str):
        level = parse_level(level)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    for package in PACKAGES:
        logging.getLogger(package).setLevel(level)


def level_name(level: int) -> str:
    """The :data:`LEVELS` name of ``level`` (the nearest quieter one for a level in between)."""
    for name, value in sorted(LEVELS.items(), key=lambda item: item[1]):
        if level <= value:
            return name
    return "error"


def worker_env() -> dict[str, str]:
    """``{LONGVID_LOG_LEVEL: name}``: the level this process logs ``pipeline`` records at, for
    workers to configure themselves with (:func:`configure_logging`)."""
    return {LEVEL_ENV: level_name(logging.getLogger("pipeline").getEffectiveLevel())}

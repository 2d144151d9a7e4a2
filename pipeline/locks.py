"""One maintainer at a time: the lock compaction and ``pipeline verify --gc`` take.

Both rewrite or delete parts other processes may be naming: two compactions at once could
each delete the packed part the other just published and was about to repoint videos to (a
video pointing at a deleted part). On a local (or NFS/POSIX) store they take an exclusive
``fcntl.flock`` on ``<feature set>/.maintenance.lock``; the second one waits for the first
(then finds less left to pack) or, past ``wait_sec``, stops with an error naming the holder.
Extraction itself takes no lock: its writes go to fresh parts and one index fragment each.

Object stores (``s3://``, ``gs://``) have no advisory locks: there, compaction and ``verify
--gc`` follow a documented single-writer rule (run them from one driver at a time; the extract
command compacts at its end, so run concurrent extracts with ``--no-compact`` and compact once
afterwards). The lock is then a no-op.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".maintenance.lock"


class LockTimeout(RuntimeError):
    """Another process held the feature set's maintenance lock for longer than allowed."""


@contextmanager
def maintenance_lock(fs, what: str, *, wait_sec: float = 3600.0, poll_sec: float = 0.2):
    """Hold the exclusive maintenance lock of feature set ``fs`` for the ``with`` block.

    Args:
        fs: A :class:`pipeline.store.FeatureSet`.
        what: What the holder does (written into the lock file, shown to a waiting process).
        wait_sec: How long to wait for another holder, seconds.
        poll_sec: Seconds between attempts.

    Raises:
        LockTimeout: still held by another process after ``wait_sec``.
    """
    if not fs.loc.is_local:
        yield  # object stores: the single-writer rule of the module docstring
        return
    import fcntl

    path = Path(fs.path) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_sec
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = path.read_text(errors="replace").strip() or "another process"
                    raise LockTimeout(
                        f"feature set {fs.name}: {holder} has held {path} for over "
                        f"{wait_sec:g} s; wait for it, or remove the file if that process is "
                        "gone (a crashed holder's lock is released with it)"
                    ) from None
                time.sleep(poll_sec)
        os.ftruncate(fd, 0)
        os.write(fd, f"{what} (pid {os.getpid()}, since {time.strftime('%H:%M:%S')})".encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

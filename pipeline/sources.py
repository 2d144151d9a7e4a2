"""Source identity: which file a stored video's tokens came from, so a changed file is noticed.

A feature set's index row records, in its ``info``, the identity of the file the worker decoded:
its size, modification time and a SHA-256 of its first MiB (``source_identity``). Before a run
treats a stored video as done, the driver compares it with the file the catalog names now
(``compare_source``): same size and mtime is the same file (one ``stat``, no read); a different
size is a changed file; the same size with another mtime (a copy, a ``touch``) reads the first
MiB again and is the same file only if its hash matches. The path itself is not compared, so a
dataset moved to another disk is not re-extracted.

Rows written before identities were recorded, and sources that are not local files (URLs),
carry no identity: they count as unchanged, since nothing can be compared (``pipeline verify``
cannot tell either).

A generic catalog (``folder``, ``csv``, ``parquet``: every folder is called ``folder``) adds
where its videos and labels are to its feature sets' spec (:func:`catalog_source`), so two
tables that map the same ids to other files never share a feature set.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

HEAD_BYTES = 1 << 20  # bytes hashed from the start of each file


def _head_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()


def source_identity(path: str | Path | None) -> dict | None:
    """``{"path", "size", "mtime_ns", "head_sha256"}`` of a local file; None when ``path`` is
    None, a URL, or not a readable file."""
    if path is None or "://" in str(path):
        return None
    try:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        return {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                "head_sha256": _head_sha256(resolved)}
    except OSError:
        return None


def compare_source(recorded: dict | None, path: str | Path | None) -> str | None:
    """Why the file at ``path`` is not the one ``recorded`` describes, or None when it is (or
    when either side cannot be told: no recorded identity, a URL, a file that cannot be read).

    Returns:
        None, or a reason such as ``"size 1,024 → 2,048 bytes"`` or ``"content changed (first
        MiB)"``.
    """
    if not recorded or path is None or "://" in str(path):
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None  # a missing file fails in the worker, with its own message
    if stat.st_size != recorded.get("size"):
        return f"size {recorded.get('size'):,} → {stat.st_size:,} bytes"
    if stat.st_mtime_ns == recorded.get("mtime_ns"):
        return None
    try:
        head = _head_sha256(Path(path))
    except OSError:
        return None
    return None if head == recorded.get("head_sha256") else "content changed (first MiB)"


# Catalogs known only by a generic name (every folder is `folder`): their identity is where
# their videos and labels are, so two folders never share a feature set.
GENERIC_CATALOGS = ("folder", "csv", "parquet")


def catalog_source(catalog) -> dict | None:
    """Where a generic catalog's videos and labels live (resolved ``root``, ``labels`` and
    ``video_root`` of its ``meta``), part of its feature sets' identity; None for the named
    benchmarks and the demo, whose ids are their own identity (the demo's build config is in
    the spec already)."""
    if catalog.name not in GENERIC_CATALOGS:
        return None
    where = {"root": catalog.meta.get("root") or catalog.root, "labels": catalog.meta.get("labels"),
             "video_root": catalog.meta.get("video_root")}
    return {k: str(Path(v).resolve()) if v else None for k, v in where.items()}

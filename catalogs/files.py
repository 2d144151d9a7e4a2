"""Finding a benchmark's video files on disk by id, and shared parsing helpers.

Benchmarks name their videos by an id (a YouTube id for LVU, COIN and Kinetics clips); the
files a user downloaded are ``<id>.<ext>`` somewhere under a video root, in whatever folder
layout their downloader chose. :func:`find_videos` maps ids to files in one directory walk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import polars as pl

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v")


def find_videos(video_root: str | Path | None, ids: Iterable[str]) -> dict[str, str]:
    """Absolute paths of the files named ``<id>.<ext>`` under ``video_root`` (recursively).

    Args:
        video_root: Directory to search; None or a directory that does not exist finds nothing
            (a catalog can be read for its labels alone, e.g. by ``heads train``).
        ids: Wanted ids; files whose stem is not one of them are ignored, so partial downloads
            (``.part``) and unrelated files do no harm. Extensions: :data:`VIDEO_EXTENSIONS`,
            any case.

    Returns:
        id → absolute path, for the ids found (missing ids are absent).

    Raises:
        ValueError: two files give the same id (``a.mp4`` and ``a.webm``); the message names
            both, so the user can delete one.
    """
    if video_root is None or not Path(video_root).is_dir():
        return {}
    wanted = set(ids)
    found: dict[str, str] = {}
    # os.walk instead of Path.rglob: one stat-free listing per folder (LVU has ~10k files).
    for folder, _, names in os.walk(Path(video_root).expanduser().resolve()):
        for name in sorted(names):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in VIDEO_EXTENSIONS or stem not in wanted:
                continue
            path = os.path.join(folder, name)
            if stem in found:
                raise ValueError(
                    f"two files for video {stem!r}: {found[stem]} and {path}; keep one of them"
                )
            found[stem] = path
    return found


def split_list(value: str | None, separators: str = ";|") -> list[str] | None:
    """``"Action; Drama|Crime"`` → ``["Action", "Drama", "Crime"]`` (stripped, no empties).

    None stays None (unlabelled); an empty string gives ``[]`` (labelled with no class).
    """
    if value is None:
        return None
    for sep in separators[1:]:
        value = value.replace(sep, separators[0])
    return [v.strip() for v in value.split(separators[0]) if v.strip()]


def resolve_paths(
    ids: list[str], given: list[str | None] | None, *, base: Path, video_root: Path | None
) -> list[str | None]:
    """Absolute video paths for a labels table: its ``path`` values where given (relative ones
    against ``base``), else ``<id>.<ext>`` found under ``video_root``; None where neither.

    A given path is kept even if the file is gone, so that extraction records the failure.
    """
    given = given or [None] * len(ids)
    found = find_videos(video_root, [i for i, p in zip(ids, given) if not p])
    return [str((base / p).resolve()) if p else found.get(i) for i, p in zip(ids, given)]


def read_table(path: Path) -> pl.DataFrame:
    """A labels table from ``.csv`` or ``.parquet``, ids and paths as strings.

    Raises:
        ValueError: the file is missing, or its extension is neither.
    """
    if not path.is_file():
        raise ValueError(f"labels file {path} does not exist")
    if path.suffix.lower() == ".parquet":
        return pl.read_parquet(path)
    if path.suffix.lower() != ".csv":
        raise ValueError(f"labels file {path}: expected a .csv or .parquet file")
    header = pl.read_csv(path, n_rows=0).columns
    strings = {c: pl.String for c in ("video_id", "path", "split", "youtube_id") if c in header}
    return pl.read_csv(path, schema_overrides=strings)

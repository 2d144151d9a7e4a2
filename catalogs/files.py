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
# Label values that mean "this video has no label for the task" (compared stripped, lowercase):
# blanks, str(float("nan")) as pandas writes it, and spelled-out nulls. NaN floats count too.
MISSING_LABELS: frozenset[str] = frozenset({"", "nan", "-nan", "+nan", "null", "<na>"})


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

    None stays None (unlabelled); an empty string gives ``[]`` (labelled with no class). Values
    such as ``NaN`` are made null beforehand by :func:`missing_as_null`, not here.
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


def missing_as_null(column: pl.Series, *, keep_empty: bool = False) -> pl.Series:
    """``column`` with every missing label as null: NaN floats, and strings that are blank or in
    :data:`MISSING_LABELS` once stripped (so no task ever gets a class named ``NaN``).

    Args:
        column: A label column.
        keep_empty: Keep blank strings: a multilabel value ``""`` is a video labelled with no
            class (see :func:`split_list`), unlike a null or ``NaN``.

    Returns:
        The column; lists (multilabel) lose their missing elements; other dtypes are unchanged.
    """
    if column.dtype.is_float():
        return column.fill_nan(None)
    if column.dtype == pl.String:
        missing_labels = list(MISSING_LABELS - {""} if keep_empty else MISSING_LABELS)
        missing = column.str.strip_chars().str.to_lowercase().is_in(missing_labels)
        return column.zip_with(~missing.fill_null(True), pl.repeat(None, len(column),
                                                                   dtype=pl.String, eager=True))
    if column.dtype == pl.List(pl.String):
        element = pl.element().str.strip_chars().str.to_lowercase()
        return column.list.eval(pl.element().filter(~element.is_in(list(MISSING_LABELS))
                                                    & pl.element().is_not_null()))
    return column


def read_csv(path: Path, *, strings: tuple[str, ...] = (), what: str = "labels file"
             ) -> pl.DataFrame:
    """A CSV table with the ``strings`` columns (those present) read as strings.

    Raises:
        ValueError: the file is empty (0 bytes, blank, or a header without rows), one line
            naming it as ``what`` and the file.
    """
    try:
        header = pl.read_csv(path, n_rows=0).columns
        table = pl.read_csv(path, schema_overrides={c: pl.String for c in strings if c in header})
    except pl.exceptions.NoDataError:
        raise ValueError(f"{what} {path} is empty: no rows, not even a header; "
                         "pass the table that lists the videos") from None
    if not len(table):
        raise ValueError(f"{what} {path} has no rows, only the header {','.join(header)}; "
                         "add one row per video")
    return table


def read_table(path: Path) -> pl.DataFrame:
    """A labels table from ``.csv`` or ``.parquet``, ids and paths as strings.

    Raises:
        ValueError: the file is missing, has no rows, or its extension is neither.
    """
    if not path.is_file():
        raise ValueError(f"labels file {path} does not exist")
    if path.suffix.lower() == ".parquet":
        table = pl.read_parquet(path)
        if not len(table):
            raise ValueError(f"labels file {path} has no rows; add one row per video")
        return table
    if path.suffix.lower() != ".csv":
        raise ValueError(f"labels file {path}: expected a .csv or .parquet file")
    return read_csv(path, strings=("video_id", "path", "split", "youtube_id"))

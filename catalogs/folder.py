"""The ``folder`` catalog: every video file under a directory, with optional labels from a CSV.

``video_id`` is the file's path relative to ``root`` without its extension, with ``/``
separators (``cats/clip01.mp4`` → ``cats/clip01``). A labels CSV adds splits and tasks: column
``video_id`` (required), ``split`` and ``path`` (optional), and one column per task whose kind
is inferred from its values (numbers → regression; strings with ``;`` in any row → multilabel;
other strings → classification). A NaN, ``null`` or blank value is a missing label (that video
has no label for the task), never a class; only a multilabel ``""`` is a label, the empty set.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from catalogs import register_catalog
from catalogs.base import SPLITS, Catalog, Task
from catalogs.files import VIDEO_EXTENSIONS, missing_as_null, read_csv
# Columns of the labels CSV that describe the video rather than define a task.
_RESERVED_COLUMNS: tuple[str, ...] = ("video_id", "split", "path")
_MULTILABEL_SEPARATOR = ";"


@register_catalog("folder")
def folder_catalog(
    *, root: str | Path, labels: str | Path | None = None, split: str = "train",
    video_root: str | Path | None = None,
) -> Catalog:
    """A catalog of the video files under ``video_root`` (else ``root``), recursively.

    Args:
        root: Directory searched for files with an extension in :data:`VIDEO_EXTENSIONS`
            when ``video_root`` is not given (``--data-root``).
        labels: Optional CSV with columns ``video_id``, optional ``split``, optional ``path``
            (relative to the video directory or absolute; lets a row name a video that is
            missing on disk: it is kept, and extraction records it as failed) and one column per
            task.
        split: Split of every video the labels file does not assign one.
        video_root: Directory of the videos (``--video-root``, as for ``lvu``); it replaces
            ``root`` as the directory searched, which then need not exist.

    Returns:
        The catalog; ``videos.path`` is absolute. ``labels`` has one row per video, in the order
        of ``videos`` (nulls where the CSV has no label); ``None`` without a labels file.

    Raises:
        ValueError: the video directory is not a directory; two files map to one ``video_id``; the labels
            file is missing, lacks ``video_id``, repeats a ``video_id``, has a bad ``split``, names
            a video with neither a file under ``root`` nor a ``path``, or has a task column whose
            kind cannot be inferred. Messages name the file and column at fault.
    """
    root_path = Path(video_root if video_root is not None else root).expanduser().resolve()
    if not root_path.is_dir():
        flag = "--video-root" if video_root is not None else "--data-root"
        raise ValueError(f"folder catalog: {flag} {root_path} is not a directory")
    if split not in SPLITS:
        raise ValueError(f"folder catalog: split {split!r} is not one of {SPLITS}")

    found: dict[str, str] = {}
    for file in sorted(root_path.rglob("*")):
        if file.suffix.lower() in VIDEO_EXTENSIONS and file.is_file():
            video_id = file.relative_to(root_path).with_suffix("").as_posix()
            if video_id in found:
                raise ValueError(
                    f"folder catalog: {found[video_id]} and {file} both give video_id "
                    f"{video_id!r}; rename one of them"
                )
            found[video_id] = str(file)
    videos = pl.DataFrame(
        {"video_id": list(found), "path": list(found.values()), "split": [split] * len(found)},
        schema={"video_id": pl.String, "path": pl.String, "split": pl.String},
    )
    if labels is None:
        return Catalog(name="folder", root=root_path, videos=videos, meta={"root": str(root_path)})

    labels_path = Path(labels).expanduser().resolve()
    table, tasks = _read_labels(labels_path)
    videos = _merge_videos(videos, table, root_path, labels_path, split)
    label_table = videos.select("video_id").join(
        table.select(["video_id", *tasks]), on="video_id", how="left", maintain_order="left"
    )
    return Catalog(
        name="folder",
        root=root_path,
        videos=videos,
        tasks=tasks,
        labels=label_table,
        meta={"root": str(root_path), "labels": str(labels_path)},
    )


def _read_labels(path: Path) -> tuple[pl.DataFrame, dict[str, Task]]:
    """Reads a labels CSV; returns it with task columns converted, and the inferred tasks."""
    if not path.is_file():
        raise ValueError(f"labels file {path} does not exist")
    # Ids such as "0001" must stay strings, not become integers.
    table = read_csv(path, strings=_RESERVED_COLUMNS)
    if "video_id" not in table.columns:
        raise ValueError(f"labels file {path}: no 'video_id' column (columns: {table.columns})")
    if table["video_id"].null_count():
        raise ValueError(f"labels file {path}, column 'video_id': empty value(s)")
    dupes = table.filter(pl.col("video_id").is_duplicated())["video_id"].unique().to_list()
    if dupes:
        raise ValueError(f"labels file {path}, column 'video_id': repeated id(s) {dupes[:5]}")
    if "split" in table.columns:
        bad = sorted(set(table["split"].drop_nulls().to_list()) - set(SPLITS))
        if bad:
            raise ValueError(f"labels file {path}, column 'split': {bad} not in {SPLITS}")

    tasks: dict[str, Task] = {}
    for name in table.columns:
        if name in _RESERVED_COLUMNS:
            continue
        task, values = _infer_task(table[name], path)
        tasks[name] = task
        table = table.with_columns(values.alias(name))
    return table, tasks


def _infer_task(column: pl.Series, path: Path) -> tuple[Task, pl.Series]:
    """Infers a task from a labels column; returns it and the column in the catalog's dtype.

    Missing labels (NaN, blank, ``null``) become null first, so a column of numbers with a
    ``null`` among them is still a regression task.
    """
    where = f"labels file {path}, column {column.name!r}"
    description = f"column {column.name!r} of {path.name}"
    if column.dtype == pl.Boolean:
        column = column.cast(pl.String)
    multilabel = column.dtype == pl.String and bool(
        column.str.contains(_MULTILABEL_SEPARATOR, literal=True).any())
    column = missing_as_null(column, keep_empty=multilabel)
    if column.dtype == pl.String and not multilabel:
        numbers = column.cast(pl.Float64, strict=False)
        if column.drop_nulls().len() and numbers.null_count() == column.null_count():
            column = numbers
    if column.dtype.is_numeric():
        values = missing_as_null(column.cast(pl.Float64))
        return Task(column.name, "regression", description=description), values
    if column.dtype != pl.String:
        raise ValueError(f"{where}: cannot infer a task from dtype {column.dtype}")
    column = column.str.strip_chars()
    if column.drop_nulls().len() == 0:
        raise ValueError(f"{where}: no values; drop the column or fill it in")
    if multilabel:
        kind = "multilabel"
        column = missing_as_null(column.str.split(_MULTILABEL_SEPARATOR).list.eval(
            pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != "")
        ))  # "a;NaN" is class a alone
        classes = sorted(set(column.explode().drop_nulls().to_list()))
    else:
        kind = "classification"
        classes = sorted(set(column.drop_nulls().to_list()))
    try:
        task = Task(column.name, kind, tuple(classes), description)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return task, column


def _merge_videos(
    videos: pl.DataFrame, table: pl.DataFrame, root: Path, labels_path: Path, split: str
) -> pl.DataFrame:
    """Applies the labels file's ``split`` and ``path`` columns and adds rows it alone lists."""
    rows = {row["video_id"]: row for row in videos.iter_rows(named=True)}
    missing = []
    for row in table.iter_rows(named=True):
        video_id = row["video_id"]
        entry = rows.setdefault(video_id, {"video_id": video_id, "path": None, "split": split})
        if row.get("path"):
            # A path may name a file that is gone: extraction records it as failed.
            entry["path"] = str((root / row["path"]).resolve())
        if row.get("split"):
            entry["split"] = row["split"]
        if entry["path"] is None:
            missing.append(video_id)
    if missing:
        raise ValueError(
            f"labels file {labels_path}: video_id(s) {missing[:5]} have no file under {root} and "
            "no 'path' value; add a 'path' column giving their file"
        )
    return pl.DataFrame(
        list(rows.values()), schema={"video_id": pl.String, "path": pl.String, "split": pl.String}
    )

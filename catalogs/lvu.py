"""The ``lvu`` catalog: LVU 1.0, nine long-form movie-clip tasks with per-task splits.

LVU ("Towards Long-Form Video Understanding", Wu & Krähenbühl, CVPR 2021) labels ~10k
MovieClips YouTube videos (1-3 minutes) with nine tasks. The official label files
(https://chaoyuan.org/lvu/lvu_1.0.tar.gz) are one folder per task holding ``train.csv``,
``val.csv`` and ``test.csv``, space-separated with a header:

- classification tasks: ``class_id class_name youtube_id imdb_id``;
- ``like_ratio``: ``like_count dislike_count youtube_id imdb_id``;
- ``view_count``: ``view_count youtube_id imdb_id``.

Every task has its own split (723 videos are in the train split of one task and the val or
test split of another), so the catalog carries them in ``task_splits``; ``videos.split`` is a
video's split only where all its tasks agree. Videos are found under the video root as
``<youtube_id>.<ext>``; the many whose YouTube link is dead have a null ``path`` and are
reported, not fatal.

Regression targets follow LVU's code (``src/data/video_data_helper.py``, ``load_mc_video_data``,
github.com/chaoyuaw/lvu, commit a75bdd1; ViS4mer's ``datasets/lvu_dataset.py`` does the same):
``view_count`` → ``ln(view_count) − 11.76425435683139`` and ``like_ratio`` →
``10 · like / (like + dislike) − 9.138220535629456`` (the constants make the train targets
roughly zero-mean). MSE on these targets is comparable with the papers' numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from catalogs import register_catalog
from catalogs.base import SPLITS, Catalog, Task, option_flag
from catalogs.files import find_videos

DOWNLOAD_URL = "https://chaoyuan.org/lvu/lvu_1.0.tar.gz"
# Number of classes per classification task (LVU paper, Table 1 and §3). Class ids are indices;
# some ids never occur in the files (director 2 and 3, writer 3, 4 and 8) but keep their slot.
NUM_CLASSES: dict[str, int] = {
    "relationship": 4,
    "way_speaking": 5,
    "scene": 6,
    "director": 10,
    "writer": 10,
    "year": 9,
    "genre": 4,
}
REGRESSION_TASKS: tuple[str, ...] = ("like_ratio", "view_count")
TASK_NAMES: tuple[str, ...] = (*NUM_CLASSES, *REGRESSION_TASKS)
# Zero-mean offsets of LVU's code (see the module docstring).
VIEW_COUNT_OFFSET = 11.76425435683139
LIKE_RATIO_OFFSET = 9.138220535629456
_DESCRIPTIONS: dict[str, str] = {
    "relationship": "relationship of the two main characters (content understanding)",
    "way_speaking": "how the characters speak (content understanding)",
    "scene": "where the clip takes place (content understanding)",
    "director": "the movie's director (metadata prediction)",
    "writer": "the movie's writer; class '\\N' is IMDb's 'unknown' (metadata prediction)",
    "year": "decade of release, 1930s-2010s (metadata prediction)",
    "genre": "the movie's genre group (metadata prediction)",
    "like_ratio": "YouTube likes / (likes + dislikes), as 10·ratio − 9.1382 (user engagement)",
    "view_count": "YouTube views, as ln(views) − 11.7643 (user engagement)",
}


def normalise_view_count(view_count: float) -> float:
    """LVU's ``view_count`` target: ``ln(view_count) − 11.76425435683139`` (LVU code)."""
    return math.log(view_count) - VIEW_COUNT_OFFSET


def normalise_like_ratio(like_count: float, dislike_count: float) -> float:
    """LVU's ``like_ratio`` target: ``10 · like / (like + dislike) − 9.138220535629456``."""
    return 10.0 * like_count / (like_count + dislike_count) - LIKE_RATIO_OFFSET


def find_label_dir(root: Path, labels: str | Path | None) -> Path:
    """The folder holding ``<task>/{train,val,test}.csv``: ``labels``, else ``root/lvu_1.0``,
    else ``root``.

    Raises:
        ValueError: no such folder, or it lacks a task's files; says where to download them.
    """
    if labels is not None:
        candidates = [Path(labels).expanduser().resolve()]
    else:
        candidates = [root / "lvu_1.0", root]
    for folder in candidates:
        if all((folder / task / f"{split}.csv").is_file()
               for task in TASK_NAMES for split in SPLITS):
            return folder
    folder = candidates[0]
    lacking = [f"{t}/{s}.csv" for t in TASK_NAMES for s in SPLITS
               if not (folder / t / f"{s}.csv").is_file()]
    raise ValueError(
        f"LVU label files not found in {' or '.join(str(c) for c in candidates)} (lacking e.g. "
        f"{', '.join(lacking[:3])}); download {DOWNLOAD_URL}, unpack it and pass its lvu_1.0 "
        f"folder as {option_flag('labels', 'DIR')}, or as --data-root DIR"
    )


def _read_split(path: Path, task: str, split: str) -> pl.DataFrame:
    """One official file as ``youtube_id, imdb_id, label, split`` (label: str or float)."""
    table = pl.read_csv(path, separator=" ", infer_schema_length=0)  # all columns as strings
    needed = (
        ["like_count", "dislike_count"] if task == "like_ratio"
        else ["view_count"] if task == "view_count"
        else ["class_id", "class_name"]
    ) + ["youtube_id", "imdb_id"]
    lacking = [c for c in needed if c not in table.columns]
    if lacking:
        raise ValueError(f"LVU file {path}: no column(s) {lacking} (columns: {table.columns})")
    try:
        if task == "like_ratio":
            likes = table["like_count"].cast(pl.Float64).to_list()
            dislikes = table["dislike_count"].cast(pl.Float64).to_list()
            label = pl.Series([normalise_like_ratio(a, b) for a, b in zip(likes, dislikes)])
        elif task == "view_count":
            label = pl.Series([normalise_view_count(v)
                               for v in table["view_count"].cast(pl.Float64).to_list()])
        else:
            label = table["class_id"].cast(pl.Int64)
    except (pl.exceptions.InvalidOperationError, ValueError, ZeroDivisionError) as err:
        raise ValueError(f"LVU file {path}: a label is not a valid number ({err})") from None
    out = table.select("youtube_id", "imdb_id").with_columns(
        label.alias("label"), pl.lit(split).alias("split")
    )
    if task in NUM_CLASSES:
        out = out.with_columns(table["class_name"].alias("class_name"))
    dupes = out.filter(pl.col("youtube_id").is_duplicated())["youtube_id"].unique().to_list()
    if dupes:
        raise ValueError(f"LVU file {path}: youtube_id(s) {dupes[:5]} appear twice")
    return out


def _classes(task: str, rows: pl.DataFrame, folder: Path) -> tuple[str, ...]:
    """Class names in id order from the files; ids absent from every file are ``unused_<id>``."""
    num = NUM_CLASSES[task]
    names: dict[int, str] = {}
    for class_id, class_name in rows.select("label", "class_name").unique().iter_rows():
        if not 0 <= class_id < num:
            raise ValueError(
                f"LVU task {task!r} ({folder / task}): class_id {class_id} outside 0..{num - 1}"
            )
        if names.setdefault(class_id, class_name) != class_name:
            raise ValueError(
                f"LVU task {task!r} ({folder / task}): class_id {class_id} is named both "
                f"{names[class_id]!r} and {class_name!r}"
            )
    return tuple(names.get(i, f"unused_{i}") for i in range(num))


@register_catalog("lvu")
def lvu_catalog(
    *,
    root: str | Path = "data/lvu",
    labels: str | Path | None = None,
    video_root: str | Path | None = None,
) -> Catalog:
    """LVU 1.0 from its official label files, with the videos found on disk.

    Args:
        root: Dataset directory; the label files are looked for in ``root/lvu_1.0`` and then in
            ``root`` itself, unless ``labels`` is given.
        labels: The ``lvu_1.0`` folder of the official release (``<task>/<split>.csv``).
        video_root: Directory searched recursively for ``<youtube_id>.<ext>``; default
            ``root/videos`` if it exists, else ``root``. A video not found has a null ``path``.

    Returns:
        The catalog: one row per YouTube id of any task (9,996 in LVU 1.0), ``labels`` with one
        column per task (class name, or the normalised regression target), ``task_splits`` with
        each task's split, ``videos`` with ``imdb_id`` and ``duration_sec`` (from
        ``lvu_durations.csv`` where the release has it) besides the contract's columns.

    Raises:
        ValueError: label files missing or malformed (the message names the file), an explicit
            ``video_root`` that is not a directory, or two files for one video.
    """
    root_path = Path(root).expanduser().resolve()
    folder = find_label_dir(root_path, labels)
    video_dir = _video_dir(root_path, video_root)
    tasks, per_task = _read_tasks(folder)
    videos, found = _videos_table(per_task, folder, video_dir)
    label_table, split_table = _per_task_tables(videos.select("video_id"), per_task)
    return Catalog(
        name="lvu",
        root=root_path,
        videos=videos,
        tasks=tasks,
        labels=label_table,
        task_splits=split_table,
        # LVU reports mean ± standard error over five runs (the LVU paper's protocol, as STAN §4
        # Metrics puts it): `heads train` / `heads sweep` default to that many seeds.
        meta={"labels": str(folder), "video_root": str(video_dir), "num_found": len(found),
              "protocol_seeds": 5},
    )


def _video_dir(root: Path, video_root: str | Path | None) -> Path:
    """Where the videos are looked for: ``video_root``, else ``root/videos`` if it exists, else
    ``root``.

    Raises:
        ValueError: an explicit ``video_root`` that is not a directory.
    """
    if video_root is not None:
        video_dir = Path(video_root).expanduser().resolve()
        if not video_dir.is_dir():
            raise ValueError(f"lvu catalog: --video-root {video_dir} is not a directory")
        return video_dir
    return root / "videos" if (root / "videos").is_dir() else root


def _read_tasks(folder: Path) -> tuple[dict[str, Task], dict[str, pl.DataFrame]]:
    """Every task's :class:`Task` and its rows ``youtube_id, imdb_id, label, split[,
    class_name]`` over the three splits, classification labels as class names.

    Raises:
        ValueError: a malformed file (see :func:`_read_split`), a video in two splits of one
            task, or inconsistent class ids.
    """
    tasks: dict[str, Task] = {}
    per_task: dict[str, pl.DataFrame] = {}
    for task in TASK_NAMES:
        rows = pl.concat([_read_split(folder / task / f"{s}.csv", task, s) for s in SPLITS])
        dupes = rows.filter(pl.col("youtube_id").is_duplicated())["youtube_id"].unique()
        if len(dupes):
            raise ValueError(
                f"LVU task {task!r} ({folder / task}): youtube_id(s) {dupes.to_list()[:5]} are "
                "in two splits"
            )
        if task in NUM_CLASSES:
            classes = _classes(task, rows, folder)
            tasks[task] = Task(task, "classification", classes, _DESCRIPTIONS[task])
            rows = rows.with_columns(
                pl.col("label").map_elements(lambda i, c=classes: c[i], return_dtype=pl.String)
            )
        else:
            tasks[task] = Task(task, "regression", (), _DESCRIPTIONS[task])
        per_task[task] = rows
    return tasks, per_task


def _videos_table(
    per_task: dict[str, pl.DataFrame], folder: Path, video_dir: Path
) -> tuple[pl.DataFrame, dict[str, str]]:
    """One row per YouTube id of any task: ``video_id, path, split, imdb_id[, duration_sec]``
    (``split`` null where the tasks disagree, ``path`` null where no file was found), sorted by
    ``video_id``; and the videos found, id → path.

    Raises:
        ValueError: two files for one video (see :func:`catalogs.files.find_videos`).
    """
    all_rows = pl.concat(
        [rows.select("youtube_id", "imdb_id", "split") for rows in per_task.values()]
    )
    videos = (
        all_rows.group_by("youtube_id", maintain_order=True)
        .agg(pl.col("imdb_id").first(), pl.col("split").unique())
        .with_columns(
            pl.when(pl.col("split").list.len() == 1)
            .then(pl.col("split").list.first())
            .otherwise(None)
            .alias("split")
        )
        .rename({"youtube_id": "video_id"})
        .sort("video_id")
    )
    found = find_videos(video_dir, videos["video_id"].to_list())
    videos = videos.with_columns(
        pl.col("video_id").replace_strict(found, default=None, return_dtype=pl.String).alias("path")
    )
    durations = folder / "lvu_durations.csv"
    if durations.is_file():
        table = pl.read_csv(durations, schema_overrides={"videoid": pl.String})
        videos = videos.join(
            table.select(pl.col("videoid").alias("video_id"),
                         pl.col("duration").cast(pl.Float64).alias("duration_sec")),
            on="video_id", how="left", maintain_order="left",
        )
    videos = videos.select("video_id", "path", "split", pl.exclude("video_id", "path", "split"))
    return videos, found


def _per_task_tables(
    ids: pl.DataFrame, per_task: dict[str, pl.DataFrame]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The ``labels`` and ``task_splits`` tables: ``video_id`` (the rows of ``ids``, in order)
    and one column per task, null where a video is not in that task."""
    label_table, split_table = ids, ids
    for task, rows in per_task.items():
        keyed = rows.rename({"youtube_id": "video_id"})
        label_table = label_table.join(
            keyed.select("video_id", pl.col("label").alias(task)), on="video_id", how="left",
            maintain_order="left",
        )
        split_table = split_table.join(
            keyed.select("video_id", pl.col("split").alias(task)), on="video_id", how="left",
            maintain_order="left",
        )
    return label_table, split_table

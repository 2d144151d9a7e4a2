"""The ``kinetics400`` catalog: Kinetics-400 clips from the official annotation CSVs.

Official format (Kay et al. 2017, "The Kinetics Human Action Video Dataset"; the CSVs of the
DeepMind / CVDF release): one CSV per split, header ``label,youtube_id,time_start,time_end,split``
(some releases add ``is_cc``; the 2017 test CSV has no ``label`` column). ``split`` is
``train``, ``val`` / ``validate`` or ``test``. A clip is seconds ``[time_start, time_end)`` of a
YouTube video; downloaders name its file ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>``,
which is the catalog's ``video_id`` (a file named ``<youtube_id>.<ext>`` is accepted too when the
catalog has one clip of that video).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from catalogs import register_catalog
from catalogs.base import Catalog, Task, option_flag
from catalogs.files import find_videos, missing_as_null, read_csv

_COLUMNS = ("youtube_id", "time_start", "time_end", "split")
_SPLIT_NAMES = {"train": "train", "val": "val", "validate": "val", "test": "test"}


def _csv_files(root: Path, labels: str | Path | None) -> list[Path]:
    where = Path(labels).expanduser().resolve() if labels else root
    if where.is_file():
        return [where]
    for folder in (where / "annotations", where):
        files = sorted(folder.glob("*.csv")) if folder.is_dir() else []
        if files:
            return files
    raise ValueError(
        f"kinetics400 catalog: no annotation CSV in {where} (or {where / 'annotations'}); pass the "
        f"release's train/validate/test CSVs' folder (or one CSV) as {option_flag('labels', 'DIR')}"
    )


def _read_csv(path: Path) -> pl.DataFrame:
    table = read_csv(path, strings=("youtube_id", "label"), what="kinetics400 file")
    lacking = [c for c in _COLUMNS if c not in table.columns]
    if lacking:
        raise ValueError(
            f"kinetics400 file {path}: no column(s) {lacking}; expected the official header "
            "label,youtube_id,time_start,time_end,split"
        )
    if "label" not in table.columns:
        table = table.with_columns(pl.lit(None, dtype=pl.String).alias("label"))
    table = table.with_columns(missing_as_null(table["label"]))  # "NaN" is no action class
    bad = sorted(set(table["split"].drop_nulls().to_list()) - set(_SPLIT_NAMES))
    if bad or table["split"].null_count():
        raise ValueError(f"kinetics400 file {path}, column 'split': {bad or 'empty'} not in "
                         f"{sorted(_SPLIT_NAMES)}")
    return table.select(
        pl.format("{}_{}_{}", "youtube_id", pl.col("time_start").cast(pl.Int64).cast(pl.String)
                  .str.zfill(6), pl.col("time_end").cast(pl.Int64).cast(pl.String).str.zfill(6))
        .alias("video_id"),
        "youtube_id",
        pl.col("time_start").cast(pl.Float64).alias("start_sec"),
        pl.col("time_end").cast(pl.Float64).alias("end_sec"),
        pl.col("split").replace_strict(_SPLIT_NAMES),
        pl.col("label").str.strip_chars(),
    )


@register_catalog("kinetics400")
def kinetics400_catalog(
    *,
    root: str | Path = "data/kinetics400",
    labels: str | Path | None = None,
    video_root: str | Path | None = None,
) -> Catalog:
    """Kinetics-400 from its official CSVs; task ``action`` (400 classes in the full release).

    Args:
        root: Dataset directory: the CSVs are looked for in ``root/annotations`` and ``root``,
            the videos under ``root``.
        labels: One official CSV, or a folder holding them (every ``*.csv`` is read).
        video_root: Directory searched recursively for the clips (default ``root``).

    Returns:
        The catalog; ``videos`` also has ``youtube_id``, ``start_sec`` and ``end_sec``. Classes
        are the label names in sorted order (the release has no class ids); test clips without
        a label are in the catalog, unlabelled. Clips not found on disk have a null ``path``.

    Raises:
        ValueError: no CSV, a CSV without the official columns or with an unknown split, one
            clip listed twice, or two files for one clip.
    """
    root_path = Path(root).expanduser().resolve()
    files = _csv_files(root_path, labels)
    table = pl.concat([_read_csv(f) for f in files])
    dupes = table.filter(pl.col("video_id").is_duplicated())["video_id"].unique().to_list()
    if dupes:
        raise ValueError(
            f"kinetics400 CSVs {[f.name for f in files]}: clip(s) {dupes[:5]} listed twice"
        )
    classes = tuple(sorted(table["label"].drop_nulls().unique().to_list()))
    video_dir = Path(video_root).expanduser().resolve() if video_root else root_path
    clip_ids = table["video_id"].to_list()
    single = table.filter(pl.col("youtube_id").is_unique())
    clip_of = dict(zip(single["youtube_id"], single["video_id"]))
    found = find_videos(video_dir, clip_ids + list(clip_of))
    paths = {clip_of[k]: v for k, v in found.items() if k in clip_of}  # bare <youtube_id>.<ext>
    paths.update({k: v for k, v in found.items() if k not in clip_of})  # the full name wins
    videos = table.with_columns(
        pl.col("video_id").replace_strict(paths, default=None, return_dtype=pl.String).alias("path")
    ).select("video_id", "path", "split", "youtube_id", "start_sec", "end_sec")
    return Catalog(
        name="kinetics400",
        root=root_path,
        videos=videos,
        tasks={"action": Task("action", "classification", classes,
                              "human action in the 10 s clip (Kinetics-400)")},
        labels=table.select("video_id", pl.col("label").alias("action")),
        meta={"labels": [str(f) for f in files], "video_root": str(video_dir)},
    )

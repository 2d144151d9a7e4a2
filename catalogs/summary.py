"""What ``pipeline catalog`` prints and writes: a catalog's counts and its manifest table."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from catalogs.base import SPLITS, Catalog


def manifest(catalog: Catalog) -> pl.DataFrame:
    """One row per video: the ``videos`` columns, ``found`` (the file exists), every task's
    label (column named as the task) and, for tasks with their own split, ``split_<task>``."""
    found = [p is not None and Path(p).is_file() for p in catalog.videos["path"].to_list()]
    table = catalog.videos.with_columns(pl.Series("found", found, dtype=pl.Boolean))
    if catalog.labels is not None:
        labels = catalog.labels.select("video_id", *[t for t in catalog.tasks
                                                     if t in catalog.labels.columns])
        table = table.join(labels, on="video_id", how="left", maintain_order="left")
    if catalog.task_splits is not None:
        splits = catalog.task_splits.rename(
            {t: f"split_{t}" for t in catalog.task_splits.columns if t != "video_id"}
        )
        table = table.join(splits, on="video_id", how="left", maintain_order="left")
    return table


def summarize(catalog: Catalog, table: pl.DataFrame | None = None) -> dict:
    """Counts of a catalog: videos, found on disk, per split, and per task and split.

    Returns:
        ``{"name", "num_videos", "num_found", "splits": {split: [videos, found]}, "tasks":
        {task: {"kind", "num_classes", "splits": {split: [labelled, found]}}}, "missing":
        [video ids not found]}``; the video-level split ``None`` counts videos whose split
        differs between tasks.
    """
    table = manifest(catalog) if table is None else table
    splits = {}
    for split in (*SPLITS, None):
        rows = table.filter(pl.col("split").is_null() if split is None
                            else pl.col("split") == split)
        if split in SPLITS or rows.height:
            splits[split] = [rows.height, int(rows["found"].sum())]
    tasks = {}
    for name, task in catalog.tasks.items():
        per_split = {}
        task_split = catalog.task_split(name).rename({"split": "_task_split"})
        rows = table.join(task_split, on="video_id", how="left", maintain_order="left")
        if catalog.labels is not None and name in rows.columns:
            rows = rows.filter(pl.col(name).is_not_null())
        for split in SPLITS:
            in_split = rows.filter(pl.col("_task_split") == split)
            per_split[split] = [in_split.height, int(in_split["found"].sum())]
        tasks[name] = {"kind": task.kind, "num_classes": len(task.classes), "splits": per_split}
    return {
        "name": catalog.name,
        "num_videos": table.height,
        "num_found": int(table["found"].sum()),
        "splits": splits,
        "tasks": tasks,
        "missing": table.filter(~pl.col("found"))["video_id"].to_list(),
    }


def format_summary(summary: dict, *, num_missing_shown: int = 10) -> str:
    """The summary as the lines ``pipeline catalog`` prints ("labelled (found on disk)")."""
    missing = summary["missing"]
    lines = [f"{summary['name']}: {summary['num_videos']} videos, {summary['num_found']} found "
             f"on disk, {len(missing)} missing"]
    lines.append(f"{'split':>12s} {'videos':>8s} {'found':>7s}")
    for split, (num, found) in summary["splits"].items():
        label = split if split is not None else "per task"  # split differs between tasks
        lines.append(f"{label:>12s} {num:8d} {found:7d}")
    if summary["tasks"]:
        lines.append(f"{'task':<14s} {'kind':<15s} {'classes':>7s}  " + "  ".join(
            f"{s:>13s}" for s in SPLITS) + "   (labelled (found))")
        for name, task in summary["tasks"].items():
            cells = "  ".join(f"{f'{n} ({f})':>13s}" for n, f in task["splits"].values())
            classes = str(task["num_classes"]) if task["num_classes"] else "-"
            lines.append(f"{name:<14s} {task['kind']:<15s} {classes:>7s}  {cells}")
    if missing:
        shown = ", ".join(missing[:num_missing_shown])
        more = f" and {len(missing) - num_missing_shown} more" if len(missing) > num_missing_shown else ""
        lines.append(f"missing on disk: {shown}{more} (--write-manifest lists all: found = false)")
    return "\n".join(lines)

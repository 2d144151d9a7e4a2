"""The ``coin`` catalog: COIN instructional videos, 180 tasks, from ``COIN.json``.

Official format (Tang et al., "COIN: A Large-scale Dataset for Comprehensive Instructional Video
Analysis", CVPR 2019; ``COIN.json`` of the release): ``{"database": {<youtube_id>: {"recipe_type":
<task id 0-179>, "class": <task name>, "subset": "training" | "testing", "video_url": ...,
"start": ..., "end": ..., "annotation": [{"id", "segment": [start_sec, end_sec], "label"}, ...]}}}``.
The task (the ``class`` / ``recipe_type`` of a video) is the target of long-form video
classification (ViS4mer §5); the step annotations are kept out of the catalog. Videos are
``<youtube_id>.<ext>`` under the video root (any sub-folder layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from catalogs import register_catalog
from catalogs.base import Catalog, Task, option_flag
from catalogs.files import find_videos

NUM_TASKS = 180
_SUBSETS = {"training": "train", "testing": "test", "validation": "val"}


@register_catalog("coin")
def coin_catalog(
    *,
    root: str | Path = "data/coin",
    labels: str | Path | None = None,
    video_root: str | Path | None = None,
) -> Catalog:
    """COIN from its JSON annotation; task ``task`` (180 classes, index = ``recipe_type``).

    Args:
        root: Dataset directory: ``root/COIN.json`` and the videos under ``root``.
        labels: The ``COIN.json`` file.
        video_root: Directory searched recursively for ``<youtube_id>.<ext>`` (default ``root``).

    Returns:
        The catalog (splits ``train`` / ``test`` from ``subset``); ``videos`` also has
        ``num_steps``. A task id absent from the file is named ``recipe_type_<id>``.

    Raises:
        ValueError: the JSON is missing or not COIN's format, a ``recipe_type`` is outside
            0-179 or has two names, or a ``subset`` is unknown; the message names the video.
    """
    root_path = Path(root).expanduser().resolve()
    path = Path(labels).expanduser().resolve() if labels else root_path / "COIN.json"
    if not path.is_file():
        raise ValueError(f"coin catalog: annotation {path} does not exist; pass COIN.json as "
                         f"{option_flag('labels', 'COIN.json')}")
    try:
        database = json.loads(path.read_text())["database"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"coin catalog: {path} is not COIN's JSON ({err!r})") from None
    names: dict[int, str] = {}
    rows = []
    for video_id, entry in database.items():
        where = f"coin catalog: {path}, video {video_id!r}"
        try:
            task_id, name, subset = int(entry["recipe_type"]), entry["class"], entry["subset"]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: lacks recipe_type/class/subset ({err!r})") from None
        if not 0 <= task_id < NUM_TASKS:
            raise ValueError(f"{where}: recipe_type {task_id} outside 0..{NUM_TASKS - 1}")
        if names.setdefault(task_id, name) != name:
            raise ValueError(f"{where}: recipe_type {task_id} is {name!r} here and "
                             f"{names[task_id]!r} elsewhere")
        if subset not in _SUBSETS:
            raise ValueError(f"{where}: subset {subset!r} not in {sorted(_SUBSETS)}")
        rows.append({"video_id": video_id, "split": _SUBSETS[subset], "task": name,
                     "num_steps": len(entry.get("annotation") or [])})
    classes = tuple(names.get(i, f"recipe_type_{i}") for i in range(NUM_TASKS))
    table = pl.DataFrame(rows, schema={"video_id": pl.String, "split": pl.String,
                                       "task": pl.String, "num_steps": pl.Int64})
    video_dir = Path(video_root).expanduser().resolve() if video_root else root_path
    found = find_videos(video_dir, table["video_id"].to_list())
    videos = table.select(
        "video_id",
        pl.col("video_id").replace_strict(found, default=None, return_dtype=pl.String)
        .alias("path"),
        "split",
        "num_steps",
    )
    return Catalog(
        name="coin",
        root=root_path,
        videos=videos,
        tasks={"task": Task("task", "classification", classes,
                            "the instructional task shown (COIN's 180 tasks)")},
        labels=table.select("video_id", "task"),
        meta={"labels": str(path), "video_root": str(video_dir)},
    )

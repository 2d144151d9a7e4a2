"""The catalog contract: videos, splits, tasks and labels as polars frames.

A catalog is everything stage 1 and stage 2 need to know about a dataset except the pixels:
which videos exist (``video_id`` → ``path``), which split each belongs to, and which tasks are
defined on them with what labels. Catalogs never decode video.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

TaskKind = Literal["classification", "multilabel", "regression"]
TASK_KINDS: tuple[str, ...] = ("classification", "multilabel", "regression")
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Task:
    """One prediction target defined on a catalog's videos.

    Attributes:
        name: Task key, exactly the value given to ``heads train --task``.
        kind: ``classification`` (one of K classes; cross-entropy, top-1), ``multilabel``
            (any subset of K classes; BCE, mAP) or ``regression`` (one float; MSE).
        classes: Class names in index order (K of them); empty for regression.
        description: One line for people: what the label means.
    """

    name: str
    kind: TaskKind
    classes: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of {TASK_KINDS}")
        if self.kind == "regression" and self.classes:
            raise ValueError(f"task {self.name!r}: a regression task has no classes")
        if self.kind != "regression" and len(self.classes) < 2:
            raise ValueError(f"task {self.name!r}: a {self.kind} task needs at least 2 classes")

    @property
    def num_outputs(self) -> int:
        """Width of a head's output for this task: K, or 1 for regression."""
        return 1 if self.kind == "regression" else len(self.classes)


@dataclass(frozen=True)
class Catalog:
    """A dataset as tables.

    Attributes:
        name: Catalog key (``demo``, ``folder``, ...); goes into feature-set names.
        root: Directory the catalog was read from (or built into).
        videos: One row per video: ``video_id`` (str, unique), ``path`` (str, absolute; the
            file may be missing or broken: extraction records that per video), ``split``
            (``train``/``val``/``test``).
        tasks: Task name → :class:`Task`.
        labels: ``video_id`` plus one column per task: class name (str) for classification,
            list of class names for multilabel, float for regression; null where unlabelled.
        meta: Free-form facts about the catalog (builder config, versions), JSON-serialisable.
    """

    name: str
    root: Path
    videos: pl.DataFrame
    tasks: dict[str, Task] = field(default_factory=dict)
    labels: pl.DataFrame | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = {"video_id", "path", "split"} - set(self.videos.columns)
        if missing:
            raise ValueError(f"catalog {self.name!r}: videos table lacks columns {sorted(missing)}")
        dupes = self.videos.filter(pl.col("video_id").is_duplicated())["video_id"].unique()
        if len(dupes):
            raise ValueError(f"catalog {self.name!r}: duplicate video_id(s) {dupes.to_list()[:5]}")

    def task(self, name: str) -> Task:
        """The task called ``name``.

        Raises:
            KeyError: no such task; the message lists the valid names.
        """
        if name not in self.tasks:
            raise KeyError(
                f"catalog {self.name!r} has no task {name!r}; valid tasks: {', '.join(self.tasks)}"
            )
        return self.tasks[name]

    def split(self, split: str) -> pl.DataFrame:
        """Rows of :attr:`videos` in one split (``train``, ``val`` or ``test``)."""
        return self.videos.filter(pl.col("split") == split)

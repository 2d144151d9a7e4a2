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


def option_flag(option: str, value: str) -> str:
    """How an error message tells people to give the catalog option ``option``, true for both
    CLIs: ``pipeline`` has a flag for it (``--labels X``), ``heads`` takes it as
    ``--catalog-option labels=X``."""
    return f"--{option.replace('_', '-')} {value} (heads: --catalog-option {option}={value})"


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
            file may be broken or gone: extraction records that per video; null when the
            catalog lists a video that was not found on disk, e.g. a dead YouTube link of a
            benchmark: extraction skips it and reports it as missing), ``split``
            (``train``/``val``/``test``; null where the video's split differs between tasks,
            see ``task_splits``).
        tasks: Task name → :class:`Task`.
        labels: ``video_id`` plus one column per task: class name (str) for classification,
            list of class names for multilabel, float for regression; null where unlabelled.
        meta: Free-form facts about the catalog (builder config, versions), JSON-serialisable.
        task_splits: Benchmarks whose tasks each have their own split (LVU: a video can be in
            one task's train split and another's test split): ``video_id`` plus one column per
            such task holding that task's split, null where the video is not in the task. Tasks
            without a column here use ``videos.split``. See :meth:`task_split`.
    """

    name: str
    root: Path
    videos: pl.DataFrame
    tasks: dict[str, Task] = field(default_factory=dict)
    labels: pl.DataFrame | None = None
    meta: dict = field(default_factory=dict)
    task_splits: pl.DataFrame | None = None

    def __post_init__(self) -> None:
        missing = {"video_id", "path", "split"} - set(self.videos.columns)
        if missing:
            raise ValueError(f"catalog {self.name!r}: videos table lacks columns {sorted(missing)}")
        dupes = self.videos.filter(pl.col("video_id").is_duplicated())["video_id"].unique()
        if len(dupes):
            raise ValueError(f"catalog {self.name!r}: duplicate video_id(s) {dupes.to_list()[:5]}")
        if self.task_splits is not None:
            unknown = set(self.task_splits.columns) - {"video_id", *self.tasks}
            if unknown or "video_id" not in self.task_splits.columns:
                raise ValueError(
                    f"catalog {self.name!r}: task_splits needs 'video_id' and task columns only "
                    f"(unknown: {sorted(unknown)})"
                )
            for name in set(self.task_splits.columns) - {"video_id"}:
                bad = set(self.task_splits[name].drop_nulls().to_list()) - set(SPLITS)
                if bad:
                    raise ValueError(
                        f"catalog {self.name!r}, task {name!r}: splits {sorted(bad)} not in {SPLITS}"
                    )

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

    def task_split(self, name: str) -> pl.DataFrame:
        """Each video's split for task ``name``: columns ``video_id`` and ``split``.

        One row per catalog video, in the order of :attr:`videos`; ``split`` comes from
        :attr:`task_splits` when it has a column for the task (null: the video is not part of
        the task), else from ``videos.split``.

        Raises:
            KeyError: no such task.
        """
        self.task(name)
        if self.task_splits is None or name not in self.task_splits.columns:
            return self.videos.select("video_id", "split")
        per_task = self.task_splits.select("video_id", pl.col(name).alias("split"))
        return self.videos.select("video_id").join(
            per_task, on="video_id", how="left", maintain_order="left"
        )

    def missing(self) -> pl.DataFrame:
        """Rows of :attr:`videos` whose file was not found on disk (null ``path``)."""
        return self.videos.filter(pl.col("path").is_null())

"""The ``csv`` and ``parquet`` catalogs: any dataset described by one labels table.

The table has a column ``video_id``, optional ``path`` (absolute, or relative to the table's
folder; without it, ``<video_id>.<ext>`` is looked for under the video root) and ``split``
(``train``/``val``/``test``), and one column per task. Task kinds are declared, never guessed:
``tasks="genre:classification,tags:multilabel,score:regression"``. Multilabel values are lists
(parquet) or strings separated by ``;`` or ``|``; class lists are the sorted values found.
A NaN or ``null`` value, or a blank one (:data:`catalogs.files.MISSING_LABELS`), is a missing
label: that video is unlabelled for the task, never in a class named ``NaN``; only a multilabel
``""`` is a label, the empty set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

from catalogs import register_catalog
from catalogs.base import SPLITS, TASK_KINDS, Catalog, Task, option_flag
from catalogs.files import missing_as_null, read_table, resolve_paths, split_list

_RESERVED = ("video_id", "path", "split")


def parse_task_kinds(tasks: str | dict[str, str] | None) -> dict[str, str]:
    """``"a:classification,b:regression"`` (or a dict) → ``{"a": "classification", ...}``.

    Raises:
        ValueError: empty, malformed, or a kind not in :data:`catalogs.TASK_KINDS`.
    """
    if isinstance(tasks, dict):
        kinds = dict(tasks)
    else:
        kinds = {}
        for item in filter(str.strip, (tasks or "").split(",")):
            name, sep, kind = item.strip().partition(":")
            if not sep or not name.strip():
                raise ValueError(f"task declaration {item.strip()!r} is not NAME:KIND "
                                 f"(e.g. tasks=genre:classification,score:regression)")
            kinds[name.strip()] = kind.strip()
    if not kinds:
        raise ValueError("declare the label columns' tasks, e.g. "
                         "--catalog-option tasks=genre:classification,score:regression")
    bad = {n: k for n, k in kinds.items() if k not in TASK_KINDS}
    if bad:
        raise ValueError(f"task kind(s) {bad} not in {TASK_KINDS}")
    return kinds


def task_column(
    column: pl.Series, kind: str, where: str, classes: tuple[str, ...] | None = None
) -> tuple[Task, pl.Series]:
    """A declared task and its column in the catalog's dtype (see :class:`catalogs.Catalog`).

    Missing labels (NaN, blank, ``null``: :func:`catalogs.files.missing_as_null`) become null.

    Args:
        column: The raw column.
        kind: Declared kind.
        where: ``"labels file X, column 'y'"``, for errors.
        classes: Fixed vocabulary in index order; default: the sorted values found.

    Raises:
        ValueError: values that do not fit the kind, or a class outside ``classes``.
    """
    column = missing_as_null(column, keep_empty=kind == "multilabel")
    if kind == "regression":
        try:
            values = missing_as_null(column.cast(pl.Float64))
        except pl.exceptions.InvalidOperationError:
            raise ValueError(f"{where}: regression values must be numbers") from None
        return Task(column.name, kind, description=where), values
    if kind == "multilabel":
        if column.dtype == pl.String:
            column = pl.Series(column.name, [split_list(v) for v in column.to_list()],
                               dtype=pl.List(pl.String))
        elif not isinstance(column.dtype, pl.List):
            raise ValueError(f"{where}: multilabel values must be lists or ';'-separated strings")
        values = missing_as_null(column.cast(pl.List(pl.String)))
        found = set(values.explode().drop_nulls().to_list())
    else:
        values = missing_as_null(column.cast(pl.String).str.strip_chars())
        found = set(values.drop_nulls().to_list())
    vocabulary = tuple(classes) if classes else tuple(sorted(found))
    unknown = sorted(found - set(vocabulary))
    if unknown:
        raise ValueError(f"{where}: class(es) {unknown[:5]} not in the vocabulary {vocabulary}")
    try:
        return Task(column.name, kind, vocabulary, description=where), values
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def table_catalog(
    name: str,
    *,
    root: Path,
    labels: Path,
    kinds: dict[str, str],
    video_root: Path | None,
    split: str | Callable[[str], str] | None,
    classes: dict[str, tuple[str, ...]] | None = None,
) -> Catalog:
    """A catalog from one labels table (the ``csv`` / ``parquet`` / ``mmx_trailer_20`` core).

    Args:
        name: Catalog name.
        root: Catalog root.
        labels: The table.
        kinds: Task column → kind.
        video_root: Where ``<video_id>.<ext>`` is looked for when a row has no ``path``.
        split: Split of rows without one, or a function of their ``video_id`` giving it; None
            requires a ``split`` value in every row.
        classes: Fixed vocabularies per task.

    Raises:
        ValueError: see :func:`read_table` and :func:`task_column`; missing or repeated ids,
            a missing declared column, a bad or missing split. Messages name file and column.
    """
    table = read_table(labels)
    where = f"labels file {labels}"
    lacking = [c for c in ("video_id", *kinds) if c not in table.columns]
    if lacking:
        raise ValueError(f"{where}: no column(s) {lacking} (columns: {table.columns})")
    ids = table["video_id"].cast(pl.String)
    if ids.null_count():
        raise ValueError(f"{where}, column 'video_id': empty value(s)")
    dupes = ids.filter(ids.is_duplicated()).unique().to_list()
    if dupes:
        raise ValueError(f"{where}, column 'video_id': repeated id(s) {dupes[:5]}")
    splits = table["split"].cast(pl.String) if "split" in table.columns else pl.Series(
        [None] * len(table), dtype=pl.String)
    if callable(split):
        splits = pl.Series([s if s is not None else split(v) for v, s in zip(ids, splits)],
                           dtype=pl.String)
    elif split is not None:
        splits = splits.fill_null(split)
    bad = sorted(set(splits.to_list()) - set(SPLITS), key=str)
    if bad:
        raise ValueError(f"{where}, column 'split': {bad} not in {SPLITS}")
    given = table["path"].cast(pl.String).to_list() if "path" in table.columns else None
    paths = resolve_paths(ids.to_list(), given, base=labels.parent, video_root=video_root)
    tasks, columns = {}, []
    for task_name, kind in kinds.items():
        task, values = task_column(table[task_name], kind, f"{where}, column {task_name!r}",
                                   (classes or {}).get(task_name))
        tasks[task_name] = task
        columns.append(values.alias(task_name))
    videos = pl.DataFrame({"video_id": ids, "path": pl.Series(paths, dtype=pl.String),
                           "split": splits})
    return Catalog(
        name=name,
        root=root,
        videos=videos,
        tasks=tasks,
        labels=pl.DataFrame([ids, *columns]),
        meta={"labels": str(labels), "video_root": str(video_root) if video_root else None},
    )


def _generic(name: str, root, labels, tasks, video_root, split) -> Catalog:
    root_path = Path(root).expanduser().resolve()
    if labels is None:
        raise ValueError(f"the {name} catalog needs its table: "
                         f"{option_flag('labels', f'FILE.{name}')}")
    labels_path = Path(labels).expanduser().resolve()
    if labels_path.suffix.lower() != f".{name}":
        raise ValueError(f"--dataset {name} reads a .{name} file, not {labels_path.name}")
    video_dir = Path(video_root).expanduser().resolve() if video_root else root_path
    return table_catalog(name, root=root_path, labels=labels_path, kinds=parse_task_kinds(tasks),
                         video_root=video_dir, split=split)


@register_catalog("csv")
def csv_catalog(*, root: str | Path = ".", labels: str | Path | None = None,
                tasks: str | dict | None = None, video_root: str | Path | None = None,
                split: str | None = "train") -> Catalog:
    """A catalog from a CSV with ``video_id``, ``path``, ``split`` and declared task columns.

    Args:
        root: Catalog root; the default video root.
        labels: The CSV file.
        tasks: Declared task kinds, ``"name:kind,..."`` (see :func:`parse_task_kinds`).
        video_root: Where ``<video_id>.<ext>`` is looked for for rows without ``path``.
        split: Split of rows without one (None: every row must have one).

    Raises:
        ValueError: see :func:`table_catalog`.
    """
    return _generic("csv", root, labels, tasks, video_root, split)


@register_catalog("parquet")
def parquet_catalog(*, root: str | Path = ".", labels: str | Path | None = None,
                    tasks: str | dict | None = None, video_root: str | Path | None = None,
                    split: str | None = "train") -> Catalog:
    """As :func:`csv_catalog`, from a parquet file (multilabel columns may be lists)."""
    return _generic("parquet", root, labels, tasks, video_root, split)

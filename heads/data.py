"""Training data for heads: cached tokens from the feature store, labels from a catalog.

``resolve_feature_sets`` turns ``--features`` values into feature sets, ``load_task_data`` reads
every needed video's tokens into memory once (a 2-minute clip is tens of scene tokens, so a
whole dataset of pooled tokens fits) or, for patch tokens too large for RAM, hands out
:class:`StoredVideos` that read them from the store part by part while training
(:class:`PartLocalSampler` orders each epoch so that a few parts serve many consecutive
videos); ``Standardizer`` rescales features with train-split statistics, and
``FeatureDataset`` + ``collate`` feed a head ``forward(x_0, mask_0, x_1, mask_1, ...)``.

Tokens are pooled (T, D) or patch (T, N, D) (see :mod:`pipeline.store`). Patch tokens are ~200x
larger (ViT: 196 patches + CLS per frame), so they stay in their stored dtype (float16 by
default) in memory and become float32 one batch at a time in :func:`collate`; pooled tokens are
float32 throughout. A head takes patch tokens when its class lists ``"patch"`` in
``token_kinds`` (see :func:`head_token_kinds`).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from catalogs.base import SPLITS, Catalog, Task
from pipeline.store import DamagedVideoError, FeatureSet, FeatureStore


def head_token_kinds(head: str) -> tuple[str, ...]:
    """Token kinds head ``head`` accepts: its class's ``token_kinds``, ``("pooled",)`` if unset.

    Raises:
        KeyError: unknown head (the message lists the valid names).
    """
    from heads.models import get_head_class

    return tuple(getattr(get_head_class(head), "token_kinds", ("pooled",)))


def resolve_feature_sets(
    store: FeatureStore | str | Path,
    dataset: str,
    names: Sequence[str],
    plan: str = "scene",
    *,
    prefer: dict | None = None,
    token_kinds: Sequence[str] = ("pooled",),
) -> list[FeatureSet]:
    """The feature sets named by ``names``, one per head stream, in order.

    Each name is either an exact feature-set name in the store, or a backbone name matched
    against the specs of the store's feature sets (``dataset``, ``backbone``, ``plan``).

    Args:
        store: The store, or its root directory.
        dataset: Catalog key the features were extracted from (spec field ``dataset``).
        names: Feature-set or backbone names, e.g. ``("resnet18", "r2plus1d_18")``.
        plan: Sampling plan (spec field ``plan``) required of backbone matches.
        prefer: Spec fields that pick among several backbone matches (e.g.
            ``{"dataset_variant": "small"}``); used only when they leave exactly one.
        token_kinds: Token kinds the head accepts (``pooled``, ``patch``); see
            :func:`head_token_kinds`.

    Raises:
        ValueError: no names; a backbone matches no feature set (run ``pipeline extract``) or
            several (pass the exact name); an exact name belongs to another dataset; a feature
            set holds a token kind not in ``token_kinds``.
    """
    if not isinstance(store, FeatureStore):
        store = FeatureStore(store)
    if not names:
        raise ValueError("no feature sets given; pass --features (a backbone or feature-set name)")
    present = {fs.name: fs for fs in store.feature_sets()}
    resolved = []
    for name in names:
        if name in present:
            fs = present[name]
            if fs.spec.get("dataset") != dataset:
                raise ValueError(
                    f"feature set {name} was extracted from dataset {fs.spec.get('dataset')!r}, "
                    f"not {dataset!r}; check --dataset or --features"
                )
        else:
            matches = store.find(dataset=dataset, backbone=name, plan=plan)
            if len(matches) > 1 and prefer:
                preferred = [
                    fs for fs in matches if all(fs.spec.get(k) == v for k, v in prefer.items())
                ]
                matches = preferred if len(preferred) == 1 else matches
            if not matches:
                raise ValueError(
                    f"no feature set for dataset {dataset!r}, backbone {name!r}, plan {plan!r} in "
                    f"store {store.root} (present: {', '.join(present) or 'none'}); run `pipeline "
                    f"extract --dataset {dataset} --backbone {name} --plan {plan}` with this store "
                    "first, or pass an exact feature-set name to --features"
                )
            if len(matches) > 1:
                raise ValueError(
                    f"backbone {name!r} matches {len(matches)} feature sets for dataset "
                    f"{dataset!r}, plan {plan!r}: {', '.join(fs.name for fs in matches)}; pass "
                    "the exact feature-set name to --features"
                )
            fs = matches[0]
        kind = fs.attrs.get("token_kind")
        if kind not in token_kinds:
            shapes = {"pooled": "pooled (T, D)", "patch": "patch (T, N, D)"}
            wanted = " or ".join(shapes.get(k, repr(k)) for k in token_kinds)
            raise ValueError(
                f"feature set {fs.name} holds {kind!r} tokens; this head takes {wanted} tokens "
                "(patch tokens: a head such as vis4mer or stat_cached)"
            )
        resolved.append(fs)
    return resolved


def encode_labels(task: Task, video_ids: Sequence[str], values: Sequence) -> np.ndarray:
    """Catalog labels as training targets.

    Args:
        task: The task.
        video_ids: Video of each value, for error messages.
        values: Class name (classification), list of class names (multilabel) or float
            (regression) per video; none may be null.

    Returns:
        (N,) int64 class indices, (N, K) float32 multi-hot, or (N, 1) float32 values.

    Raises:
        ValueError: a class name is not one of ``task.classes``; the message names the video.
    """
    if task.kind == "regression":
        return np.asarray(values, dtype=np.float32).reshape(-1, 1)  # (N,) -> (N, 1)
    index = {name: i for i, name in enumerate(task.classes)}

    def class_index(video_id: str, name) -> int:
        if name not in index:
            raise ValueError(
                f"video {video_id!r}: label {name!r} of task {task.name!r} is not one of its "
                f"classes {list(task.classes)}; fix the catalog's labels"
            )
        return index[name]

    if task.kind == "classification":
        return np.array([class_index(v, y) for v, y in zip(video_ids, values)], dtype=np.int64)
    multi_hot = np.zeros((len(values), len(task.classes)), dtype=np.float32)
    for row, (video_id, names) in enumerate(zip(video_ids, values)):
        for name in names:
            if name is not None:
                multi_hot[row, class_index(video_id, name)] = 1.0
    return multi_hot


@dataclass(frozen=True)
class TaskData:
    """Every usable video of one task, per split, in memory.

    Attributes:
        task: The task.
        feature_sets: The feature sets, one per stream, in stream order.
        video_ids: Split → video ids.
        tokens: Split → per video, one array per stream: float32 (T_i, D_i) for pooled
            tokens, (T_i, N, D_i) in the stored dtype for patch tokens.
        targets: Split → encoded targets (see :func:`encode_labels`).
        num_dropped: Reason → number of catalog videos left out.
        times: Split → per video, one (T_i, 2) float64 [start_sec, end_sec] array per stream
            (for the windows of :mod:`heads.windows`).
    """

    task: Task
    feature_sets: tuple[FeatureSet, ...]
    video_ids: dict[str, list[str]]
    tokens: dict[str, list[list[np.ndarray]]]
    targets: dict[str, np.ndarray]
    num_dropped: dict[str, int]
    times: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)


def load_task_data(
    catalog: Catalog,
    task_name: str,
    feature_sets: Sequence[FeatureSet],
    *,
    log: Callable[[str], None] = print,
    cache: dict | None = None,
    loading: str = "preload",
    max_preload_bytes: int | None = None,
    stream_cache_mib: float = 1024.0,
) -> TaskData:
    """Read the tokens and labels of every usable video of ``task_name``.

    ``loading`` says where tokens live while training: ``preload`` reads them all now;
    ``stream`` leaves them in the store (``TaskData.tokens[split]`` are :class:`StoredVideos`,
    read on access through a cache of ``stream_cache_mib``; token times are read now, and
    non-finite tokens raise when a video is read instead of dropping it); ``auto`` streams when
    the tokens would take more than ``max_preload_bytes`` in memory (default: a quarter of the
    machine's RAM).

    Splits are the task's own (:meth:`catalogs.Catalog.task_split`: LVU's tasks each have
    theirs); videos outside the task (no split and no label for it) are not considered. A
    task video is used when it has a label, a file on disk, is ``ok`` in every feature set and
    has finite tokens; the others are counted per reason and reported via ``log``, as are
    empty val/test splits (the trainer then selects on train loss / reports no test metrics).

    ``cache``, when given, maps a feature set's path to ``{video_id: VideoFeatures}`` already
    read; videos found there are not read again and the ones read are added, so a sweep worker
    reads each feature set once whatever the number of runs it serves.

    Raises:
        KeyError: the catalog has no such task.
        ValueError: the catalog has no labels for the task, a label is not a class of the task,
            or no train video is left.
    """
    task = catalog.task(task_name)
    if catalog.labels is None or task.name not in catalog.labels.columns:
        raise ValueError(f"catalog {catalog.name!r} has no label column for task {task.name!r}")
    labels = dict(zip(catalog.labels["video_id"].to_list(), catalog.labels[task.name].to_list()))
    indexes = [fs.index() for fs in feature_sets]  # read once: ~0.3 ms a video
    kept, dropped, num_total = _usable_videos(catalog, task, labels, feature_sets, indexes)
    all_ids = [v for split in SPLITS for v in kept[split]]
    if loading not in ("preload", "stream", "auto"):
        raise ValueError(f"loading must be preload, stream or auto, got {loading!r}")
    if loading == "auto":
        needed = sum(_memory_bytes(fs, idx, all_ids) for fs, idx in zip(feature_sets, indexes))
        limit = max_preload_bytes if max_preload_bytes is not None else _physical_ram() // 4
        loading = "stream" if needed > limit else "preload"
        if loading == "stream":
            log(f"tokens take {needed / 2**30:.1f} GiB in memory (> {limit / 2**30:.1f} GiB): "
                "streaming them from the store")
    if loading == "stream":
        return _stream_task_data(task, feature_sets, indexes, kept, labels, dropped, num_total,
                                 log, catalog.name, cache_mib=stream_cache_mib)
    read = [_read_cached(fs, idx, all_ids, cache) for fs, idx in zip(feature_sets, indexes)]
    tokens: dict[str, list[list[np.ndarray]]] = {}
    times: dict[str, list[list[np.ndarray]]] = {}
    video_ids: dict[str, list[str]] = {}
    for split in SPLITS:
        tokens[split], times[split], video_ids[split] = [], [], []
        for video_id in kept[split]:
            streams = [_in_memory(r[video_id].tokens) for r in read]
            if not all(np.isfinite(s).all() for s in streams):
                dropped["non-finite tokens"] += 1
                continue
            tokens[split].append(streams)
            times[split].append(
                [np.stack([r[video_id].start_sec, r[video_id].end_sec], axis=1) for r in read]
            )  # per stream (T_i, 2)
            video_ids[split].append(video_id)
    targets = {
        split: encode_labels(task, ids, [labels[v] for v in ids])
        for split, ids in video_ids.items()
    }

    _report_counts(task, video_ids, dropped, num_total, log, catalog.name)
    return TaskData(
        task=task,
        feature_sets=tuple(feature_sets),
        video_ids=video_ids,
        tokens=tokens,
        targets=targets,
        num_dropped=dict(dropped),
        times=times,
    )


def _usable_videos(catalog: Catalog, task: Task, labels: dict, feature_sets, indexes):
    """Per split, the task's videos that have a label and are ``ok`` in every feature set;
    the others counted per reason; and the number of the task's videos."""
    statuses = [dict(zip(idx["video_id"].to_list(), idx["status"].to_list())) for idx in indexes]
    dropped: Counter[str] = Counter()
    kept: dict[str, list[str]] = {split: [] for split in SPLITS}
    splits = catalog.task_split(task.name)
    paths = dict(zip(catalog.videos["video_id"], catalog.videos["path"]))
    num_total = 0
    for video_id, split in zip(splits["video_id"], splits["split"]):
        if split is None and labels.get(video_id) is None:
            continue  # not part of this task
        num_total += 1
        reason = None
        if labels.get(video_id) is None:
            reason = f"unlabelled for task {task.name}"
        for fs, status in zip(feature_sets, statuses):
            state = status.get(video_id, "not extracted")
            if reason is None and state != "ok":
                # Imported features need no video file: only a video that is also not stored
                # is reported as missing on disk.
                on_disk = paths[video_id] is not None
                reason = f"{state} in {fs.name}" if on_disk else "missing on disk (no features)"
                break
        if reason is None and split not in kept:
            reason = f"split {split!r} is not one of {'/'.join(SPLITS)}"
        if reason is not None:
            dropped[reason] += 1
            continue
        kept[split].append(video_id)
    return kept, dropped, num_total


def _report_counts(
    task: Task, video_ids: dict, dropped: Counter, num_total: int, log, catalog: str
) -> None:
    """Log the split sizes and what was dropped; raise when no train video is left."""
    counts = ", ".join(f"{split} {len(video_ids[split])}" for split in SPLITS)
    log(f"task {task.name} ({task.kind}): {counts} videos")
    if dropped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
        log(f"dropped {sum(dropped.values())} of {num_total} videos: {reasons}")
    for split, consequence in (("val", "the checkpoint is selected on train loss"),
                               ("test", "no test metrics")):
        if video_ids["train"] and not video_ids[split]:
            log(f"no usable {split} video for task {task.name}: {consequence}")
    if not video_ids["train"]:
        raise ValueError(
            f"no usable train video for task {task.name!r} of catalog {catalog!r} "
            f"({dict(dropped) or 'the catalog has no train split'}); check `pipeline status`"
        )


def _stream_task_data(
    task, feature_sets, indexes, kept, labels, dropped, num_total, log, catalog, *, cache_mib
):
    """:func:`load_task_data` with ``loading="stream"``: token times now, tokens on access."""
    rows = [{r["video_id"]: r for r in idx.iter_rows(named=True)} for idx in indexes]
    all_ids = [v for split in SPLITS for v in kept[split]]
    read = [fs.read_many(all_ids, arrays=("start_sec", "end_sec"), index=idx)
            for fs, idx in zip(feature_sets, indexes)]
    cache = PartCache(cache_mib * 2**20)
    video_ids, tokens, times = {}, {}, {}
    for split in SPLITS:
        # Stream 0's storage order: evaluation then reads each part once.
        ids = sorted(kept[split], key=lambda v: (rows[0][v]["part"], rows[0][v]["offset"]))
        video_ids[split] = ids
        tokens[split] = StoredVideos(
            feature_sets, [[r[v] for v in ids] for r in rows], cache=cache
        )
        times[split] = [
            [np.stack([r[v].start_sec, r[v].end_sec], axis=1) for r in read] for v in ids
        ]
    targets = {
        split: encode_labels(task, ids, [labels[v] for v in ids])
        for split, ids in video_ids.items()
    }
    _report_counts(task, video_ids, dropped, num_total, log, catalog)
    return TaskData(
        task=task, feature_sets=tuple(feature_sets), video_ids=video_ids, tokens=tokens,
        targets=targets, num_dropped=dict(dropped), times=times,
    )


def _token_shape(fs: FeatureSet, part_id: str) -> tuple[int, ...]:
    """(D,) or (N, D): the shape of one stored token, read from part ``part_id``."""
    return tuple(fs.open_part(part_id)["tokens"].shape[1:])


def _memory_bytes(fs: FeatureSet, index, video_ids: Sequence[str]) -> int:
    """Bytes the tokens of ``video_ids`` (``ok`` in ``fs``, whose index is ``index``) take
    once preloaded (see :func:`_in_memory`)."""
    wanted = set(video_ids)
    rows = [r for r in index.iter_rows(named=True) if r["video_id"] in wanted]
    num_tokens = sum(r["num_tokens"] for r in rows)
    shape = _token_shape(fs, rows[0]["part"]) if num_tokens else (0,)
    itemsize = 2 if len(shape) >= 2 and fs.attrs.get("dtype") == "float16" else 4
    return int(num_tokens * np.prod(shape) * itemsize)


def _physical_ram() -> int:
    """Bytes of RAM of this machine."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _read_cached(fs: FeatureSet, index, video_ids: list[str], cache: dict | None) -> dict:
    """``fs.read_many(video_ids)`` (``index``: ``fs``'s), through ``cache`` (see
    :func:`load_task_data`)."""
    if cache is None:
        return fs.read_many(video_ids, index=index)
    known = cache.setdefault(str(fs.path), {})
    missing = [v for v in video_ids if v not in known]
    if missing:
        known.update(fs.read_many(missing, index=index))
    return {v: known[v] for v in video_ids}


def _in_memory(tokens: np.ndarray) -> np.ndarray:
    """Pooled (T, D) tokens as float32; patch (T, N, D) tokens kept float16 if stored so."""
    if tokens.ndim >= 3 and tokens.dtype == np.float16:
        return tokens
    return np.asarray(tokens, dtype=np.float32)


class PartCache:
    """The tokens of recently read parts, in memory form (:func:`_in_memory`), least recently
    used dropped first.

    Args:
        max_bytes: Bytes of tokens kept. A part larger than this is never kept: its videos are
            read alone, one slice each.
    """

    def __init__(self, max_bytes: float):
        self.max_bytes = max_bytes
        self._parts: OrderedDict[tuple[str, str], tuple[np.ndarray, bool]] = OrderedDict()
        self._arrays: dict[tuple[str, str], object] = {}  # open Zarr arrays (metadata only)
        self._bytes = 0
        self.num_reads = 0  # Zarr reads issued (parts and lone slices): for tests and benches

    def clear(self) -> None:
        """Forget every kept part."""
        self._parts.clear()
        self._bytes = 0

    def slice(self, fs: FeatureSet, row: dict) -> tuple[np.ndarray, bool]:
        """The tokens of the video of index row ``row`` in memory form, and whether they may
        hold NaN or inf (False: checked finite with their whole part).

        Parts are kept in their stored dtype; each video's slice is checked against the content
        hash of its index row (:meth:`pipeline.store.FeatureSet.check_hashes`) before it is
        converted.

        Raises:
            pipeline.store.DamagedVideoError: the slice does not match its hash, or the part
                cannot be read (a chunk that fails its checksum); the message names the video.
        """
        key = (str(fs.loc), row["part"])
        lo, hi = row["offset"], row["offset"] + row["num_tokens"]
        if key in self._parts:
            self._parts.move_to_end(key)
            raw, finite = self._parts[key]
        else:
            raw, finite = self._read(fs, row, key)
            if raw is None:  # too large to keep: this video's slice alone
                raw, finite = self._read_slice(fs, row, key, lo, hi), False
                lo, hi = 0, len(raw)
        stored = raw[lo:hi]
        fs.check_hashes(row, {"tokens": stored})
        return _in_memory(stored), not finite

    def _read_slice(self, fs: FeatureSet, row: dict, key, lo: int, hi: int) -> np.ndarray:
        try:
            return self._arrays[key][lo:hi]
        except Exception as err:  # a chunk failing its checksum, or missing metadata
            raise DamagedVideoError(
                f"video {row['video_id']!r} of feature set {fs.name} cannot be read from part "
                f"{row['part']} ({type(err).__name__}: {err}); `pipeline verify --fix` marks it "
                "for re-extraction") from None

    def _read(self, fs: FeatureSet, row: dict, key):
        """Read the part of ``row`` whole and keep it (stored dtype), or ``(None, False)`` when
        it is larger than the cache."""
        if key not in self._arrays:
            self._arrays[key] = fs.open_part(row["part"])["tokens"]
        array = self._arrays[key]
        self.num_reads += 1
        if int(np.prod(array.shape)) * array.dtype.itemsize > self.max_bytes:
            return None, False
        raw = self._read_slice(fs, row, key, 0, array.shape[0])
        finite = bool(np.isfinite(raw).all())
        self._parts[key] = raw, finite
        self._bytes += raw.nbytes
        while self._bytes > self.max_bytes and len(self._parts) > 1:
            _, (dropped, _) = self._parts.popitem(last=False)
            self._bytes -= dropped.nbytes
        return raw, finite


class StoredVideos(Sequence):
    """Videos whose tokens stay in the store until asked for (``load_task_data(loading=
    "stream")``): item ``i`` is one array per stream, as a preloaded ``TaskData.tokens[split]``
    item (float32 pooled, stored-dtype patch tokens), with ``transform`` applied.

    Args:
        feature_sets: One per stream.
        rows: Per stream, the index row of each video, in item order.
        cache: Where parts are kept between items (shared by every split of a task).
        transform: Applied to each item's list of arrays (e.g. ``Standardizer.apply``).

    Raises (on access):
        ValueError: a video's tokens hold NaN or inf (the message names it and the set).
    """

    lazy = True  # read on access: FeatureDataset converts items as they are fetched

    def __init__(self, feature_sets: Sequence[FeatureSet], rows: Sequence[Sequence[dict]], *,
                 cache: PartCache, transform: Callable | None = None):
        self.feature_sets, self.rows = list(feature_sets), [list(r) for r in rows]
        self.cache, self.transform = cache, transform

    def __len__(self) -> int:
        return len(self.rows[0])

    def __getitem__(self, i: int) -> list[np.ndarray]:
        streams = []
        for fs, rows in zip(self.feature_sets, self.rows):
            tokens, unchecked = self.cache.slice(fs, rows[i])
            if unchecked and not np.isfinite(tokens).all():
                raise ValueError(
                    f"video {rows[i]['video_id']!r} has NaN or inf tokens in feature set "
                    f"{fs.name}; `pipeline verify --fix` marks it for re-extraction"
                )
            streams.append(tokens)
        return self.transform(streams) if self.transform else streams

    def parts(self) -> list[str]:
        """Stream 0's part of each video (what :class:`PartLocalSampler` groups by)."""
        return [row["part"] for row in self.rows[0]]

    def part_bytes(self) -> dict[str, int]:
        """Stream 0's stored bytes named per part (an estimate of what reading it costs)."""
        out: dict[str, int] = Counter()
        for row in self.rows[0]:
            out[row["part"]] += row["num_tokens"]
        fs = self.feature_sets[0]
        per_token = int(np.prod(_token_shape(fs, self.rows[0][0]["part"]))) * np.dtype(
            fs.attrs["dtype"]).itemsize if out else 0
        return {part: n * per_token for part, n in out.items()}

    def with_transform(self, transform: Callable) -> StoredVideos:
        """The same videos and cache, each item passed through ``transform``."""
        return StoredVideos(self.feature_sets, self.rows, cache=self.cache, transform=transform)


class PartLocalSampler(torch.utils.data.Sampler):
    """A shuffled order of the videos of :class:`StoredVideos` that reads each part once per
    epoch: the parts are shuffled, cut into blocks of about ``block_bytes``, and the videos of
    a block are shuffled among themselves (the shard shuffle of streaming loaders: with one
    video per part it is a plain permutation).

    Args:
        videos: The videos.
        block_bytes: Stored bytes per block; keep it at most the :class:`PartCache` budget.
        seed: Same seed, same sequence of epochs.
    """

    def __init__(self, videos: StoredVideos, *, block_bytes: float, seed: int):
        self.parts = videos.parts()
        self.part_bytes = videos.part_bytes()
        self.block_bytes = block_bytes
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.parts)

    def __iter__(self):
        by_part: dict[str, list[int]] = {}
        for i, part in enumerate(self.parts):
            by_part.setdefault(part, []).append(i)
        names = list(by_part)
        block, block_bytes = [], 0
        for k in torch.randperm(len(names), generator=self.generator).tolist():
            block += by_part[names[k]]
            block_bytes += self.part_bytes[names[k]]
            if block_bytes >= self.block_bytes:
                yield from (block[j] for j in torch.randperm(len(block), generator=self.generator))
                block, block_bytes = [], 0
        yield from (block[j] for j in torch.randperm(len(block), generator=self.generator))


# Rows of a video's tokens turned into float64 at a time when fitting the standardiser: bounds
# the temporary to ~128 MiB at D = 1024 however many patches a video has.
_FIT_CHUNK_ROWS = 16384


class Standardizer:
    """Per-dimension feature standardisation, fitted on the train split of each stream.

    Randomly initialised or ImageNet backbones give features of arbitrary scale; centring and
    scaling per dimension makes one learning rate work for every feature set. None of the five
    papers standardises its features: this is longvid's deviation, on by default and off with
    ``standardize = false`` (:class:`heads.config.TrainConfig`; ``docs/fidelity.md``).

    Args:
        mean: Per stream, (D_i,) float32 mean.
        std: Per stream, (D_i,) float32 standard deviation (1 where a dimension is constant).
    """

    def __init__(self, mean: Sequence[np.ndarray], std: Sequence[np.ndarray]):
        self.mean = [np.asarray(m, dtype=np.float32) for m in mean]
        self.std = [np.asarray(s, dtype=np.float32) for s in std]

    @classmethod
    def identity(cls, dims: Sequence[int]) -> Standardizer:
        """The standardiser that changes no value (mean 0, std 1), for streams of ``dims``."""
        return cls([np.zeros(d) for d in dims], [np.ones(d) for d in dims])

    @classmethod
    def fit(cls, videos: Sequence[Sequence[np.ndarray]]) -> Standardizer:
        """Statistics per feature dim over every token (and patch) of ``videos``.

        Args:
            videos: Per video, one (T_i, D_i) or (T_i, N, D_i) array per stream.

        Streams are accumulated chunk by chunk in float64 with the pairwise update of Chan,
        Golub and LeVeque (1979), so patch tokens are never concatenated into one array.
        """
        means, stds = [], []
        for stream in range(len(videos[0])):
            dim = videos[0][stream].shape[-1]
            count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
            for video in videos:
                rows = video[stream].reshape(-1, dim)  # (T·N, D): every token and patch
                for lo in range(0, len(rows), _FIT_CHUNK_ROWS):
                    chunk = rows[lo : lo + _FIT_CHUNK_ROWS].astype(np.float64)  # (n, D)
                    n = len(chunk)
                    chunk_mean = chunk.mean(axis=0)
                    chunk_m2 = np.square(chunk - chunk_mean).sum(axis=0)
                    delta, total = chunk_mean - mean, count + n
                    mean = mean + delta * (n / total)
                    m2 = m2 + chunk_m2 + np.square(delta) * (count * n / total)
                    count = total
            if count == 0:
                means.append(np.zeros(dim))
                stds.append(np.ones(dim))
                continue
            std = np.sqrt(m2 / count)
            # A dimension constant on train (e.g. a dead ReLU) carries no information; dividing
            # by ~0 would blow up whatever it holds on val/test.
            stds.append(np.where(std < 1e-6, 1.0, std))
            means.append(mean)
        return cls(means, stds)

    def apply(self, streams: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One video's streams, standardised per feature dim (the last axis).

        Per stream (T_i, D_i) → float32, or (T_i, N, D_i) → the same shape, float16 if the input
        is float16 (patch tokens keep their in-memory size; see the module docstring).
        """
        out = []
        for x, m, s in zip(streams, self.mean, self.std):
            scaled = (x - m) / s  # float32: m and s are float32
            out.append(scaled.astype(np.float16) if x.dtype == np.float16 else scaled)
        return out

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        """Tensors for a checkpoint (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "mean": [torch.from_numpy(m) for m in self.mean],
            "std": [torch.from_numpy(s) for s in self.std],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, list[torch.Tensor]]) -> Standardizer:
        """Inverse of :meth:`state_dict`."""
        return cls([m.numpy() for m in state["mean"]], [s.numpy() for s in state["std"]])


class FeatureDataset(torch.utils.data.Dataset):
    """Videos as (per-stream tokens, target) pairs.

    Args:
        tokens: Per video, one (T_i, D_i) or (T_i, N, D_i) float array per stream.
        targets: Encoded targets, first axis N (see :func:`encode_labels`).

    Items:
        ``(streams, target)``: ``streams`` a list of tensors (T_i, D_i) or (T_i, N, D_i) in the
        arrays' dtype (no copy); ``target`` a scalar int64, a (K,) float32 or a (1,) float32
        tensor.
    """

    def __init__(self, tokens: Sequence[Sequence[np.ndarray]], targets: np.ndarray):
        if len(tokens) != len(targets):
            raise ValueError(f"{len(tokens)} videos but {len(targets)} targets")
        # Stored videos are converted when fetched; preloaded ones once, here.
        self.lazy = getattr(tokens, "lazy", False)
        self.tokens = tokens if self.lazy else [_tensors(v) for v in tokens]
        self.targets = torch.from_numpy(np.ascontiguousarray(targets))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        streams = self.tokens[i]
        if self.lazy:
            streams = _tensors(streams)
        return streams, self.targets[i]


def _tensors(streams: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """One video's arrays as tensors (no copy when already contiguous)."""
    return [torch.from_numpy(np.ascontiguousarray(x)) for x in streams]


def collate(
    batch: Sequence[tuple[list[torch.Tensor], torch.Tensor]],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Pad each stream along time to the longest video of the batch and build the masks.

    Args:
        batch: Items of :class:`FeatureDataset`.

    Returns:
        ``(inputs, targets)``: ``inputs`` = ``[x_0, mask_0, x_1, mask_1, ...]`` with x_i
        (B, T_i, D_i) — or (B, T_i, N, D_i) for patch tokens — float32 zero-padded along T only,
        and mask_i (B, T_i) bool True at real tokens, ready for ``head(*inputs)``; ``targets``
        stacked along a new first axis B.

    Raises:
        ValueError: the videos of a stream differ in their per-token shape (N or D).
    """
    num_streams = len(batch[0][0])
    inputs = []
    for stream in range(num_streams):
        seqs = [streams[stream] for streams, _ in batch]
        token_shapes = {tuple(s.shape[1:]) for s in seqs}
        if len(token_shapes) > 1:
            raise ValueError(
                f"stream {stream}: videos of one batch have different per-token shapes "
                f"{sorted(token_shapes)}; a feature set must hold one (D,) or (N, D) per token"
            )
        lengths = torch.tensor([len(s) for s in seqs])  # (B,)
        x = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)  # (B, T_max, [N,] D)
        if x.shape[1] == 0:
            # pad_sequence of all-empty sequences loses the token shape; rebuild (B, 0, [N,] D).
            x = torch.zeros(len(seqs), 0, *seqs[0].shape[1:])
        x = x.float()  # float16 patch tokens become float32 one batch at a time
        mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T_max)
        inputs += [x, mask]
    targets = torch.stack([target for _, target in batch])
    return inputs, targets

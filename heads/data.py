"""Training data for heads: cached tokens from the feature store, labels from a catalog.

``resolve_feature_sets`` turns ``--features`` values into feature sets, ``load_task_data`` reads
every needed video's tokens into memory once (a 2-minute clip is tens of scene tokens, so a
whole dataset fits), ``Standardizer`` rescales features with train-split statistics, and
``FeatureDataset`` + ``collate`` feed a head ``forward(x_0, mask_0, x_1, mask_1, ...)``.

Tokens are pooled (T, D) or patch (T, N, D) (see :mod:`pipeline.store`). Patch tokens are ~200x
larger (ViT: 196 patches + CLS per frame), so they stay in their stored dtype (float16 by
default) in memory and become float32 one batch at a time in :func:`collate`; pooled tokens are
float32 throughout. A head takes patch tokens when its class lists ``"patch"`` in
``token_kinds`` (see :func:`head_token_kinds`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from catalogs.base import SPLITS, Catalog, Task
from pipeline.store import FeatureSet, FeatureStore


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
                "(patch tokens: a head such as stat)"
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
) -> TaskData:
    """Read the tokens and labels of every usable video of ``task_name``.

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
    statuses = [
        dict(zip(idx["video_id"].to_list(), idx["status"].to_list()))
        for idx in (fs.index() for fs in feature_sets)
    ]

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

    all_ids = [v for split in SPLITS for v in kept[split]]
    read = [_read_cached(fs, all_ids, cache) for fs in feature_sets]
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
            f"no usable train video for task {task.name!r} of catalog {catalog.name!r} "
            f"({dict(dropped) or 'the catalog has no train split'}); check `pipeline status`"
        )
    return TaskData(
        task=task,
        feature_sets=tuple(feature_sets),
        video_ids=video_ids,
        tokens=tokens,
        targets=targets,
        num_dropped=dict(dropped),
        times=times,
    )


def _read_cached(fs: FeatureSet, video_ids: list[str], cache: dict | None) -> dict:
    """``fs.read_many(video_ids)``, through ``cache`` (see :func:`load_task_data`)."""
    if cache is None:
        return fs.read_many(video_ids)
    known = cache.setdefault(str(fs.path), {})
    missing = [v for v in video_ids if v not in known]
    if missing:
        known.update(fs.read_many(missing))
    return {v: known[v] for v in video_ids}


def _in_memory(tokens: np.ndarray) -> np.ndarray:
    """Pooled (T, D) tokens as float32; patch (T, N, D) tokens kept float16 if stored so."""
    if tokens.ndim >= 3 and tokens.dtype == np.float16:
        return tokens
    return np.asarray(tokens, dtype=np.float32)


# Rows of a video's tokens turned into float64 at a time when fitting the standardiser: bounds
# the temporary to ~128 MiB at D = 1024 however many patches a video has.
_FIT_CHUNK_ROWS = 16384


class Standardizer:
    """Per-dimension feature standardisation, fitted on the train split of each stream.

    Randomly initialised or ImageNet backbones give features of arbitrary scale; centring and
    scaling per dimension makes one learning rate work for every feature set.

    Args:
        mean: Per stream, (D_i,) float32 mean.
        std: Per stream, (D_i,) float32 standard deviation (1 where a dimension is constant).
    """

    def __init__(self, mean: Sequence[np.ndarray], std: Sequence[np.ndarray]):
        self.mean = [np.asarray(m, dtype=np.float32) for m in mean]
        self.std = [np.asarray(s, dtype=np.float32) for s in std]

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
        self.tokens = [[torch.from_numpy(np.ascontiguousarray(x)) for x in v] for v in tokens]
        self.targets = torch.from_numpy(np.ascontiguousarray(targets))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.tokens[i], self.targets[i]


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

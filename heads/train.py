"""``heads train``: fit a temporal head on cached features, evaluate it, write a run directory.

A recipe read top to bottom: build (catalog, feature sets, in-memory data) → setup (seed,
standardisation, random windows for the LVU protocol, model, optimiser with per-parameter
settings, the run directory) → train (AdamW, linear warm-up + cosine decay, mixed precision on
CUDA, task loss + the head's ``aux_loss``, gradient clipping, best-on-val selection with early
stopping, TensorBoard scalars and the last checkpoint every epoch) → evaluate the best
checkpoint on every split (averaging over windows) next to the majority baseline → write the
metrics, predictions, best checkpoint and curves into ``runs/<UTC time>-<head>-<task>/`` (see
:mod:`heads.runs` for the layout; ``load_head`` rebuilds the model).

Defaults come from :class:`TrainConfig`, then ``heads/configs/<head>.toml`` and its table for
the run's dataset (see :mod:`heads.config_files`).
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from catalogs.base import SPLITS, Catalog
from heads.data import (
    FeatureDataset,
    PartLocalSampler,
    Standardizer,
    StoredVideos,
    collate,
    head_token_kinds,
    load_task_data,
    resolve_feature_sets,
)
from heads.metrics import PRIMARY_METRIC, compute_metrics, details, majority_baseline
from heads.models import create_head, num_streams_for
from heads.optim import lr_factor, mixed_precision, param_groups, seed_everything
from heads.runs import (
    TrainingLog,
    environment,
    format_table,
    new_run_dir,
    plot_curves,
    predictions_frame,
    write_json,
)
from heads.windows import RandomWindowDataset, predict_videos

__all__ = ["TrainConfig", "param_groups", "resolve_config", "train"]

# Used when a head has no heads/configs/<head>.toml, or the file leaves a field unset.
FALLBACK_DEFAULTS: dict = {"features": ("resnet18",), "plan": "scene", "window_sec": 0.0}


def head_defaults(head: str, dataset: str | None = None) -> dict:
    """The head's file defaults (``heads/configs/<head>.toml``, with its
    ``[datasets.<dataset>]`` table when it has one), over :data:`FALLBACK_DEFAULTS`."""
    from heads.config_files import head_file_values

    return {**FALLBACK_DEFAULTS, **head_file_values(head, dataset)}


def default_features(head: str, dataset: str | None = None) -> tuple[str, ...]:
    """The ``--features`` used for ``head`` on ``dataset`` when none are given (its config
    file's)."""
    return tuple(head_defaults(head, dataset)["features"])


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that defines a training run; stored in the run directory and the checkpoint.

    Two contracts with the heads, besides their ``forward``:

    - optimiser settings: a parameter with an ``_optim`` dict attribute (``lr``, ``weight_decay``)
      gets its own AdamW group (:func:`param_groups`), scaled by the same warm-up/cosine
      schedule as ``lr``; every other parameter trains at ``lr`` with ``weight_decay`` on
      matrices only.
    - auxiliary loss: a head may set a tensor attribute ``aux_loss`` in each training forward
      (a scalar already weighted, e.g. STAN's distillation term; None when it has none); the
      trainer adds it to the task loss before ``backward``, and ``train_loss`` includes it.
    """

    task: str  # task of the catalog to learn (`--task`); its kind picks loss and metrics
    dataset: str = "demo"  # catalog key (`catalogs.get_catalog`); features must be from it
    data_root: str | None = None  # catalog root; None means data/<dataset>
    # Catalog-specific factory options, as for `pipeline extract` (e.g. {"variant": "small"} for
    # the demo, {"labels": "labels.csv"} for a folder); must match what the features came from.
    catalog_options: dict = field(default_factory=dict)
    head: str = "stan"  # registry key of the head (`heads list`)
    features: tuple[str, ...] = ()  # one backbone or feature-set name per stream; () = head default
    plan: str | None = None  # sampling plan of the features; None = the head's (stan: scene)
    # LVU protocol (ViS4mer §4-5): train on random windows of this many seconds, evaluate on the
    # mean over all windows of a video; 0 = whole videos; None = the head's (vis4mer: 60).
    window_sec: float | None = None
    store: str = "store"  # feature store root written by `pipeline extract`
    runs_dir: str = "runs"  # parent of the run directories
    epochs: int = 50  # upper bound; early stopping usually ends sooner on small datasets
    batch_size: int = 16  # videos per step; LVU-sized datasets have only hundreds of videos
    lr: float = 3e-4  # peak AdamW learning rate after warm-up
    weight_decay: float = 0.01  # AdamW decay on weight matrices only (not biases / norms)
    warmup_epochs: int = 2  # linear warm-up keeps early transformer updates from diverging
    grad_clip: float = 1.0  # max global gradient norm
    patience: int = 10  # stop after this many epochs without val improvement; 0 = never
    seed: int = 0  # seeds init, dropout and shuffling: same seed, same run
    device: str = "cpu"  # `cpu`, `cuda` or `auto`; light heads train fine on CPU
    amp: bool = True  # mixed precision (bf16, else fp16 + loss scaling) on CUDA; no effect on CPU
    head_kwargs: dict = field(default_factory=dict)  # passed to create_head (`--head-kwarg`)
    # Where tokens live while training: `preload` (RAM), `stream` (read from the store part by
    # part every epoch; patch tokens of LVU-sized datasets), `auto` (stream when preloading
    # would take over a quarter of the RAM). See heads.data.load_task_data.
    data_loading: str = "auto"
    stream_cache_mib: float = 1024.0  # parts kept in RAM while streaming
    config_files: tuple[str, ...] = ()  # TOML files the config was built from (provenance)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "config_files", tuple(self.config_files))
        checks = {
            "--epochs": (self.epochs >= 1, "at least 1", self.epochs),
            "--batch-size": (self.batch_size >= 1, "at least 1", self.batch_size),
            "--lr": (self.lr > 0, "positive", self.lr),
            "--weight-decay": (self.weight_decay >= 0, "non-negative", self.weight_decay),
            "--warmup-epochs": (self.warmup_epochs >= 0, "non-negative", self.warmup_epochs),
            "--grad-clip": (self.grad_clip > 0, "positive", self.grad_clip),
            "--patience": (self.patience >= 0, "non-negative", self.patience),
            "--window-sec": (
                self.window_sec is None or self.window_sec >= 0, "non-negative", self.window_sec
            ),
        }
        for flag, (ok, wanted, value) in checks.items():
            if not ok:
                raise ValueError(f"{flag} must be {wanted}, got {value}")
        reserved = {"in_dim", "num_outputs"} & set(self.head_kwargs)
        if reserved:
            raise ValueError(
                f"--head-kwarg cannot set {', '.join(sorted(reserved))}: they come from the "
                "feature sets and the task"
            )
        if self.data_loading not in ("preload", "stream", "auto"):
            raise ValueError(
                f"--data-loading must be preload, stream or auto, got {self.data_loading!r}"
            )
        if self.stream_cache_mib <= 0:
            raise ValueError(f"stream_cache_mib must be positive, got {self.stream_cache_mib}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"--device must be cpu, cuda or auto, got {self.device!r}")


def resolve_config(config: TrainConfig) -> TrainConfig:
    """``config`` with the defaults that depend on other fields (the head's file) filled in."""
    defaults = head_defaults(config.head, config.dataset)
    return replace(
        config,
        data_root=config.data_root or f"data/{config.dataset}",
        features=config.features or tuple(defaults["features"]),
        plan=config.plan or defaults["plan"],
        window_sec=float(
            defaults["window_sec"] if config.window_sec is None else config.window_sec
        ),
    )


def train(
    config: TrainConfig, *, catalog: Catalog | None = None, log=print, cache: dict | None = None
) -> dict:
    """Train ``config.head`` on ``config.task`` and evaluate it on every split.

    Args:
        config: The run's configuration.
        catalog: The dataset; built with ``catalogs.get_catalog(config.dataset,
            root=config.data_root)`` when not given.
        log: Where progress lines and the final table go.
        cache: Feature reads kept across calls (see :func:`heads.data.load_task_data`).

    Returns:
        The content of ``metrics.json`` plus ``run_dir`` (str).

    Raises:
        KeyError: unknown dataset, task or head (the message lists the valid names).
        ValueError: feature sets missing or ambiguous, the head's stream count does not match
            ``--features``, bad ``--head-kwarg``, or no usable train video.
    """
    from tqdm.auto import tqdm

    # ------------------------------------------------------------------ build
    config = resolve_config(config)
    if catalog is None:
        from catalogs import get_catalog

        try:
            catalog = get_catalog(config.dataset, root=config.data_root, **config.catalog_options)
        except TypeError as err:
            raise ValueError(
                f"catalog {config.dataset!r} rejected its options ({err}); check --catalog-option"
            ) from err
    num_streams_for(config.head, len(config.features))  # fail before reading any tokens
    # `pipeline extract` records the catalog's name as the spec's `dataset`, and its variant (if
    # any) as `dataset_variant`: that breaks ties between extractions of two demo variants.
    variant = catalog.meta.get("variant")
    feature_sets = resolve_feature_sets(
        config.store, catalog.name, config.features, config.plan,
        prefer={"dataset_variant": variant} if variant is not None else None,
        token_kinds=head_token_kinds(config.head),
    )
    data = load_task_data(catalog, config.task, feature_sets, log=log, cache=cache,
                          loading=config.data_loading, stream_cache_mib=config.stream_cache_mib)
    streaming = isinstance(data.tokens["train"], StoredVideos)
    task, kind = data.task, data.task.kind
    metric_name, higher_is_better = PRIMARY_METRIC[kind]

    # ------------------------------------------------------------------ setup
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    seed_everything(config.seed)
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    autocast, scaler = mixed_precision(device, config.amp)
    standardizer = Standardizer.fit(data.tokens["train"])
    if streaming:  # standardised as each video is read
        tokens = {s: data.tokens[s].with_transform(standardizer.apply) for s in SPLITS}
    else:
        tokens = {s: [standardizer.apply(v) for v in data.tokens[s]] for s in SPLITS}
    target_norm = None
    targets = dict(data.targets)
    if kind == "regression":
        # Regress standardised targets so the output layer's scale does not depend on the units.
        train_y = data.targets["train"]
        target_norm = (float(train_y.mean()), float(max(train_y.std(), 1e-6)))
        targets = {s: ((y - target_norm[0]) / target_norm[1]).astype(np.float32)
                   for s, y in targets.items()}
    if config.window_sec > 0:  # LVU protocol: a fresh random window of each video every epoch
        train_set = RandomWindowDataset(
            tokens["train"], data.times["train"], targets["train"],
            window_sec=config.window_sec, seed=config.seed,
        )
    else:
        train_set = FeatureDataset(tokens["train"], targets["train"])
    if streaming:  # a part read once per epoch serves all its videos
        order = {"sampler": PartLocalSampler(tokens["train"], seed=config.seed,
                                             block_bytes=config.stream_cache_mib * 2**20 / 2)}
    else:
        order = {"shuffle": True, "generator": torch.Generator().manual_seed(config.seed)}
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=config.batch_size, collate_fn=collate, **order
    )

    in_dim = [int(fs.attrs["dim"]) for fs in feature_sets]
    head_args = {"in_dim": in_dim, "num_outputs": task.num_outputs, **config.head_kwargs}
    try:
        model = create_head(config.head, task_kind=kind, **head_args).to(device)
    except TypeError as err:
        raise ValueError(
            f"head {config.head!r} rejected its arguments ({err}); check --head-kwarg"
        ) from err
    optimizer = torch.optim.AdamW(
        param_groups(model, lr=config.lr, weight_decay=config.weight_decay), lr=config.lr
    )
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            warmup_steps=config.warmup_epochs * steps_per_epoch,
            total_steps=config.epochs * steps_per_epoch,
        ),
    )
    loss_fn = {
        "classification": nn.CrossEntropyLoss(),
        "multilabel": nn.BCEWithLogitsLoss(),
        "regression": nn.MSELoss(),
    }[kind]

    def evaluate(split: str) -> tuple[np.ndarray, float]:
        """Per-video outputs in target units (N, K) or (N, 1), averaged over windows, and the
        loss of those outputs, on ``split``."""
        outputs = predict_videos(
            model, tokens[split], data.times[split], window_sec=config.window_sec,
            batch_size=config.batch_size, device=device, autocast=autocast,
        )
        loss = loss_fn(torch.from_numpy(outputs), torch.from_numpy(targets[split])).item()
        if target_norm is not None:
            outputs = outputs * target_norm[1] + target_norm[0]
        return outputs, loss

    # Select on the val metric; without a usable val split (none, or no positive label at all)
    # fall back to the train loss so that a run still ends with a definite checkpoint.
    val_baseline = majority_baseline(data.targets["train"], data.targets["val"], kind)
    select_on_val = math.isfinite(val_baseline.get(metric_name, float("nan")))
    if not select_on_val:
        log(f"no usable val split for {metric_name}: selecting the checkpoint on train loss")

    # The run directory exists from here on: config and environment first, then the curves
    # and the last checkpoint every epoch, so an interrupted run keeps what it did.
    feature_info = [
        {
            "name": fs.name,
            "backbone": fs.spec.get("backbone"),
            "plan": fs.spec.get("plan"),
            "token_kind": fs.attrs.get("token_kind"),
            "dim": int(fs.attrs["dim"]),
            "fingerprint": fs.attrs.get("fingerprint"),
        }
        for fs in feature_sets
    ]
    task_info = {"name": task.name, "kind": kind, "classes": list(task.classes)}
    config_dict = asdict(config)
    run_dir = new_run_dir(Path(config.runs_dir), config.head, task.name)
    write_json(run_dir / "config.json", {"config": config_dict, "catalog": catalog.name,
                                         "task": task_info, "feature_sets": feature_info})
    write_json(run_dir / "environment.json", environment())

    def checkpoint(state: dict, epoch: int) -> dict:
        """Everything :func:`heads.runs.load_head` needs to rebuild the model at ``epoch``."""
        return {
            "head": config.head,
            "head_args": head_args,
            "model": {k: v.detach().cpu() for k, v in state.items()},
            "standardizer": standardizer.state_dict(),
            "target_norm": list(target_norm) if target_norm else None,
            "config": config_dict,
            "task": task_info,
            "feature_sets": feature_info,
            "epoch": epoch,
        }

    # ------------------------------------------------------------------ train
    best_score, best_epoch, best_state, epochs_since_best = None, 0, None, 0
    history = []
    curves = TrainingLog(run_dir / "tensorboard")
    progress = tqdm(range(1, config.epochs + 1), desc=f"{config.head}/{task.name}", disable=None)
    try:
        for epoch in progress:
            model.train()
            total_loss = 0.0
            for inputs, batch_targets in train_loader:
                with autocast() if autocast else nullcontext():
                    outputs = model(*(t.to(device) for t in inputs))
                    loss = loss_fn(outputs.float(), batch_targets.to(device))
                    aux_loss = getattr(model, "aux_loss", None)  # set by the head in this forward
                    if isinstance(aux_loss, torch.Tensor):
                        loss = loss + aux_loss
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                total_loss += loss.item() * len(batch_targets)
            train_loss = total_loss / len(train_set)
            record = {"epoch": epoch, "train_loss": train_loss, "lr": scheduler.get_last_lr()[0]}
            if select_on_val:
                val_outputs, val_loss = evaluate("val")
                val = compute_metrics(kind, val_outputs, data.targets["val"])
                record[f"val_{metric_name}"], record["val_loss"] = val[metric_name], val_loss
                # Small val splits saturate (top-1 = 1 after a few epochs): break ties on val loss.
                score = (val[metric_name] if higher_is_better else -val[metric_name], -val_loss)
            else:
                score = (-train_loss,)
            improved = best_score is None or score > best_score
            history.append(record)
            curves.add(record)
            progress.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
            torch.save(checkpoint(model.state_dict(), epoch), run_dir / "checkpoint_last.pt")
            if improved:
                best_score, best_epoch, epochs_since_best = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                epochs_since_best += 1
                if config.patience and epochs_since_best >= config.patience:
                    break

        # -------------------------------------------------------------- evaluate
        model.load_state_dict(best_state)
        selection_metric = f"val_{metric_name}" if select_on_val else "train_loss"
        results = {
            "task": task.name,
            "kind": kind,
            "head": config.head,
            "seed": config.seed,
            "selection": {
                "metric": selection_metric,
                "best_epoch": best_epoch,
                "best_value": history[best_epoch - 1].get(selection_metric),
                "num_epochs_run": len(history),
            },
            "num_videos": {s: len(tokens[s]) for s in SPLITS},
            "num_dropped": data.num_dropped,
            "metrics": {},
            "baseline": {},
            "details": {},
            "history": history,
        }
        split_outputs = {}
        for split in SPLITS:
            has_videos = len(tokens[split]) > 0
            outputs = evaluate(split)[0] if has_videos else np.zeros((0, task.num_outputs))
            split_outputs[split] = outputs
            results["metrics"][split] = (
                compute_metrics(kind, outputs, data.targets[split]) if has_videos else {}
            )
            results["details"][split] = details(kind, outputs, data.targets[split], task.classes)
            results["baseline"][split] = majority_baseline(
                data.targets["train"], data.targets[split], kind
            )
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        curves.close()

    # ------------------------------------------------------------------ write
    torch.save(checkpoint(best_state, best_epoch), run_dir / "checkpoint.pt")
    write_json(run_dir / "metrics.json", results)
    predictions_frame(task_info, data.video_ids, split_outputs, data.targets).write_parquet(
        run_dir / "predictions.parquet"
    )
    plot_curves(history, run_dir / "curves.png", title=f"{config.head} / {task.name}")
    log(format_table(results))
    log(f"run written to {run_dir}")
    return {**results, "run_dir": str(run_dir)}

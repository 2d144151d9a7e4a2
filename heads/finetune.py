"""``heads finetune``: train backbone(s) and head together from decoded frames (end-to-end mode).

The cached-feature trainer (:mod:`heads.train`) never sees pixels; here every step decodes
videos (in ``DataLoader`` workers, :mod:`heads.video_clips`), runs the stream encoders and the
head (:mod:`heads.finetune_models`) and back-propagates into the encoders marked trainable.

Presets (:data:`PRESETS`) are the papers' recipes:

| preset | head | encoders (trainable in bold) | plan | source |
|---|---|---|---|---|
| ``stan_small`` | ``stan`` | **resnet18**, r2plus1d_18 (stop-gradient) | scene | STAN §3 |
| ``stan_large`` | ``stan`` | **resnet18**, **r2plus1d_18** | scene | STAN §3 |
| ``vtn`` | ``longformer`` | **resnet18** | uniform | VTN Table 2d |
| ``stat`` | ``stat`` | **conv3d_stem** (from scratch) | uniform | STAT, from pixels |

A recipe read top to bottom, like :func:`heads.train.train`: build (catalog, labels, encoders,
head, ``--init-from``) → setup (standardisation, loaders, AdamW with a lower learning rate for
pretrained backbones, warm-up + cosine schedule, autocast and gradient scaling) → train
(best-on-val selection, early stopping) → evaluate every split next to the majority baseline →
write ``runs/<UTC time>-<preset>-<task>/`` as :mod:`heads.runs` does for cached-feature runs
(``config.json``, ``checkpoint.pt``, ``metrics.json``; :func:`load_finetuned` rebuilds the model).
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from catalogs.base import SPLITS, Catalog
from heads.finetune_models import BackboneEncoder, PixelModel
from heads.finetune_setup import (
    PRESETS,
    FinetuneConfig,
    build_model,
    check_init_source,
    init_head_from,
    load_checkpoint,
    resolve_config,
    resolve_device,
    task_videos,
)
from heads.video_clips import VideoClipDataset, collate


@torch.no_grad()
def predict(model: PixelModel, loader, device, autocast) -> tuple[np.ndarray, np.ndarray, list]:
    """Outputs (N, K) float32 of the videos that decoded, their dataset indices (N,), and the
    ``(index, error)`` of those that did not."""
    model.eval()
    outputs, indices, errors = [], [], []
    for batch in loader:
        errors += batch.errors
        if len(batch):
            batch = batch.to(device)
            with autocast():
                out = model(batch.frames, batch.lengths)
            outputs.append(out.float().cpu())
            indices.append(batch.indices)
    if not outputs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), errors
    return torch.cat(outputs).numpy(), torch.cat(indices).numpy(), errors


def fit_standardizer(model: PixelModel, loader, device, autocast, max_videos: int):
    """A :class:`heads.data.Standardizer` of the encoders' raw tokens on up to ``max_videos``
    videos of ``loader`` (centre crops, no gradient)."""
    from heads.data import Standardizer

    model.eval()
    videos: list[list[np.ndarray]] = []
    with torch.no_grad():
        for batch in loader:
            if not len(batch):
                continue
            batch = batch.to(device)
            with autocast():
                streams = model.encode(batch.frames, batch.lengths)
            for b in range(len(batch)):
                videos.append([x[b][m[b]].float().cpu().numpy() for x, m in streams])
            if len(videos) >= max_videos:
                break
    if not videos:
        raise ValueError("no train video could be decoded to fit the feature standardisation")
    return Standardizer.fit(videos[:max_videos])


def param_groups(model: PixelModel, config: FinetuneConfig) -> list[dict]:
    """AdamW groups: the head (and a stem trained from scratch) at ``lr``, pretrained backbones
    at ``lr × backbone_lr_scale``; weight decay on matrices only; trainable parameters only."""
    from heads.train import param_groups as head_groups

    groups = head_groups(model.head, lr=config.lr, weight_decay=config.weight_decay)
    for encoder in model.encoders:
        if not encoder.trainable:
            continue
        scale = config.backbone_lr_scale if isinstance(encoder, BackboneEncoder) else 1.0
        params = [p for p in encoder.parameters() if p.requires_grad]
        for decay in (True, False):
            chosen = [p for p in params if (p.dim() >= 2) == decay]
            if chosen:
                groups.append({"params": chosen, "lr": config.lr * scale,
                               "weight_decay": config.weight_decay if decay else 0.0})
    return groups


def train_step(model: PixelModel, batch, optimizer, loss_fn, *, scaler=None, autocast=nullcontext,
               grad_clip: float = 1.0) -> float:
    """One optimisation step on ``batch`` (a :class:`heads.video_clips.ClipBatch` on the model's
    device): task loss + the head's ``aux_loss``, backward (scaled for fp16), gradient clipping
    over the trainable parameters, AdamW step. Frozen encoders get no gradient at all.

    Returns:
        The loss, a float.
    """
    model.train()
    with autocast():
        outputs = model(batch.frames, batch.lengths)
    loss = loss_fn(outputs.float(), batch.targets)
    aux_loss = getattr(model.head, "aux_loss", None)  # set by the head in this forward
    if isinstance(aux_loss, torch.Tensor):
        loss = loss + aux_loss.float()
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def finetune(config: FinetuneConfig, *, catalog: Catalog | None = None, log=print) -> dict:
    """Train ``config``'s encoders and head from decoded frames and evaluate every split.

    Args:
        config: The run's configuration.
        catalog: The dataset; built from ``config.dataset`` / ``data_root`` when not given.
        log: Where progress lines and the final table go.

    Returns:
        The content of ``metrics.json`` plus ``run_dir`` (str).

    Raises:
        KeyError: unknown dataset, task, head or backbone (the message lists valid names).
        ValueError: bad flags, an ``--init-from`` run that does not fit, no labelled or
            decodable train video.
        pipeline.weights.WeightsError: backbone weights cannot be found.
    """
    from tqdm.auto import tqdm

    from heads.metrics import PRIMARY_METRIC, compute_metrics, majority_baseline
    from heads.runs import environment, format_table, new_run_dir, write_json

    # ------------------------------------------------------------------ build
    config = resolve_config(config)
    if catalog is None:
        from catalogs import get_catalog

        catalog = get_catalog(config.dataset, root=config.data_root, **config.catalog_options)
    task = catalog.task(config.task)
    kind = task.kind
    videos = task_videos(catalog, config.task, log=log)
    random.seed(config.seed)
    device, amp_dtype, checkpointing = resolve_device(config)
    init = None
    head_kwargs = None
    if config.init_from:
        init = load_checkpoint(config.init_from)
        check_init_source(config, init)
        head_kwargs = {k: v for k, v in init["head_args"].items()
                       if k not in ("in_dim", "num_outputs")} | config.head_kwargs
    model, streams, head_args = build_model(config, num_outputs=task.num_outputs,
                                            checkpointing=checkpointing, head_kwargs=head_kwargs)
    have_standardizer = init_head_from(model, config, init) if init else False
    if init:
        log(f"head weights from {config.init_from}"
            + (" (with its feature standardisation)" if have_standardizer else ""))
    model.to(device)
    counts = model.parameter_counts()
    log(parameter_line(config, counts))

    # ------------------------------------------------------------------ setup
    def autocast():
        if amp_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    from pipeline.sampling import PlanConfig
    from pipeline.scenes import SceneDetectConfig

    plan = PlanConfig(name=config.plan, num_frames=config.num_frames,
                      frames_per_clip=config.frames_per_clip)
    scenes = SceneDetectConfig(detector=config.detector)
    cache = {} if config.cache_decoded else None
    target_norm = None
    if kind == "regression":  # regress standardised targets, as heads.train does
        train_y = videos["train"][2]
        target_norm = (float(train_y.mean()), float(max(train_y.std(), 1e-6)))

    def dataset(split: str, train: bool) -> VideoClipDataset:
        _, paths, targets = videos[split]
        if target_norm is not None:
            targets = ((targets - target_norm[0]) / target_norm[1]).astype(np.float32)
        return VideoClipDataset(paths, targets, streams=streams, plan=plan, scenes=scenes,
                                train=train, seed=config.seed, crop_scale=config.crop_scale,
                                flip=config.flip, cache=cache)

    loader_args = {"batch_size": config.batch_size, "collate_fn": collate,
                   "num_workers": config.num_workers, "pin_memory": device.type == "cuda",
                   "worker_init_fn": _worker_init}
    train_set = dataset("train", True)
    train_loader = torch.utils.data.DataLoader(
        train_set, shuffle=True, generator=torch.Generator().manual_seed(config.seed),
        **loader_args)
    eval_loaders = {s: torch.utils.data.DataLoader(dataset(s, False), **loader_args)
                    for s in SPLITS}
    if not have_standardizer:
        model.set_standardizer(fit_standardizer(model, eval_loaders["train"], device, autocast,
                                                config.standardize_videos))
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.lr)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(config.warmup_epochs * steps_per_epoch, total_steps - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps - warmup_steps)
    if warmup_steps:
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0 / warmup_steps, 1.0,
                                                   warmup_steps)
        scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine],
                                                          [warmup_steps])
    else:
        scheduler = cosine
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loss_fn = {"classification": nn.CrossEntropyLoss(), "multilabel": nn.BCEWithLogitsLoss(),
               "regression": nn.MSELoss()}[kind]
    metric_name, higher_is_better = PRIMARY_METRIC[kind]
    failed: dict[str, str] = {}

    def evaluate(split: str) -> tuple[dict, float]:
        """Metrics in target units and the mean loss on the videos of ``split`` that decode."""
        outputs, indices, errors = predict(model, eval_loaders[split], device, autocast)
        failed.update({videos[split][0][i]: message for i, message in errors})
        targets = videos[split][2][indices]
        if not len(indices):
            return {}, float("nan")
        train_scale = targets if target_norm is None else (
            (targets - target_norm[0]) / target_norm[1]).astype(np.float32)
        loss = loss_fn(torch.from_numpy(outputs), torch.from_numpy(train_scale)).item()
        if target_norm is not None:
            outputs = outputs * target_norm[1] + target_norm[0]
        return compute_metrics(kind, outputs, targets), loss

    select_on_val = len(videos["val"][0]) > 0
    trainable_keys = [k for k, v in model.state_dict().items()
                      if not k.startswith("encoders.") or _is_trainable_key(model, k)]

    # ------------------------------------------------------------------ train
    best_score, best_epoch, best_state, since_best, history = None, 0, None, 0, []
    for epoch in range(1, config.epochs + 1):
        train_set.set_epoch(epoch)
        total_loss, seen = 0.0, 0
        for batch in tqdm(train_loader, desc=f"{config.preset} epoch {epoch}", disable=None,
                          leave=False):
            failed.update({videos["train"][0][i]: message for i, message in batch.errors})
            if not len(batch):
                continue
            loss = train_step(model, batch.to(device), optimizer, loss_fn, scaler=scaler,
                              autocast=autocast, grad_clip=config.grad_clip)
            scheduler.step()
            total_loss += loss * len(batch)
            seen += len(batch)
        if not seen:
            raise ValueError(f"no train video could be decoded (failures: {failed})")
        record = {"epoch": epoch, "train_loss": total_loss / seen}
        if select_on_val:
            val, val_loss = evaluate("val")
            record[f"val_{metric_name}"], record["val_loss"] = val.get(metric_name), val_loss
            value = val.get(metric_name, float("nan"))
            score = (value if higher_is_better else -value, -val_loss)
            score = tuple(-math.inf if math.isnan(s) else s for s in score)
        else:
            score = (-record["train_loss"],)
        history.append(record)
        log("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in record.items()))
        if best_score is None or score > best_score:
            best_score, best_epoch, since_best = score, epoch, 0
            state = model.state_dict()
            best_state = {k: state[k].detach().clone() for k in trainable_keys}
        else:
            since_best += 1
            if config.patience and since_best >= config.patience:
                break

    # ------------------------------------------------------------------ evaluate
    model.load_state_dict(best_state, strict=False)
    results = {
        "task": task.name, "kind": kind, "head": config.head, "preset": config.preset,
        "selection": {"metric": f"val_{metric_name}" if select_on_val else "train_loss",
                      "best_epoch": best_epoch, "num_epochs_run": len(history)},
        "num_videos": {s: len(videos[s][0]) for s in SPLITS},
        "parameters": counts, "metrics": {}, "baseline": {}, "history": history,
    }
    for split in SPLITS:
        results["metrics"][split] = evaluate(split)[0] if videos[split][0] else {}
        results["baseline"][split] = majority_baseline(videos["train"][2], videos[split][2], kind)
    results["failed"] = failed

    # ------------------------------------------------------------------ write
    encoders = [{"name": e.name, "dim": e.dim, "trainable": e.trainable} for e in model.encoders]
    task_info = {"name": task.name, "kind": kind, "classes": list(task.classes)}
    config_dict = asdict(config)
    state = model.state_dict()
    run_dir = new_run_dir(Path(config.runs_dir), config.preset, task.name)
    write_json(run_dir / "config.json", {
        "config": config_dict, "catalog": catalog.name, "task": task_info,
        "encoders": encoders, "streams": [asdict(s) for s in streams], "parameters": counts,
    })
    write_json(run_dir / "environment.json", environment())
    torch.save({
        "kind": "finetune",
        "head": config.head,
        "head_args": head_args,
        "model": {k[len("head."):]: v.cpu() for k, v in state.items()
                  if k.startswith("head.")},
        "encoder_states": {str(i): {k: v.cpu() for k, v in e.state_dict().items()}
                           for i, e in enumerate(model.encoders) if e.trainable},
        "standardizer": _standardizer_state(model),
        "target_norm": list(target_norm) if target_norm else None,
        "config": config_dict,
        "task": task_info,
        "encoders": encoders,
        "best_epoch": best_epoch,
    }, run_dir / "checkpoint.pt")
    write_json(run_dir / "metrics.json", results)
    log(format_table(results))
    if failed:
        log(f"{len(failed)} video(s) could not be decoded: "
            + "; ".join(f"{v}: {m}" for v, m in sorted(failed.items())))
    log(f"run written to {run_dir}")
    return {**results, "run_dir": str(run_dir)}


def parameter_line(config: FinetuneConfig, counts: dict) -> str:
    """Trainable / frozen parameter counts in millions, next to the paper's figure if any."""
    parts = ", ".join(f"{name} {n / 1e6:.2f} M" for name, n in counts["per_part"].items())
    line = (f"parameters: trainable {counts['trainable'] / 1e6:.2f} M, frozen "
            f"{counts['frozen'] / 1e6:.2f} M ({parts})")
    paper = PRESETS[config.preset].paper_params_m
    if paper is not None:
        name = config.preset.replace("stan_", "STAN-").replace("-s", "-S").replace("-l", "-L")
        line += f"; STAN §3 reports {paper:g} M for {name}"
    return line


def load_finetuned(path) -> tuple[PixelModel, dict]:
    """Rebuild a ``heads finetune`` model from its run directory or ``checkpoint.pt``: frozen
    encoders from their weights (``config.weights``), trainable ones, the head and the
    standardisation from the checkpoint.

    Returns:
        ``(model, checkpoint)``, the model in eval mode on the CPU.

    Raises:
        FileNotFoundError: no checkpoint at ``path``. ValueError: not a finetune checkpoint.
    """
    from heads.data import Standardizer

    checkpoint = load_checkpoint(path)
    if checkpoint.get("kind") != "finetune":
        raise ValueError(f"{path} is a `heads train` run; load it with heads.runs.load_head")
    config = FinetuneConfig(**{k: v for k, v in checkpoint["config"].items()})
    kwargs = {k: v for k, v in checkpoint["head_args"].items() if k not in ("in_dim",
                                                                             "num_outputs")}
    model, _, _ = build_model(config, num_outputs=checkpoint["head_args"]["num_outputs"],
                              checkpointing=False, head_kwargs=kwargs)
    model.head.load_state_dict(checkpoint["model"])
    for i, state in checkpoint["encoder_states"].items():
        model.encoders[int(i)].load_state_dict(state)
    model.set_standardizer(Standardizer.from_state_dict(checkpoint["standardizer"]))
    return model.eval(), checkpoint


def _standardizer_state(model: PixelModel) -> dict:
    return {key: [getattr(model, f"feature_{key}_{i}").cpu().clone()
                  for i in range(len(model.encoders))] for key in ("mean", "std")}


def _is_trainable_key(model: PixelModel, key: str) -> bool:
    return model.encoders[int(key.split(".")[1])].trainable


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding workers: one thread each, the cores go to the model

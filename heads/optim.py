"""Optimisation pieces of the training loop (:mod:`heads.loop`): AdamW parameter groups, the
learning-rate schedules by name, seeding and the RNG states a checkpoint resumes from, and mixed
precision on CUDA."""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import nn


def param_groups(model: nn.Module, *, lr: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: ``weight_decay`` on weight matrices, none on biases and norms.

    A parameter may carry its own settings in an ``_optim`` dict attribute (e.g. S4's A, B and
    dt: ``{"lr": 1e-3, "weight_decay": 0.0}``, see ``heads.models.s4``); its entries override
    the defaults. Parameters with equal settings share a group. The learning-rate schedule
    multiplies every group's lr by the same factor, so a group keeps its ratio to ``lr``.

    Args:
        model: The head.
        lr: Default (peak) learning rate.
        weight_decay: Default decay for parameters with >= 2 dims.

    Returns:
        ``[{"params": [...], "lr": ..., "weight_decay": ...}, ...]``, trainable parameters only.
    """
    groups: dict[tuple, list[nn.Parameter]] = {}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        settings = {"lr": lr, "weight_decay": weight_decay if param.dim() >= 2 else 0.0}
        settings.update(getattr(param, "_optim", {}))
        groups.setdefault(tuple(sorted(settings.items())), []).append(param)
    return [{"params": params, **dict(key)} for key, params in groups.items()]


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The linear warm-up's multiplier: from 1 / warmup_steps up to 1, then 1."""
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up from ~0 to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_cosine(optimizer, *, warmup_steps: int, total_steps: int, **_):
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``
    (:func:`lr_factor`), as a ``torch.optim.lr_scheduler.LambdaLR`` stepped once per batch.

    Which paper uses it: STAM §4 (warm-up + cosine); VTN §4.1's "cosine schedule decay" of
    R50/101-VTN is the same with ``warmup_steps = 0`` (official SlowFast ``cosine`` policy,
    evaluated per iteration). Longvid's default for the other transformer heads, whose papers
    do not state a schedule (warm-up keeps early updates from diverging).
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, warmup_steps=warmup_steps, total_steps=total_steps)
    )


def step_factor(step: int, *, warmup_steps: int, milestone_steps: tuple[int, ...],
                gamma: float) -> float:
    """Learning-rate multiplier: linear warm-up, then ``gamma`` per milestone passed."""
    return warmup_factor(step, warmup_steps) * gamma ** sum(step >= m for m in milestone_steps)


def steps(optimizer, *, warmup_steps: int, steps_per_epoch: int, milestones: tuple[int, ...],
          gamma: float, **_):
    """The lr times ``gamma`` at the start of each epoch in ``milestones`` (after a linear
    warm-up of ``warmup_steps``), a ``LambdaLR`` stepped once per batch.

    Which paper uses it: VTN §4.1 "steps-based for the ViT-VTN versions"; the official
    ``VIT_B_VTN.yaml``: ``steps_with_relative_lrs``, steps [0, 13, 24], lrs [1, 0.1, 0.01],
    25 epochs (``milestones=(13, 24)``, ``gamma=0.1``).

    Raises:
        ValueError: ``milestones`` is empty.
    """
    if not milestones:
        raise ValueError("the steps schedule needs lr_milestones (epochs), e.g. [13, 24]")
    milestone_steps = tuple(m * steps_per_epoch for m in milestones)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        step_factor, warmup_steps=warmup_steps, milestone_steps=milestone_steps, gamma=gamma))


# Learning-rate schedules by name (`--schedule`, RunConfig.schedule): a builder
# `(optimizer, *, warmup_steps, total_steps, steps_per_epoch, milestones, gamma) ->
# LRScheduler` (keywords it does not use are ignored), stepped once per optimiser step.
# ViS4mer's official ReduceLROnPlateau (stepped on a metric per epoch) is not here yet.
SCHEDULES: dict[str, Callable] = {"warmup_cosine": warmup_cosine, "steps": steps}


def build_schedule(name: str, optimizer, *, warmup_steps: int, total_steps: int,
                   steps_per_epoch: int = 1, milestones: tuple[int, ...] = (),
                   gamma: float = 0.1):
    """The learning-rate scheduler ``name`` of :data:`SCHEDULES` for ``optimizer``.

    Raises:
        ValueError: unknown name (the message lists the valid ones), or settings the schedule
            cannot use.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](optimizer, warmup_steps=warmup_steps, total_steps=total_steps,
                           steps_per_epoch=steps_per_epoch, milestones=milestones, gamma=gamma)


def build_optimizer(name: str, groups: list[dict], *, lr: float, momentum: float = 0.9,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """``adamw`` (longvid's default for cached heads; ViS4mer §4.4) or ``sgd`` with
    ``momentum`` and optional Nesterov (VTN §4.1; official SlowFast: Nesterov, dampening 0)
    over :func:`param_groups`' groups.

    Raises:
        ValueError: unknown name.
    """
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"unknown optimizer {name!r}; valid optimizers: adamw, sgd")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) and ask torch for deterministic kernels
    (warning, not failing, where an op has none); same seed, same run on the same machine."""
    # cuBLAS needs this workspace setting to be deterministic; read when CUDA initialises.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state(generators: dict | None = None) -> dict:
    """The random-number states a resumed run needs to draw what the uninterrupted run would:
    Python's, numpy's global, torch's CPU and CUDA generators, and ``generators`` (name →
    ``torch.Generator`` or ``numpy.random.Generator``, e.g. a loader's shuffling and the
    LVU protocol's window draws). Loadable with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"state": list(random.getstate()[1]), "gauss_next": random.getstate()[2]},
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generators": {},
    }
    for name, gen in (generators or {}).items():
        if isinstance(gen, torch.Generator):
            state["generators"][name] = gen.get_state()
        else:  # numpy: the bit generator's state as text (its 128-bit ints do not fit a tensor)
            state["generators"][name] = json.dumps(gen.bit_generator.state)
    return state


def set_rng_state(state: dict, generators: dict | None = None) -> None:
    """Restore what :func:`rng_state` captured, into the global generators and ``generators``
    (the same names, the same kinds).

    Raises:
        KeyError: a generator of ``generators`` is not in ``state``.
    """
    version = random.getstate()[0]
    random.setstate((version, tuple(state["python"]["state"]), state["python"]["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in (generators or {}).items():
        saved = state["generators"][name]
        if isinstance(gen, torch.Generator):
            gen.set_state(saved)
        else:
            gen.bit_generator.state = json.loads(saved)


def autocast_and_scaler(device: torch.device, dtype: torch.dtype | None):
    """``(autocast, scaler)`` for autocast in ``dtype`` on ``device``; ``dtype=None`` is off.

    Returns:
        ``autocast``: a zero-argument context-manager factory (None when off), ``scaler``: a
        ``torch.amp.GradScaler``, enabled for fp16 only (bf16 needs no loss scaling).
    """
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if dtype is None:
        return None, scaler
    return partial(torch.autocast, device_type=device.type, dtype=dtype), scaler


def mixed_precision(device: torch.device, enabled: bool):
    """``heads train --amp``: bf16 autocast on CUDA GPUs that have it, else fp16 autocast with
    a loss scaler; on CPU (or ``enabled=False``) no autocast and a no-op scaler (see
    :func:`autocast_and_scaler`)."""
    if not enabled or device.type != "cuda":
        return autocast_and_scaler(device, None)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return autocast_and_scaler(device, dtype)

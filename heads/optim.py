"""Optimisation pieces of the training loop (:mod:`heads.loop`): AdamW parameter groups, the
learning-rate schedules by name and the optimisers (devices, precision and seeding:
:mod:`heads.runtime`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

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

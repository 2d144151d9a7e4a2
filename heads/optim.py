"""Optimisation pieces of ``heads train``: AdamW parameter groups, the warm-up + cosine
learning-rate factor, seeding, and mixed precision on CUDA."""

from __future__ import annotations

import math
import os
import random
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


def lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up from ~0 to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) and ask torch for deterministic kernels
    (warning, not failing, where an op has none); same seed, same run on the same machine."""
    # cuBLAS needs this workspace setting to be deterministic; read when CUDA initialises.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def mixed_precision(device: torch.device, enabled: bool):
    """``(autocast, scaler)`` for a device: bf16 autocast on CUDA GPUs that have it, else fp16
    autocast with a loss scaler; on CPU (or ``enabled=False``) no autocast and a no-op scaler.

    Returns:
        ``autocast``: a zero-argument context-manager factory (None when off), ``scaler``: a
        ``torch.amp.GradScaler`` (disabled unless fp16).
    """
    if not enabled or device.type != "cuda":
        return None, torch.amp.GradScaler("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    autocast = partial(torch.autocast, device_type="cuda", dtype=dtype)
    return autocast, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

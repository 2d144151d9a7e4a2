"""Frozen feature backbones, registered in the timm style.

``@register_backbone`` on a builder that returns a :class:`BackboneSpec`-carrying module;
``create_backbone(name, weights=...)`` builds one; ``list_backbones()`` gives the keys (exactly
the ``--backbone`` values); ``backbone_spec(name)`` reads what a backbone expects without
building it. Every backbone carries its preprocessing (size, mean/std, frames per clip), taken
from the pretrained weights' own transforms in torchvision.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

_MODULES = ("pipeline.backbones.torchvision_models",)
_SPECS: dict[str, "BackboneSpec"] = {}
_BUILDERS: dict[str, Callable] = {}


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone takes and gives.

    Attributes:
        name: Registry key.
        input_kind: ``frame`` (one image per token) or ``clip`` (F frames per token).
        size_px: Square crop fed to the network, pixels.
        resize_px: Resize before the crop: one int (short side) or (H, W).
        mean: Per-channel normalisation mean (RGB, in [0, 1] units).
        std: Per-channel normalisation std.
        dim: Output feature dimension D.
        num_frames: Frames per clip the weights were trained with (1 for frame backbones).
        weights_tag: Name of the pretrained weights (torchvision enum member).
        weights_enum: Import path of the weights enum, e.g.
            ``torchvision.models.ResNet18_Weights`` (gives URL, transforms, class count).
        pretrained_on: Dataset of the pretrained weights.
        source: Where the architecture comes from (paper / library).
    """

    name: str
    input_kind: Literal["frame", "clip"]
    size_px: int
    resize_px: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    num_frames: int
    weights_tag: str
    weights_enum: str
    pretrained_on: str
    source: str

    def to_dict(self) -> dict:
        """JSON-friendly form, stored in feature-set attributes."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def weights(self):
        """The torchvision weights enum member of the pretrained weights."""
        module, _, name = self.weights_enum.rpartition(".")
        return getattr(importlib.import_module(module), name)[self.weights_tag]


def register_backbone(spec: BackboneSpec) -> Callable[[Callable], Callable]:
    """Decorator registering ``builder(weights_ref) -> Backbone`` under ``spec.name``."""

    def wrap(builder: Callable) -> Callable:
        if spec.name in _SPECS:
            raise ValueError(f"backbone {spec.name!r} is registered twice")
        _SPECS[spec.name] = spec
        _BUILDERS[spec.name] = builder
        return builder

    return wrap


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(module)


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    _load_all()
    return sorted(_SPECS)


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of backbone ``name``, without building the model.

    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    _load_all()
    if name not in _SPECS:
        raise KeyError(f"unknown backbone {name!r}; valid: {', '.join(sorted(_SPECS))}")
    return _SPECS[name]


PRECISIONS = ("fp32", "bf16", "auto")


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``auto`` → ``bf16`` where the hardware runs it natively (CUDA, or a CPU with AVX-512
    BF16/AMX, where R(2+1)D runs ~3× faster than in fp32), else ``fp32``.

    Raises:
        ValueError: not one of :data:`PRECISIONS`.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: valid values are {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def create_backbone(
    name: str, *, weights: str = "none", seed: int = 0, device: str = "cpu", precision: str = "fp32"
):
    """Build backbone ``name`` with its weights, in eval mode.

    Args:
        name: Registry key.
        weights: ``none`` (seeded random init), ``default`` (the library's pretrained weights,
            from the torch hub cache or downloaded) or a path to a state-dict file.
        seed: Seed of the random init when ``weights`` is ``none``.
        device: Torch device.
        precision: ``fp32``, or ``bf16`` (autocast: matmuls and convolutions in bfloat16).

    Raises:
        KeyError: unknown backbone.
        pipeline.weights.WeightsError: weights cannot be found or loaded.
    """
    from pipeline.weights import resolve_weights

    spec = backbone_spec(name)
    ref = resolve_weights(weights, spec, seed=seed)
    backbone = _BUILDERS[name](ref, device=device)
    backbone.precision = resolve_precision(precision, device)
    return backbone


class Backbone:
    """A frozen network plus its preprocessing; call it on uint8 frames.

    Args:
        spec: What the network expects.
        model: Module mapping preprocessed input to (B, D) features.
        transform: The weights' own torchvision transform (uint8 → normalised float).
        weights_identity: JSON-friendly description of the weights (for fingerprints).
        device: Torch device.
    """

    def __init__(self, spec: BackboneSpec, model, transform, weights_identity: dict, device="cpu"):
        import torch

        self.spec = spec
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        if spec.input_kind == "frame":
            self.model = self.model.to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.transform = transform
        self.weights_identity = weights_identity
        self.precision = "fp32"  # set by create_backbone

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Features of a batch.

        Args:
            frames: uint8 RGB, (B, H, W, 3) for frame backbones or (B, F, H, W, 3) for clips.

        Returns:
            (B, D) float32 features.
        """
        import torch

        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )
        with torch.inference_mode(), autocast:
            if self.spec.input_kind == "frame":
                x = x.permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
                x = self.transform(x).contiguous(memory_format=torch.channels_last)
            else:
                x = x.permute(0, 1, 4, 2, 3)  # (B, F, H, W, 3) -> (B, F, 3, H, W)
                x = self.transform(x)  # -> (B, 3, F, size, size)
            return self.model(x).float().cpu().numpy()

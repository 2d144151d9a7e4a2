"""Frozen feature backbones, registered in the timm style.

``@register_backbone`` on a builder that returns a :class:`BackboneSpec`-carrying module;
``create_backbone(name, weights=...)`` builds one; ``list_backbones()`` gives the keys (exactly
the ``--backbone`` values); ``backbone_spec(name)`` reads what a backbone expects without
building it. Every backbone carries its preprocessing (size, mean/std, frames per clip), taken
from the pretrained weights' own transforms in torchvision (pytorchvideo's Kinetics recipe for
SlowFast), and says which token kinds it gives: ``pooled`` (B, D) or ``patch`` (B, N, D).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

_MODULES = ("pipeline.backbones.torchvision_models", "pipeline.backbones.pytorchvideo_models")
TOKEN_KINDS = ("pooled", "patch")
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
        weights_url: Where the pretrained weights are downloaded from.
        pretrained_on: Dataset of the pretrained weights.
        source: Where the architecture comes from (paper / library).
        token_kinds: Token kinds it can give: ``pooled`` (one D-vector per frame/clip), and
            ``patch`` for ViTs (N = 14 × 14 patches + CLS first).
        num_patches: N for ``patch`` tokens (0 when not offered).
        fixed_num_frames: The architecture needs exactly ``num_frames`` frames per clip
            (SlowFast's pathway pooling); otherwise a plan may feed any clip length.
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
    weights_url: str
    pretrained_on: str
    source: str
    token_kinds: tuple[str, ...] = ("pooled",)
    num_patches: int = 0
    fixed_num_frames: bool = False

    def to_dict(self) -> dict:
        """JSON-friendly form, stored in feature-set attributes."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    def clip_frames(self, plan_frames_per_clip: int | None) -> int:
        """Frames per token this backbone sees under a plan asking for ``plan_frames_per_clip``
        (``None``: the backbone's own clip length). Frame backbones see 1."""
        if self.input_kind == "frame":
            return 1
        if self.fixed_num_frames or plan_frames_per_clip is None:
            return self.num_frames
        return plan_frames_per_clip

    def token_shape(self, token_kind: str) -> tuple[int, ...]:
        """Shape of one stored token: (D,) pooled or (N, D) patch.

        Raises:
            ValueError: the backbone does not give ``token_kind`` tokens.
        """
        if token_kind not in self.token_kinds:
            raise ValueError(
                f"backbone {self.name} gives {' or '.join(self.token_kinds)} tokens, "
                f"not {token_kind!r}"
            )
        return (self.num_patches, self.dim) if token_kind == "patch" else (self.dim,)


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


def import_torchvision():
    """Import torchvision without torch._dynamo, which it does not use here.

    torchvision 0.29's ``ops/roi_align.py`` imports ``torch._dynamo.utils`` at top level (for
    ``is_compile_supported``, a check made only when ``roi_align`` runs), and every
    ``torchvision.models`` import reaches it through ``torchvision.ops``: ~1–2 s of CPU in every
    process that builds a backbone, more than the rest of torchvision (measured: 1.9 → 0.1 s).
    While torchvision is imported, that module is stood in for by one whose
    ``is_compile_supported`` imports the real one on first call; the stand-in is removed
    right after, so any later ``import torch._dynamo`` (``torch.compile``) is the real one.
    A no-op once torch._dynamo or torchvision is loaded.

    Returns:
        The ``torchvision`` module.
    """
    import sys
    import types

    name = "torch._dynamo.utils"
    if "torchvision" in sys.modules or name in sys.modules or "torch._dynamo" in sys.modules:
        import torchvision

        return torchvision
    import torch  # noqa: F401  (the real torch first: only the dynamo submodule is stood in for)

    def is_compile_supported(device_type):
        from torch._dynamo.utils import is_compile_supported as real

        return real(device_type)

    stand_in = types.ModuleType(name, "longvid: lazy stand-in while torchvision imports")
    stand_in.is_compile_supported = is_compile_supported
    sys.modules[name] = stand_in
    try:
        import torchvision
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
    return torchvision


PRECISIONS = ("fp32", "bf16", "auto")


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``auto`` → ``bf16`` where the hardware runs it natively (CUDA, or a CPU with AVX-512
    BF16/AMX, where R(2+1)D runs ~3× faster than in fp32), else ``fp32``.

    Raises:
        ValueError: not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: valid values are {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch  # only here: a driver given fp32 or bf16 never imports torch (1 s of CPU)

        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_native() else "fp32"


def cpu_bf16_native() -> bool:
    """Whether this CPU runs bf16 natively (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``),
    remembered per machine in ``$XDG_CACHE_HOME/longvid/cpu_bf16.json``.

    The driver of ``pipeline extract`` needs the answer for the fingerprint before it starts
    its workers, and importing torch to get it delays every run by 1–2 s on 2 cores. The cache
    key is the torch version, the CPU architecture and the CPU's feature flags, so a new torch
    or another machine asks torch again. An unreadable or unwritable cache is ignored.
    """
    import hashlib
    import importlib.metadata
    import json
    import os
    import platform
    from pathlib import Path

    try:
        flags = next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith(("flags", "Features"))), ""
        )
    except OSError:
        flags = platform.processor()
    key = hashlib.sha256(
        f"{importlib.metadata.version('torch')}|{platform.machine()}|{flags}".encode()
    ).hexdigest()[:16]
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "longvid"
    path = cache_dir / "cpu_bf16.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if isinstance(known, dict) and isinstance(known.get(key), bool):
        return known[key]
    import torch

    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**(known if isinstance(known, dict) else {}), key: native}))
        os.replace(tmp, path)  # whole or not at all: drivers may run side by side
    except OSError:
        pass
    return native


def create_backbone(
    name: str, *, weights: str = "default", seed: int = 0, device: str = "cpu",
    precision: str = "fp32",
):
    """Build backbone ``name`` with its weights, in eval mode.

    Args:
        name: Registry key.
        weights: ``default`` (the library's pretrained weights, from the torch hub cache or
            downloaded; the default), ``none`` (seeded random init, only when asked) or a path
            to a state-dict file.
        seed: Seed of the random init when ``weights`` is ``none``.
        device: Torch device.
        precision: ``fp32``, or ``bf16`` (autocast: matmuls and convolutions in bfloat16).

    Raises:
        KeyError: unknown backbone.
        pipeline.weights.WeightsError: weights cannot be found or loaded.
    """
    from pipeline.weights import resolve_weights

    import_torchvision()
    spec = backbone_spec(name)
    ref = resolve_weights(weights, spec, seed=seed)
    backbone = _BUILDERS[name](ref, device=device)
    backbone.precision = resolve_precision(precision, device)
    return backbone


class Backbone:
    """A frozen network plus its preprocessing; call it on uint8 frames.

    Args:
        spec: What the network expects.
        model: Module mapping preprocessed input to (B, D) features, or to (B, N, D) tokens
            (CLS first) for backbones that offer ``patch`` tokens.
        transform: Preprocessing (uint8 → normalised float): the weights' own torchvision
            transform where there is one.
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

    def __call__(self, frames: np.ndarray, token_kind: str = "pooled") -> np.ndarray:
        """Tokens of a batch.

        Args:
            frames: uint8 RGB, (B, H, W, 3) for frame backbones or (B, F, H, W, 3) for clips.
            token_kind: ``pooled`` or, where offered, ``patch``.

        Returns:
            (B, D) pooled or (B, N, D) patch tokens, float32.

        Raises:
            ValueError: the backbone does not give ``token_kind`` tokens.
        """
        self.spec.token_shape(token_kind)  # validates
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
            out = self.model(x)  # (B, D), or (B, N, D) for patch-token backbones
            if "patch" in self.spec.token_kinds and token_kind == "pooled":
                out = out[:, 0]  # the CLS token: (B, N, D) -> (B, D)
            return out.float().cpu().numpy()

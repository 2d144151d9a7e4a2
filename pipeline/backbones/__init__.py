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
import math
from dataclasses import dataclass, fields, replace
from typing import Callable, Literal

import numpy as np

_MODULES = (
    "pipeline.backbones.torchvision_models",
    "pipeline.backbones.pytorchvideo_models",
    "pipeline.backbones.timm_models",
)
TOKEN_KINDS = ("pooled", "patch")
# Frame geometry before the network: ``crop`` resizes the short side to ``resize_px`` and takes
# the centre ``size_px`` square (torchvision's and timm's eval transforms); ``squash`` resizes
# the whole frame to ``size_px`` × ``size_px``, aspect ratio not kept, nothing cut away
# (ViS4mer §4.4, "we resize each video frame to the spatial resolution of 224 × 224"; its
# official code calls cv2.resize).
RESIZE_MODES = ("crop", "squash")
_SPECS: dict[str, "BackboneSpec"] = {}
_BUILDERS: dict[str, Callable] = {}


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone takes and gives.

    Attributes:
        name: Registry key.
        input_kind: ``frame`` (one image per token) or ``clip`` (F frames per token).
        size_px: Square fed to the network, pixels.
        resize_px: Resize before the crop: one int (short side) or (H, W); (S, S) under
            ``squash``.
        mean: Per-channel normalisation mean (RGB, in [0, 1] units).
        std: Per-channel normalisation std.
        dim: Output feature dimension D.
        num_frames: Frames per clip the weights were trained with (1 for frame backbones).
        weights_tag: Name of the pretrained weights (torchvision enum member, or timm's
            ``architecture.tag``).
        weights_url: Where the pretrained weights are downloaded from.
        pretrained_on: Dataset of the pretrained weights.
        source: Where the architecture comes from (paper / library).
        token_kinds: Token kinds it can give: ``pooled`` (one D-vector per frame/clip), and
            ``patch`` for ViTs (N tokens: ``num_prefix_tokens`` first, then the patch grid).
        num_patches: N for ``patch`` tokens, prefix tokens included (0 when not offered).
        fixed_num_frames: The architecture needs exactly ``num_frames`` frames per clip
            (SlowFast's pathway pooling); otherwise a plan may feed any clip length.
        interpolation: Resampling of the resize: ``bilinear`` or ``bicubic``.
        resize: Frame geometry, one of :data:`RESIZE_MODES` (the run's ``--resize``).
        num_prefix_tokens: Tokens before the patch grid in ``patch`` tokens: CLS, then any
            register tokens (DINOv2 with registers).
        patch_grid: (rows, cols) of patches at ``size_px``; () = a square grid of
            ``num_patches - num_prefix_tokens`` (the torchvision ViTs: 14 × 14).
        hf_hub_id: Hugging Face hub repository of the pretrained weights (timm backbones);
            ``--weights default`` resolves them through the hub cache (``HF_HOME``).
        used_by: The long-video papers that used this backbone, in words (not fingerprinted:
            a description, it changes no token).

    The fields from ``interpolation`` on came later; :meth:`to_dict` leaves them out at their
    defaults, so feature sets written before they existed keep their fingerprints.
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
    interpolation: str = "bilinear"
    resize: str = "crop"
    num_prefix_tokens: int = 1
    patch_grid: tuple[int, ...] = ()
    hf_hub_id: str = ""
    used_by: str = ""

    def to_dict(self) -> dict:
        """JSON-friendly form, stored in feature-set attributes (and fingerprinted)."""
        out = {}
        for key, value in self.__dict__.items():
            if key == "used_by" or (key in _LATER_FIELDS and value == _LATER_FIELDS[key]):
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def with_resize(self, resize: str) -> "BackboneSpec":
        """This spec under frame geometry ``resize`` (``squash``: resized straight to the square).

        Raises:
            ValueError: not one of :data:`RESIZE_MODES`.
        """
        if resize not in RESIZE_MODES:
            raise ValueError(f"--resize {resize!r}: valid values are {', '.join(RESIZE_MODES)}")
        if resize == self.resize:
            return self
        if resize == "squash":
            return replace(self, resize="squash", resize_px=(self.size_px, self.size_px))
        return _SPECS[self.name]  # the registered spec is the crop one

    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid of ``patch`` tokens ((0, 0) when not offered)."""
        if self.patch_grid:
            return (self.patch_grid[0], self.patch_grid[1])
        side = math.isqrt(max(self.num_patches - self.num_prefix_tokens, 0))
        return (side, side)

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


# Fields added after feature sets were first written, with the value that leaves them out of
# BackboneSpec.to_dict (and so of the fingerprint).
_LATER_FIELDS = {
    f.name: f.default for f in fields(BackboneSpec)
    if f.name in ("interpolation", "resize", "num_prefix_tokens", "patch_grid", "hf_hub_id")
}


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


def backbone_spec(name: str, *, resize: str = "crop") -> BackboneSpec:
    """The spec of backbone ``name`` under frame geometry ``resize``, without building the model.

    Raises:
        KeyError: unknown name; the message lists the valid ones.
        ValueError: ``resize`` is not one of :data:`RESIZE_MODES`.
    """
    _load_all()
    if name not in _SPECS:
        raise KeyError(f"unknown backbone {name!r}; valid: {', '.join(sorted(_SPECS))}")
    return _SPECS[name].with_resize(resize)


def resize_transform(spec: BackboneSpec):
    """Preprocessing from the spec alone: uint8 → resize (``spec.resize``) → [0, 1] → normalise.

    ``crop``: short side to ``resize_px[0]`` (or to (H, W) when ``resize_px`` has two sides),
    then the centre ``size_px`` square; ``squash``: straight to ``size_px`` × ``size_px``. The
    resize antialiases, as PIL does in timm's transforms, with ``spec.interpolation``.

    Returns:
        A callable: frames (B, 3, H, W) uint8 → (B, 3, S, S) float; clips (B, F, 3, H, W)
        uint8 → (B, 3, F, S, S) float.
    """
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mode = InterpolationMode(spec.interpolation)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)  # broadcast over (B, 3, S, S)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    size = [spec.size_px, spec.size_px]

    def frames(x: torch.Tensor) -> torch.Tensor:
        if spec.resize == "squash":
            x = F.resize(x, size, interpolation=mode, antialias=True)
        else:
            x = F.resize(x, list(spec.resize_px), interpolation=mode, antialias=True)
            x = F.center_crop(x, size)
        return (x.float() / 255.0 - mean.to(x.device)) / std.to(x.device)

    def transform(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return frames(x)
        batch, num_frames = x.shape[:2]
        x = frames(x.flatten(0, 1))  # (B, F, 3, H, W) -> (B·F, 3, S, S)
        x = x.reshape(batch, num_frames, 3, *size)  # (B, F, 3, S, S)
        return x.permute(0, 2, 1, 3, 4)  # (B, 3, F, S, S)

    return transform


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
    precision: str = "fp32", resize: str = "crop",
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
        resize: Frame geometry (:data:`RESIZE_MODES`): ``crop``, the weights' own transform,
            or ``squash``, the whole frame resized to the input square.

    Raises:
        KeyError: unknown backbone.
        ValueError: unknown ``resize``.
        pipeline.weights.WeightsError: weights cannot be found or loaded.
    """
    from pipeline.weights import resolve_weights

    import_torchvision()
    spec = backbone_spec(name, resize=resize)
    ref = resolve_weights(weights, spec, seed=seed)
    backbone = _BUILDERS[name](ref, device=device)
    if spec.resize != backbone.spec.resize:  # builders give the crop transform of their weights
        backbone.spec, backbone.transform = spec, resize_transform(spec)
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
        pool: For patch-token backbones, (B, N, D) tokens → (B, D) pooled feature; default
            the first (CLS) token.
    """

    def __init__(self, spec: BackboneSpec, model, transform, weights_identity: dict, device="cpu",
                 pool=None):
        import torch

        self.spec = spec
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        if spec.input_kind == "frame":
            self.model = self.model.to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.transform = transform
        self.pool = pool
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
                # (B, N, D) -> (B, D): the CLS token, or the backbone's own pooling
                out = self.pool(out) if self.pool is not None else out[:, 0]
            return out.float().cpu().numpy()

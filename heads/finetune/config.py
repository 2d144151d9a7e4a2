"""``heads finetune``'s config: the papers' end-to-end presets and :class:`FinetuneConfig`.

:class:`FinetuneConfig` is :class:`heads.config.RunConfig` (the fields every training run has,
declared and checked once) plus the encoders, frames and decoding of end-to-end training; it
sets smaller loop defaults, since every step decodes videos and runs backbones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from heads.config import RunConfig
from heads.finetune.models import STAT_EMBEDDING


@dataclass(frozen=True)
class Preset:
    """One paper's end-to-end recipe (see :mod:`heads.finetune.recipe`'s table)."""

    head: str
    encoders: tuple[str, ...]
    trainable: tuple[str, ...]
    plan: str
    source: str
    paper_params_m: float | None = None  # trainable parameters the paper reports, millions
    train_clip_sec: float = 0.0  # > 0: train on random clips of this many seconds (VTN §4.1)
    train_random_frames: bool = False  # training samples a random instant of each segment


PRESETS: dict[str, Preset] = {
    "stan_small": Preset(
        "stan", ("resnet18", "r2plus1d_18"), ("resnet18",), "scene",
        "STAN §3: back-propagate into the 2D CNN, stop-gradient on the 3D stream", 45.0,
    ),
    "stan_large": Preset(
        "stan", ("resnet18", "r2plus1d_18"), ("resnet18", "r2plus1d_18"), "scene",
        "STAN §3: fine-tune both backbones", 92.5,
    ),
    "vtn": Preset(
        "longformer", ("resnet18",), ("resnet18",), "full",
        "VTN §4.1, Table 2d: fine-tune the 2D backbone under the Longformer head; train on 16 "
        "frames of a random 5.12 s clip, evaluate on 250 frames of the whole video",
        train_clip_sec=5.12,
    ),
    "stat": Preset(
        "stat", (STAT_EMBEDDING,), (STAT_EMBEDDING,), "uniform",
        "STAT (Li et al., AAAI 2022) from pixels, random init: token embedding block + 15 STA "
        "blocks + temporal aggregation (heads.models.stat); 16 frames, one at a random instant "
        "of each segment in training, segment centres at test (--num-frames 32 / 64 with "
        "--head-kwarg t_o=5 / 7), 256 px short side, 224 px crops",
        train_random_frames=True,
    ),
}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(RunConfig):
    """Everything that defines an end-to-end run; stored in the run directory and checkpoint.
    The shared fields (task, catalog, head, optimisation, loop): :class:`heads.config.RunConfig`.
    """

    preset: str = "stan_small"  # a key of PRESETS: head, encoders, trainable set, plan
    encoders: tuple[str, ...] = ()  # per stream: backbone name or "conv3d_stem"; () = preset's
    trainable: tuple[str, ...] | None = None  # encoders that get gradients; None = preset's
    weights: tuple[str, ...] = ("default",)  # as `pipeline extract --weights`: none|default|PATH
    weights_seed: int = 0  # seed of `--weights none` (as `pipeline extract --seed`)
    # `uniform` / `full` plan: frames per video; None = 16 for `uniform` (STAT trains on 16),
    # 250 for `full` (VTN's full-video inference).
    num_frames: int | None = None
    # VTN §4.1: train on train_clip_frames frames of a random train_clip_sec clip of the video's
    # plan windows (the vtn preset: 16 of a 5.12 s clip of the `full` plan's 250); 0 = the whole
    # video; None = the preset's.
    train_clip_sec: float | None = None
    train_clip_frames: int = 16
    # Fixed plans: training samples each segment at a random instant (STAT, Implementation
    # Details: "one random frame per segment"), evaluation at its centre; None = the preset's.
    train_random_frames: bool | None = None
    frames_per_clip: int = 12  # clip backbones in the `scene` plan: frames per scene (STAN §3)
    detector: str = "content"  # PySceneDetect detector of the `scene` plan
    frame_size_px: int | None = None  # crop side for every stream; None = each backbone's own
    crop_scale: tuple[float, float] = (0.35, 1.0)  # random resized crop: area fraction range
    flip: bool = True  # random horizontal flip in training
    stem_dim: int = 768  # conv3d_stem token width (ViT-B width, so ViT-patch heads fit)
    stem_patch_px: int = 16  # conv3d_stem patch side: 224 px frames → 14 × 14 patches
    stem_tubelet_frames: int = 2  # conv3d_stem frames per tubelet
    # The loop's defaults for end-to-end steps (each decodes videos and runs the backbones):
    epochs: int = 10  # upper bound; early stopping may end sooner
    batch_size: int = 2  # videos per step: every window of a video goes through the encoders
    lr: float = 1e-4  # peak AdamW learning rate of the head (and of stems trained from scratch)
    warmup_epochs: int = 1  # linear warm-up before cosine decay
    patience: int = 5  # epochs without val improvement before stopping; 0 = never
    backbone_lr_scale: float = 0.1  # pretrained backbones train at lr × this: keeps their features
    precision: str = "auto"  # autocast: auto = bf16 on CUDA where supported, else fp32
    grad_checkpoint: bool | None = None  # recompute encoder activations; None = on for CUDA
    chunk_windows: int = 64  # windows per encoder forward (and per checkpointed segment)
    train_batchnorm: bool = False  # update BN statistics of trainable backbones
    num_workers: int = 2  # DataLoader processes decoding videos
    cache_decoded: bool = False  # keep decoded windows in RAM across epochs (num_workers 0)
    standardize_videos: int = 64  # train videos whose features fit the standardiser
    init_from: str | None = None  # run dir of `heads train` (or finetune): the head carries over

    _inputs = "encoders"

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoders", tuple(self.encoders))
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))
        if self.trainable is not None:
            object.__setattr__(self, "trainable", tuple(self.trainable))
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r}: valid presets are {', '.join(PRESETS)}")
        super().__post_init__()
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{self.precision!r}")
        if self.cache_decoded and self.num_workers:
            raise ValueError(
                "--cache-decoded keeps decoded windows in the main process; a worker's cache "
                "dies with it: use it with --num-workers 0"
            )

    def _checks(self) -> dict[str, tuple[bool, str, object]]:
        checks = {
            "--backbone-lr-scale": (self.backbone_lr_scale >= 0, "non-negative",
                                    self.backbone_lr_scale),
            "--num-workers": (self.num_workers >= 0, "non-negative", self.num_workers),
            "--chunk-windows": (self.chunk_windows >= 1, "at least 1", self.chunk_windows),
            "--num-frames": (self.num_frames is None or self.num_frames >= 1, "at least 1",
                             self.num_frames),
            "train_clip_sec": (self.train_clip_sec is None or self.train_clip_sec >= 0,
                               "non-negative", self.train_clip_sec),
            "train_clip_frames": (self.train_clip_frames >= 1, "at least 1",
                                  self.train_clip_frames),
            "--frames-per-clip": (self.frames_per_clip >= 1, "at least 1", self.frames_per_clip),
            "--standardize-videos": (self.standardize_videos >= 1, "at least 1",
                                     self.standardize_videos),
            "--crop-scale": (0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
                             "two fractions 0 < lo <= hi <= 1", self.crop_scale),
        }
        if self.frame_size_px is not None:
            checks["--frame-size-px"] = (self.frame_size_px >= 8, "at least 8", self.frame_size_px)
        return checks


def resolve_config(config: FinetuneConfig) -> FinetuneConfig:
    """``config`` with the preset's head, encoders, trainable set and plan filled in.

    Raises:
        ValueError: a trainable encoder is not one of the encoders, or random training frames
            with the scene plan.
    """
    preset = PRESETS[config.preset]
    config = replace(
        config,
        data_root=config.data_root or f"data/{config.dataset}",
        head=config.head or preset.head,
        encoders=config.encoders or preset.encoders,
        plan=config.plan or preset.plan,
        train_clip_sec=(preset.train_clip_sec if config.train_clip_sec is None
                        else config.train_clip_sec),
        train_random_frames=(preset.train_random_frames if config.train_random_frames is None
                             else config.train_random_frames),
    )
    if config.train_random_frames and config.plan == "scene":
        raise ValueError("train_random_frames samples segments of a fixed plan (uniform, fps, "
                         "full, clips), not scenes")
    if config.num_frames is None:
        config = replace(config, num_frames=250 if config.plan == "full" else 16)
    trainable = preset.trainable if config.trainable is None else config.trainable
    unknown = set(trainable) - set(config.encoders)
    if unknown:
        raise ValueError(f"--trainable {', '.join(sorted(unknown))}: not an encoder of this run "
                         f"({', '.join(config.encoders)})")
    return replace(config, trainable=tuple(trainable))


def resolve_device(config: FinetuneConfig) -> tuple[torch.device, torch.dtype | None, bool]:
    """``(device, autocast dtype or None, gradient checkpointing)`` for ``config``."""
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    precision = config.precision
    if precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16 else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    checkpointing = config.grad_checkpoint
    if checkpointing is None:
        checkpointing = device.type == "cuda"
    return device, dtype, checkpointing

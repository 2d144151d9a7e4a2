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
    # Val/test views (temporal, spatial), averaged; from_frames: (num_frames, views) pairs, the
    # last whose num_frames the run reaches wins (STAT: 3 × 3 views from T = 64).
    test_views: tuple[int, int] = (1, 1)
    test_views_from_frames: tuple[tuple[int, tuple[int, int]], ...] = ()
    # Optimiser defaults where the flags are not given; None = FINETUNE_DEFAULTS. lr is for
    # lr_batch_size videos per step and scales linearly with --batch-size (DeiT's rule).
    lr: float | None = None
    lr_batch_size: int | None = None
    weight_decay: float | None = None
    warmup_epochs: int | None = None
    label_smoothing: float | None = None


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
        "--head-kwarg t_o=5 / 7), 256 px short side, 224 px crops; 5 × 1 test views (3 × 3 "
        "from 64 frames); DeiT's AdamW: lr 5e-4 × batch / 512, weight decay 0.05, 5 warm-up "
        "epochs, label smoothing 0.1",
        train_random_frames=True,
        # STAT, Implementation Details: 5 × 1 views at T = 16, 32; 3 × 3 at T = 64.
        test_views=(5, 1), test_views_from_frames=((64, (3, 3)),),
        # STAT, Implementation Details: AdamW "as the recipe following" DeiT (Touvron et al.
        # 2021), whose training settings these are (300 epochs not included: --epochs).
        lr=5e-4, lr_batch_size=512, weight_decay=0.05, warmup_epochs=5, label_smoothing=0.1,
    ),
}
# `heads finetune`'s optimiser settings where neither the flags nor the preset set them.
FINETUNE_DEFAULTS = {"lr": 1e-4, "weight_decay": 0.01, "warmup_epochs": 1,
                     "label_smoothing": 0.0}


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
    # Val/test views (temporal, spatial), outputs averaged as the metric reads them (softmax
    # for classification); (1, 1) = segment centres, centre crop. None = the preset's (stat:
    # 5 × 1, 3 × 3 from 64 frames). Each view costs one view's encoding, not a decode.
    test_views: tuple[int, int] | None = None
    # The loop's defaults for end-to-end steps (each decodes videos and runs the backbones):
    epochs: int = 10  # upper bound; early stopping may end sooner
    batch_size: int = 2  # videos per step: every window of a video goes through the encoders
    # Optimiser: None = the preset's, else FINETUNE_DEFAULTS (lr 1e-4, weight decay 0.01, 1
    # warm-up epoch, no label smoothing); resolve_config fills them in, so a run's stored
    # config holds the values it trained with.
    lr: float | None = None  # peak AdamW lr of the head (and of stems trained from scratch)
    weight_decay: float | None = None  # decay on weight matrices only
    warmup_epochs: int | None = None  # linear warm-up before cosine decay
    label_smoothing: float | None = None  # classification loss only (DeiT: 0.1)
    patience: int = 5  # epochs without val improvement before stopping; 0 = never
    backbone_lr_scale: float = 0.1  # pretrained backbones train at lr × this: keeps their features
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
        if self.test_views is not None:
            object.__setattr__(self, "test_views", tuple(self.test_views))
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r}: valid presets are {', '.join(PRESETS)}")
        super().__post_init__()  # lr, weight_decay, warmup_epochs may be None: the preset's
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
            "--label-smoothing": (self.label_smoothing is None or 0 <= self.label_smoothing < 1,
                                  "in [0, 1)", self.label_smoothing),
            "--test-views": (self.test_views is None or (
                len(self.test_views) == 2
                and all(isinstance(v, int) and v >= 1 for v in self.test_views)),
                "two counts >= 1 (temporal x spatial, e.g. 5x1)", self.test_views),
        }
        if self.frame_size_px is not None:
            checks["--frame-size-px"] = (self.frame_size_px >= 8, "at least 8", self.frame_size_px)
        return checks


def resolve_config(config: FinetuneConfig) -> FinetuneConfig:
    """``config`` with the preset's head, encoders, trainable set, plan, test views and
    optimiser settings filled in where the config leaves them unset (None).

    Raises:
        ValueError: a trainable encoder is not one of the encoders, or random training frames
            or temporal test views with the scene plan.
    """
    from catalogs import default_root  # polars: not at import, so that --help stays instant

    preset = PRESETS[config.preset]
    config = replace(
        config,
        data_root=config.data_root or default_root(
            config.dataset, (config.catalog_options or {}).get("variant")),
        head=config.head or preset.head,
        encoders=config.encoders or preset.encoders,
        plan=config.plan or preset.plan,
        train_clip_sec=(preset.train_clip_sec if config.train_clip_sec is None
                        else config.train_clip_sec),
        train_random_frames=(preset.train_random_frames if config.train_random_frames is None
                             else config.train_random_frames),
        # The global batch: batch_size videos on each of data_parallel workers.
        **{k: v for k, v in preset_optimiser(
            preset, config.batch_size * config.data_parallel).items()
           if getattr(config, k) is None},
    )
    if config.train_random_frames and config.plan == "scene":
        raise ValueError("train_random_frames samples segments of a fixed plan (uniform, fps, "
                         "full, clips), not scenes")
    if config.num_frames is None:
        config = replace(config, num_frames=250 if config.plan == "full" else 16)
    if config.test_views is None:
        config = replace(config, test_views=preset_test_views(preset, config.num_frames))
    if config.test_views[0] > 1 and config.plan == "scene":
        raise ValueError(f"--test-views {config.test_views[0]}x{config.test_views[1]}: temporal "
                         "views shift the sampling instants of a fixed plan's segments (uniform, "
                         "fps, full, clips), not scenes; give --test-views 1xS")
    trainable = preset.trainable if config.trainable is None else config.trainable
    unknown = set(trainable) - set(config.encoders)
    if unknown:
        raise ValueError(f"--trainable {', '.join(sorted(unknown))}: not an encoder of this run "
                         f"({', '.join(config.encoders)})")
    return replace(config, trainable=tuple(trainable))


def preset_test_views(preset: Preset, num_frames: int) -> tuple[int, int]:
    """``preset``'s (temporal, spatial) test views for a run of ``num_frames`` frames."""
    views = preset.test_views
    for min_frames, frames_views in sorted(preset.test_views_from_frames):
        if num_frames >= min_frames:
            views = frames_views
    return tuple(views)


def preset_optimiser(preset: Preset, batch_size: int) -> dict:
    """``preset``'s lr (scaled to the global ``batch_size``, per-worker batch × workers, when
    it names its own batch size: DeiT's lr × batch / 512 counts every video of a step), weight
    decay, warm-up epochs and label smoothing, FINETUNE_DEFAULTS where it sets none."""
    lr = preset.lr
    if lr is not None and preset.lr_batch_size:
        lr = lr * batch_size / preset.lr_batch_size  # DeiT: lr × batch size / 512
    own = {"lr": lr, "weight_decay": preset.weight_decay, "warmup_epochs": preset.warmup_epochs,
           "label_smoothing": preset.label_smoothing}
    return {k: FINETUNE_DEFAULTS[k] if v is None else v for k, v in own.items()}


def resolve_device(config: FinetuneConfig, *, log=None, device: torch.device | None = None,
                   ) -> tuple[torch.device, torch.dtype | None, bool]:
    """``(device, autocast dtype or None, gradient checkpointing)`` for ``config``
    (:mod:`heads.runtime`; ``device``, when given, is the one a data-parallel worker got)."""
    from heads.runtime import autocast_dtype
    from heads.runtime import resolve_device as runtime_device

    device = device or runtime_device(config.device, log=log)
    checkpointing = config.grad_checkpoint
    if checkpointing is None:
        checkpointing = device.type == "cuda"
    return device, autocast_dtype(config.precision, device), checkpointing

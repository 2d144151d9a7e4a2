"""Configuration and construction for ``heads finetune`` (:mod:`heads.finetune`): the papers'
presets, the frozen config dataclass, and building the encoders + head, the per-split videos and
the ``--init-from`` head weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from catalogs.base import SPLITS, Catalog
from heads.finetune_models import STEM, BackboneEncoder, Conv3dStem, PixelModel
from heads.video_clips import StreamPixels


@dataclass(frozen=True)
class Preset:
    """One paper's end-to-end recipe (see the module table)."""

    head: str
    encoders: tuple[str, ...]
    trainable: tuple[str, ...]
    plan: str
    source: str
    paper_params_m: float | None = None  # trainable parameters the paper reports, millions


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
        "longformer", ("resnet18",), ("resnet18",), "uniform",
        "VTN Table 2d: fine-tune the 2D backbone under the Longformer head",
    ),
    "stat": Preset(
        "stat", (STEM,), (STEM,), "uniform",
        "STAT from pixels: 3D-convolution tubelet stem + shrinking-attention blocks",
    ),
}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Everything that defines an end-to-end run; stored in the run directory and checkpoint."""

    task: str  # task of the catalog (`--task`); its kind picks loss and metrics
    preset: str = "stan_small"  # a key of PRESETS: head, encoders, trainable set, plan
    dataset: str = "demo"  # catalog key (`catalogs.get_catalog`)
    data_root: str | None = None  # catalog root; None means data/<dataset>
    catalog_options: dict = field(default_factory=dict)  # e.g. {"variant": "small"}
    head: str | None = None  # registered head; None = the preset's
    encoders: tuple[str, ...] = ()  # per stream: backbone name or "conv3d_stem"; () = preset's
    trainable: tuple[str, ...] | None = None  # encoders that get gradients; None = preset's
    weights: tuple[str, ...] = ("none",)  # as `pipeline extract --weights`: none|default|PATH
    weights_seed: int = 0  # seed of `--weights none` (as `pipeline extract --seed`)
    plan: str | None = None  # sampling plan; None = the preset's (scene for STAN)
    num_frames: int = 16  # `uniform` plan: frames per video (VTN and STAT train on 16)
    frames_per_clip: int = 12  # clip backbones in the `scene` plan: frames per scene (STAN §3)
    detector: str = "content"  # PySceneDetect detector of the `scene` plan
    frame_size_px: int | None = None  # crop side for every stream; None = each backbone's own
    crop_scale: tuple[float, float] = (0.35, 1.0)  # random resized crop: area fraction range
    flip: bool = True  # random horizontal flip in training
    stem_dim: int = 768  # STAT stem token width (ViT-B width, so ViT-patch STAT heads fit)
    stem_patch_px: int = 16  # STAT stem patch side: 224 px frames → 14 × 14 patches
    stem_tubelet_frames: int = 2  # STAT stem frames per tubelet
    epochs: int = 10  # upper bound; early stopping may end sooner
    batch_size: int = 2  # videos per step: every window of a video goes through the encoders
    lr: float = 1e-4  # peak AdamW learning rate of the head (and of the STAT stem)
    backbone_lr_scale: float = 0.1  # pretrained backbones train at lr × this: keeps their features
    weight_decay: float = 0.01  # AdamW decay on weight matrices only
    warmup_epochs: int = 1  # linear warm-up before cosine decay
    grad_clip: float = 1.0  # max global gradient norm
    patience: int = 5  # epochs without val improvement before stopping; 0 = never
    seed: int = 0  # seeds head init, augmentation draws and shuffling
    device: str = "cpu"  # cpu, cuda or auto
    precision: str = "auto"  # autocast: auto = bf16 on CUDA where supported, else fp32
    grad_checkpoint: bool | None = None  # recompute encoder activations; None = on for CUDA
    chunk_windows: int = 64  # windows per encoder forward (and per checkpointed segment)
    train_batchnorm: bool = False  # update BN statistics of trainable backbones
    num_workers: int = 2  # DataLoader processes decoding videos
    cache_decoded: bool = False  # keep decoded windows in RAM across epochs (num_workers 0)
    standardize_videos: int = 64  # train videos whose features fit the standardiser
    init_from: str | None = None  # run dir of `heads train` (or finetune): the head carries over
    runs_dir: str = "runs"  # parent of the run directories
    head_kwargs: dict = field(default_factory=dict)  # passed to create_head (`--head-kwarg`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoders", tuple(self.encoders))
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))
        if self.trainable is not None:
            object.__setattr__(self, "trainable", tuple(self.trainable))
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r}: valid presets are {', '.join(PRESETS)}")
        checks = {
            "--epochs": (self.epochs >= 1, "at least 1", self.epochs),
            "--batch-size": (self.batch_size >= 1, "at least 1", self.batch_size),
            "--lr": (self.lr > 0, "positive", self.lr),
            "--backbone-lr-scale": (self.backbone_lr_scale >= 0, "non-negative",
                                    self.backbone_lr_scale),
            "--weight-decay": (self.weight_decay >= 0, "non-negative", self.weight_decay),
            "--warmup-epochs": (self.warmup_epochs >= 0, "non-negative", self.warmup_epochs),
            "--grad-clip": (self.grad_clip > 0, "positive", self.grad_clip),
            "--patience": (self.patience >= 0, "non-negative", self.patience),
            "--num-workers": (self.num_workers >= 0, "non-negative", self.num_workers),
            "--chunk-windows": (self.chunk_windows >= 1, "at least 1", self.chunk_windows),
            "--num-frames": (self.num_frames >= 1, "at least 1", self.num_frames),
            "--frames-per-clip": (self.frames_per_clip >= 1, "at least 1", self.frames_per_clip),
            "--standardize-videos": (self.standardize_videos >= 1, "at least 1",
                                     self.standardize_videos),
            "--crop-scale": (0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
                             "two fractions 0 < lo <= hi <= 1", self.crop_scale),
        }
        if self.frame_size_px is not None:
            checks["--frame-size-px"] = (self.frame_size_px >= 8, "at least 8", self.frame_size_px)
        for flag, (ok, wanted, value) in checks.items():
            if not ok:
                raise ValueError(f"{flag} must be {wanted}, got {value}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{self.precision!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"--device must be cpu, cuda or auto, got {self.device!r}")
        if self.cache_decoded and self.num_workers:
            raise ValueError(
                "--cache-decoded keeps decoded windows in the main process; a worker's cache "
                "dies with it: use it with --num-workers 0"
            )
        reserved = {"in_dim", "num_outputs"} & set(self.head_kwargs)
        if reserved:
            raise ValueError(f"--head-kwarg cannot set {', '.join(sorted(reserved))}: they come "
                             "from the encoders and the task")


def resolve_config(config: FinetuneConfig) -> FinetuneConfig:
    """``config`` with the preset's head, encoders, trainable set and plan filled in.

    Raises:
        ValueError: a trainable encoder is not one of the encoders.
    """
    preset = PRESETS[config.preset]
    config = replace(
        config,
        data_root=config.data_root or f"data/{config.dataset}",
        head=config.head or preset.head,
        encoders=config.encoders or preset.encoders,
        plan=config.plan or preset.plan,
    )
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


def build_model(config: FinetuneConfig, *, num_outputs: int, checkpointing: bool,
                head_kwargs: dict | None = None) -> tuple[PixelModel, list[StreamPixels], dict]:
    """Encoders, head and the pixels each stream needs, for a resolved ``config``.

    Returns:
        ``(model, streams, head_args)``; ``head_args`` rebuild the head with ``create_head``.

    Raises:
        KeyError: unknown backbone or head.
        ValueError: a ViT asked for frames other than 224 px, or the head rejects its arguments.
        pipeline.weights.WeightsError: weights cannot be found.
    """
    from heads.models import create_head, num_streams_for
    from pipeline.backbones import create_backbone
    from pipeline.weights import parse_weights_option

    num_streams_for(config.head, len(config.encoders))
    backbones = [name for name in config.encoders if name != STEM]
    weights = parse_weights_option(list(config.weights), backbones) if backbones else {}
    encoders, streams = [], []
    for name in config.encoders:
        trainable = name in config.trainable
        if name == STEM:
            size_px = config.frame_size_px or 224
            encoders.append(Conv3dStem(
                dim=config.stem_dim, patch_px=config.stem_patch_px,
                tubelet_frames=config.stem_tubelet_frames, grad_checkpoint=checkpointing,
            ).requires_grad_(trainable))
            streams.append(StreamPixels(1, size_px, round(size_px * 256 / 224)))
            continue
        backbone = create_backbone(name, weights=weights[name], seed=config.weights_seed)
        spec = backbone.spec
        size_px = config.frame_size_px or spec.size_px
        if "patch" in spec.token_kinds and size_px != spec.size_px:
            raise ValueError(f"{name} takes {spec.size_px} px frames only (learned position "
                             f"embeddings), got --frame-size-px {size_px}")
        encoders.append(BackboneEncoder(
            backbone, trainable=trainable, chunk_windows=config.chunk_windows,
            grad_checkpoint=checkpointing, train_batchnorm=config.train_batchnorm,
        ))
        streams.append(StreamPixels(spec.clip_frames(config.frames_per_clip), size_px,
                                    round(size_px * spec.resize_px[0] / spec.size_px)))
    torch.manual_seed(config.seed)
    head_args = {"in_dim": [e.dim for e in encoders], "num_outputs": num_outputs,
                 **(config.head_kwargs if head_kwargs is None else head_kwargs)}
    try:
        head = create_head(config.head, **head_args)
    except TypeError as err:
        raise ValueError(f"head {config.head!r} rejected its arguments ({err}); check "
                         "--head-kwarg") from err
    return PixelModel(encoders, head), streams, head_args


def task_videos(catalog: Catalog, task_name: str, log=print) -> dict[str, tuple]:
    """Per split, ``(video_ids, paths, encoded targets)`` of the videos labelled for the task.

    Raises:
        KeyError: no such task. ValueError: no label column, or no labelled train video.
    """
    from heads.data import encode_labels

    task = catalog.task(task_name)
    if catalog.labels is None or task.name not in catalog.labels.columns:
        raise ValueError(f"catalog {catalog.name!r} has no label column for task {task.name!r}")
    labels = dict(zip(catalog.labels["video_id"].to_list(), catalog.labels[task.name].to_list()))
    out = {}
    for split in SPLITS:
        rows = catalog.split(split)
        pairs = [(v, p) for v, p in zip(rows["video_id"], rows["path"])
                 if labels.get(v) is not None]
        ids, paths = [v for v, _ in pairs], [p for _, p in pairs]
        out[split] = (ids, paths, encode_labels(task, ids, [labels[v] for v in ids]))
    log(f"task {task.name} ({task.kind}): " + ", ".join(
        f"{s} {len(out[s][0])}" for s in SPLITS) + " labelled videos")
    if not out["train"][0]:
        raise ValueError(f"no labelled train video for task {task.name!r} in catalog "
                         f"{catalog.name!r}")
    return out


def check_init_source(config: FinetuneConfig, checkpoint: dict) -> None:
    """Check, before building anything, that the ``--init-from`` run trained the same head on
    features of the same backbones (a ``conv3d_stem`` stream accepts any: it has no cached
    counterpart).

    Raises:
        ValueError: another head or other backbones; the message names ``--init-from``.
    """
    where = f"--init-from {config.init_from}"
    if checkpoint["head"] != config.head:
        raise ValueError(f"{where}: that run trained head {checkpoint['head']!r}, this run builds "
                         f"{config.head!r}; pass --head {checkpoint['head']}")
    if "encoders" in checkpoint:
        sources = [e["name"] for e in checkpoint["encoders"]]
    else:
        sources = [fs.get("backbone") for fs in checkpoint.get("feature_sets", [])]
    mine = list(config.encoders)
    clash = [(a, b) for a, b in zip(sources, mine) if a != b and b != STEM]
    if len(sources) != len(mine) or clash:
        raise ValueError(f"{where}: that head read features of {sources}, this run's streams "
                         f"come from {mine}; the head's weights would meet other features")


def init_head_from(model: PixelModel, config: FinetuneConfig, checkpoint: dict) -> bool:
    """Load the head weights of ``checkpoint`` (a ``heads train`` or ``heads finetune`` run)
    into ``model``; also its standardiser unless a stream is a ``conv3d_stem``.

    Returns:
        Whether the standardiser was taken over (else it is still to be fitted).

    Raises:
        ValueError: another head or backbones (:func:`check_init_source`), or head tensors of
            other shapes; the message names ``--init-from`` and the tensors that differ.
    """
    check_init_source(config, checkpoint)
    where = f"--init-from {config.init_from}"
    mine = list(config.encoders)
    want = model.head.state_dict()
    got = checkpoint["model"]
    bad = sorted(
        f"{k} {tuple(got[k].shape) if k in got else 'missing'} vs {tuple(v.shape)}"
        for k, v in want.items() if k not in got or got[k].shape != v.shape
    ) + sorted(f"{k} unexpected" for k in got if k not in want)
    if bad:
        raise ValueError(
            f"{where}: the checkpoint's head does not fit this head ({len(bad)} tensors differ: "
            f"{'; '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}); build the same head "
            f"(its head_args: {checkpoint['head_args']})"
        )
    model.head.load_state_dict(got)
    if STEM in mine or "standardizer" not in checkpoint:
        return False
    from heads.data import Standardizer

    model.set_standardizer(Standardizer.from_state_dict(checkpoint["standardizer"]))
    return True


def load_checkpoint(path: str | Path) -> dict:
    """The ``checkpoint.pt`` of a run directory (or the file itself), on the CPU.

    Raises:
        FileNotFoundError: no checkpoint there.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass a run directory of `heads train` "
                                "or `heads finetune`")
    return torch.load(path, map_location="cpu", weights_only=True)

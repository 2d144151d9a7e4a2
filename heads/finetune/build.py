"""The build step of ``heads finetune`` (:mod:`heads.finetune.recipe`): the encoders + head
of a resolved config, the per-split labelled videos, and the ``--init-from`` head weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from catalogs.base import SPLITS, Catalog
from heads.finetune.clips import StreamPixels
from heads.finetune.config import FinetuneConfig
from heads.finetune.models import (
    STAT_EMBEDDING,
    STEM,
    BackboneEncoder,
    Conv3dStem,
    PixelModel,
    STATEncoder,
)

STAT_MODEL = "stat"  # the paper's STAT from pixels (heads.models.stat), not a cached-feature head
# STAT arguments the config sets (--num-frames, --frame-size-px), not --head-kwarg.
_STAT_FROM_CONFIG = ("num_frames", "frame_size_px", "num_classes")


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

    if config.head == STAT_MODEL or STAT_EMBEDDING in config.encoders:
        return build_stat(config, num_outputs=num_outputs, checkpointing=checkpointing,
                          head_kwargs=head_kwargs)
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
        if getattr(head, "uses_token_times", False):
            # End-to-end batches carry no token times: such a head is built with the arguments
            # that make it do without (longformer: positions=token_index), unless the user
            # asked for the times explicitly.
            off = dict(head.without_token_times)
            if set(off) & set(head_args):
                raise ValueError(f"head {config.head!r} with {head_args} needs token times, "
                                 f"which end-to-end batches do not carry; pass --head-kwarg "
                                 + " ".join(f"{k}={v}" for k, v in off.items()))
            head_args.update(off)
            head = create_head(config.head, **head_args)
    except TypeError as err:
        raise ValueError(f"head {config.head!r} rejected its arguments ({err}); check "
                         "--head-kwarg") from err
    return PixelModel(encoders, head), streams, head_args


def build_stat(config: FinetuneConfig, *, num_outputs: int, checkpointing: bool,
               head_kwargs: dict | None = None) -> tuple[PixelModel, list[StreamPixels], dict]:
    """The paper's STAT (:class:`heads.models.stat.STAT`) as a :class:`PixelModel`: its token
    embedding block is the encoder (``stat_embedding``), the rest of it the head.

    The clip is ``config.num_frames`` frames (T) of ``frame_size_px`` px (default 224, decoded
    at a 256 px short side for 224, as the paper); ``head_kwargs`` are STAT's other arguments.

    Returns:
        ``(model, streams, head_args)`` as :func:`build_model`.

    Raises:
        ValueError: head ``stat`` without the ``stat_embedding`` encoder alone (or the other
            way round), STAT arguments the flags set, or arguments STAT rejects.
    """
    from heads.models.stat import STAT

    if config.head != STAT_MODEL or tuple(config.encoders) != (STAT_EMBEDDING,):
        raise ValueError(f"the paper's STAT is head {STAT_MODEL!r} on its own token embedding, "
                         f"one stream --encoder {STAT_EMBEDDING}; got head {config.head!r} on "
                         f"{', '.join(config.encoders)} (a patch-token head on a stem: "
                         f"--head stat_cached --encoder {STEM})")
    kwargs = dict(config.head_kwargs if head_kwargs is None else head_kwargs)
    fixed = sorted(set(kwargs) & set(_STAT_FROM_CONFIG))
    if fixed:
        raise ValueError(f"--head-kwarg {', '.join(fixed)}: set by the run (--num-frames, "
                         "--frame-size-px, the task's classes), not a head argument")
    size_px = config.frame_size_px or 224
    torch.manual_seed(config.seed)
    try:
        model = STAT(num_classes=num_outputs, num_frames=config.num_frames,
                     frame_size_px=size_px, **kwargs)
    except TypeError as err:
        raise ValueError(f"STAT rejected its arguments ({err}); check --head-kwarg") from err
    encoder = STATEncoder(model.embedding, trainable=STAT_EMBEDDING in config.trainable,
                          grad_checkpoint=checkpointing)
    head_args = {"in_dim": [encoder.dim], "num_outputs": num_outputs, **kwargs}
    stream = StreamPixels(1, size_px, round(size_px * 256 / 224))  # short side 256 for 224
    return PixelModel([encoder], model.trunk), [stream], head_args


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
    into ``model``; also its standardiser unless a stream is a ``conv3d_stem``. (For a ``stat``
    run the checkpoint must be a ``stat`` finetune run, which holds the whole model but the
    token embedding: the embedding's weights are not carried over.)

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
    from heads.runs import read_checkpoint

    # A damaged file (empty, truncated, foreign) is a one-line ValueError naming it.
    return read_checkpoint(path, required=("head", "head_args", "model", "config"))

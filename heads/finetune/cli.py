"""``heads finetune``: the end-to-end command (registered on the ``heads`` app in
:mod:`heads.cli`).

A command of its own rather than a ``heads train --end-to-end`` flag: its options (backbones,
weights, frame sizes, decoding workers, precision, checkpointing, ``--init-from``) and those of
cached-feature training (store, feature sets) do not overlap, so one command holding both would
leave half its flags meaningless in either mode. Thin: parse, build a
:class:`heads.finetune.config.FinetuneConfig`, call :func:`heads.finetune.recipe.finetune`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from heads import cli_common as shared
from heads.cli_common import parse_key_values, user_errors

# The options whose help would not fit on the parameter's line.
Preset = Annotated[str, typer.Option(
    help="stan_small (train the 2D CNN, stop-gradient on the 3D one), stan_large (train both), "
    "vtn (2D CNN + longformer), stat (the paper's STAT from pixels; --head-kwarg t_o=5 / 7 for "
    "--num-frames 32 / 64).")]
Encoder = Annotated[list[str] | None, typer.Option(
    help="Encoder per stream, in the head's order: a backbone (`pipeline backbones`), "
    "conv3d_stem or stat_embedding. Default: the preset's.")]
Trainable = Annotated[list[str] | None, typer.Option(
    help="Encoder to back-propagate into, repeatable; `none` freezes all. Default: the preset's.")]
Weights = Annotated[list[str] | None, typer.Option(
    help="default (pretrained; the default) | none (seeded random init) | PATH | BACKBONE=SPEC "
    "(repeatable), as for `pipeline extract`.")]
TestViews = Annotated[str | None, typer.Option(
    help="Val/test views TEMPORALxSPATIAL, averaged (e.g. 5x1, 3x3): temporal views sample each "
    "segment at (k + 0.5)/K of it, spatial ones crop along the long side; each view costs one "
    "view's encoding. Default: the preset's (stat: 5x1, 3x3 from 64 frames; else 1x1).")]
GradCheckpoint = Annotated[bool | None, typer.Option(
    "--grad-checkpoint/--no-grad-checkpoint",
    help="Recompute encoder activations in backward (default: on for CUDA).")]
InitFrom = Annotated[str | None, typer.Option(
    help="Run directory of `heads train` (cached features): its head's weights and feature "
    "standardisation carry over.")]
PRESET_DEFAULT = " Default: the preset's (stat: DeiT's {}), else {}."
Lr = Annotated[float | None, typer.Option(help="Peak AdamW learning rate of the head."
                                          + PRESET_DEFAULT.format("5e-4 × batch / 512", "1e-4"))]
WeightDecay = Annotated[float | None, typer.Option(
    help="AdamW weight decay (matrices only)." + PRESET_DEFAULT.format("0.05", "0.01"))]
WarmupEpochs = Annotated[int | None, typer.Option(
    help="Linear warm-up epochs." + PRESET_DEFAULT.format("5", "1"))]
LabelSmoothing = Annotated[float | None, typer.Option(
    help="Label smoothing of the training loss (classification)."
    + PRESET_DEFAULT.format("0.1", "0"))]




def finetune(
    task: Annotated[str, typer.Option(help="Task of the catalog, e.g. most_screen_time (demo).")],
    preset: Preset = "stan_small",
    dataset: shared.Dataset = "demo",
    data_root: shared.DataRoot = None,
    variant: shared.Variant = None,
    catalog_option: shared.CatalogOption = None,
    head: Annotated[str | None, typer.Option(help="Head (default: the preset's).")] = None,
    encoder: Encoder = None,
    trainable: Trainable = None,
    weights: Weights = None,
    weights_seed: Annotated[int, typer.Option(help="Seed of --weights none.")] = 0,
    plan: shared.Plan = None,
    num_frames: Annotated[int | None, typer.Option(help="uniform / full plan: frames per video "
                                                        "(default 16 / 250).")] = None,
    frames_per_clip: Annotated[int, typer.Option(help="scene plan: frames per 3D clip.")] = 12,
    frame_size_px: Annotated[
        int | None, typer.Option(help="Crop side for every stream (default: each backbone's).")
    ] = None,
    stem_dim: Annotated[int, typer.Option(help="conv3d_stem token width.")] = 768,
    stem_patch_px: Annotated[int, typer.Option(help="conv3d_stem patch side, pixels.")] = 16,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips in training.")] = True,
    test_views: TestViews = None,
    epochs: shared.Epochs = 10,
    batch_size: shared.BatchSize = 2,
    lr: Lr = None,
    backbone_lr_scale: Annotated[float, typer.Option(
        help="Pretrained backbones train at lr × this.")] = 0.1,
    weight_decay: WeightDecay = None,
    schedule: shared.Schedule = "warmup_cosine",
    optimizer: shared.Optimizer = "adamw",
    momentum: shared.Momentum = 0.9,
    nesterov: shared.Nesterov = False,
    lr_milestone: shared.LrMilestones = None,
    lr_gamma: shared.LrGamma = 0.1,
    warmup_epochs: WarmupEpochs = None,
    label_smoothing: LabelSmoothing = None,
    grad_clip: shared.GradClip = 1.0,
    patience: shared.Patience = 5,
    seed: shared.Seed = 0,
    device: shared.Device = "auto",
    precision: shared.Precision = "auto",
    data_parallel: shared.DataParallel = 1,
    cpus_per_worker: shared.CpusPerWorker = 1.0,
    max_failures: shared.MaxFailures = 0,
    sync_batchnorm: shared.SyncBatchnorm = False,
    address: shared.Address = None,
    grad_checkpoint: GradCheckpoint = None,
    chunk_windows: Annotated[int, typer.Option(help="Windows per encoder forward.")] = 64,
    train_batchnorm: Annotated[
        bool, typer.Option(help="Update BatchNorm statistics of trainable backbones.")
    ] = False,
    num_workers: Annotated[int, typer.Option(help="DataLoader workers decoding videos.")] = 2,
    cache_decoded: Annotated[
        bool, typer.Option(help="Keep decoded windows in RAM across epochs (--num-workers 0).")
    ] = False,
    init_from: InitFrom = None,
    runs_dir: shared.RunsDir = "runs",
    head_kwarg: shared.HeadKwarg = None,
) -> None:
    """Train backbone(s) and head together from frames; print per-split metrics and baseline."""
    from heads.finetune.config import FinetuneConfig
    from heads.finetune.recipe import finetune as run_finetune
    from pipeline.weights import WeightsError

    from heads.parallel import DataParallelError

    with user_errors(WeightsError, DataParallelError):
        shared.check_device(device, data_parallel=data_parallel)
        catalog_options = parse_key_values(catalog_option, "--catalog-option")
        if variant is not None:
            catalog_options["variant"] = variant
        if trainable is not None:
            trainable = () if [t.lower() for t in trainable] == ["none"] else tuple(trainable)
        run_finetune(FinetuneConfig(
            task=task, preset=preset, dataset=dataset, data_root=data_root,
            catalog_options=catalog_options, head=head, encoders=tuple(encoder or ()),
            trainable=trainable, weights=tuple(weights or ("default",)), weights_seed=weights_seed,
            plan=plan, num_frames=num_frames, frames_per_clip=frames_per_clip,
            frame_size_px=frame_size_px, stem_dim=stem_dim, stem_patch_px=stem_patch_px,
            flip=flip, test_views=parse_views(test_views), epochs=epochs, batch_size=batch_size,
            lr=lr, backbone_lr_scale=backbone_lr_scale, weight_decay=weight_decay,
            schedule=schedule, optimizer=optimizer, momentum=momentum, nesterov=nesterov,
            lr_milestones=tuple(lr_milestone or ()), lr_gamma=lr_gamma,
            warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
            grad_clip=grad_clip, patience=patience, seed=seed,
            device=device, precision=precision, data_parallel=data_parallel,
            cpus_per_worker=cpus_per_worker, max_failures=max_failures,
            sync_batchnorm=sync_batchnorm, grad_checkpoint=grad_checkpoint,
            chunk_windows=chunk_windows, train_batchnorm=train_batchnorm, num_workers=num_workers,
            cache_decoded=cache_decoded, init_from=init_from, runs_dir=runs_dir,
            head_kwargs=parse_key_values(head_kwarg, "--head-kwarg"),
        ), log=typer.echo, address=address)


def parse_views(text: str | None) -> tuple[int, int] | None:
    """``--test-views 5x1`` as ``(5, 1)`` (``×`` or ``x``); None stays None (the preset's).

    Raises:
        typer.BadParameter: not two positive counts.
    """
    if text is None:
        return None
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise typer.BadParameter(f"--test-views {text!r}: give TEMPORALxSPATIAL, two counts "
                                 ">= 1, e.g. 5x1 or 3x3")
    return int(parts[0]), int(parts[1])

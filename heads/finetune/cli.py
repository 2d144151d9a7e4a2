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


def finetune(
    task: Annotated[str, typer.Option(help="Task of the catalog, e.g. most_screen_time (demo).")],
    preset: Annotated[
        str,
        typer.Option(help="stan_small (train the 2D CNN, stop-gradient on the 3D one), "
                     "stan_large (train both), vtn (2D CNN + longformer), stat (the paper's "
                     "STAT from pixels; --head-kwarg t_o=5 / 7 for --num-frames 32 / 64)."),
    ] = "stan_small",
    dataset: shared.Dataset = "demo",
    data_root: shared.DataRoot = None,
    variant: shared.Variant = None,
    catalog_option: shared.CatalogOption = None,
    head: Annotated[str | None, typer.Option(help="Head (default: the preset's).")] = None,
    encoder: Annotated[
        list[str] | None,
        typer.Option(help="Encoder per stream, in the head's order: a backbone (`pipeline "
                     "backbones`), conv3d_stem or stat_embedding. Default: the preset's."),
    ] = None,
    trainable: Annotated[
        list[str] | None,
        typer.Option(help="Encoder to back-propagate into, repeatable; `none` freezes all. "
                     "Default: the preset's."),
    ] = None,
    weights: Annotated[
        list[str] | None,
        typer.Option(help="default (pretrained; the default) | none (seeded random init) | PATH "
                     "| BACKBONE=SPEC (repeatable), as for `pipeline extract`."),
    ] = None,
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
    epochs: shared.Epochs = 10,
    batch_size: shared.BatchSize = 2,
    lr: shared.Lr = 1e-4,
    backbone_lr_scale: Annotated[float, typer.Option(
        help="Pretrained backbones train at lr × this.")] = 0.1,
    weight_decay: shared.WeightDecay = 0.01,
    schedule: shared.Schedule = "warmup_cosine",
    warmup_epochs: shared.WarmupEpochs = 1,
    grad_clip: shared.GradClip = 1.0,
    patience: shared.Patience = 5,
    seed: shared.Seed = 0,
    device: shared.Device = "cpu",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA where supported, else fp32), fp32, bf16, fp16.")
    ] = "auto",
    grad_checkpoint: Annotated[
        bool | None,
        typer.Option("--grad-checkpoint/--no-grad-checkpoint",
                     help="Recompute encoder activations in backward (default: on for CUDA)."),
    ] = None,
    chunk_windows: Annotated[int, typer.Option(help="Windows per encoder forward.")] = 64,
    train_batchnorm: Annotated[
        bool, typer.Option(help="Update BatchNorm statistics of trainable backbones.")
    ] = False,
    num_workers: Annotated[int, typer.Option(help="DataLoader workers decoding videos.")] = 2,
    cache_decoded: Annotated[
        bool, typer.Option(help="Keep decoded windows in RAM across epochs (--num-workers 0).")
    ] = False,
    init_from: Annotated[
        str | None,
        typer.Option(help="Run directory of `heads train` (cached features): its head's "
                     "weights and feature standardisation carry over."),
    ] = None,
    runs_dir: shared.RunsDir = "runs",
    head_kwarg: shared.HeadKwarg = None,
) -> None:
    """Train backbone(s) and head together from frames; print per-split metrics and baseline."""
    from heads.finetune.config import FinetuneConfig
    from heads.finetune.recipe import finetune as run_finetune
    from pipeline.weights import WeightsError

    with user_errors(WeightsError):
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
            flip=flip, epochs=epochs, batch_size=batch_size, lr=lr,
            backbone_lr_scale=backbone_lr_scale, weight_decay=weight_decay, schedule=schedule,
            warmup_epochs=warmup_epochs, grad_clip=grad_clip, patience=patience, seed=seed,
            device=device, precision=precision, grad_checkpoint=grad_checkpoint,
            chunk_windows=chunk_windows, train_batchnorm=train_batchnorm, num_workers=num_workers,
            cache_decoded=cache_decoded, init_from=init_from, runs_dir=runs_dir,
            head_kwargs=parse_key_values(head_kwarg, "--head-kwarg"),
        ), log=typer.echo)

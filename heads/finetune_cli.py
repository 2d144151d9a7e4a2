"""``heads finetune``: the end-to-end command (registered on the ``heads`` app in
:mod:`heads.cli`).

A command of its own rather than a ``heads train --end-to-end`` flag: its options (backbones,
weights, frame sizes, decoding workers, precision, checkpointing, ``--init-from``) and those of
cached-feature training (store, feature sets) do not overlap, so one command holding both would
leave half its flags meaningless in either mode. Thin: parse, build a
:class:`heads.finetune_setup.FinetuneConfig`, call :func:`heads.finetune.finetune`.
"""

from __future__ import annotations

from typing import Annotated

import typer


def finetune(
    task: Annotated[str, typer.Option(help="Task of the catalog, e.g. most_screen_time (demo).")],
    preset: Annotated[
        str,
        typer.Option(help="stan_small (train the 2D CNN, stop-gradient on the 3D one), "
                     "stan_large (train both), vtn (2D CNN + longformer), stat (3D-conv stem + "
                     "STAT, from scratch)."),
    ] = "stan_small",
    dataset: Annotated[str, typer.Option(help="Catalog key, e.g. demo or folder.")] = "demo",
    data_root: Annotated[
        str | None, typer.Option(help="Catalog root directory (default: data/<dataset>).")
    ] = None,
    variant: Annotated[str | None, typer.Option(help="Catalog variant (demo: small).")] = None,
    catalog_option: Annotated[
        list[str] | None, typer.Option(help="Catalog option as key=value, repeatable.")
    ] = None,
    head: Annotated[str | None, typer.Option(help="Head (default: the preset's).")] = None,
    encoder: Annotated[
        list[str] | None,
        typer.Option(help="Encoder per stream, in the head's order: a backbone (`pipeline "
                     "backbones`) or conv3d_stem. Default: the preset's."),
    ] = None,
    trainable: Annotated[
        list[str] | None,
        typer.Option(help="Encoder to back-propagate into, repeatable; `none` freezes all. "
                     "Default: the preset's."),
    ] = None,
    weights: Annotated[
        list[str] | None,
        typer.Option(help="none | default | PATH | BACKBONE=SPEC (repeatable), as for "
                     "`pipeline extract`."),
    ] = None,
    weights_seed: Annotated[int, typer.Option(help="Seed of --weights none.")] = 0,
    plan: Annotated[str | None, typer.Option(help="Sampling plan (default: the preset's).")] = None,
    num_frames: Annotated[int, typer.Option(help="uniform plan: frames per video.")] = 16,
    frames_per_clip: Annotated[int, typer.Option(help="scene plan: frames per 3D clip.")] = 12,
    frame_size_px: Annotated[
        int | None, typer.Option(help="Crop side for every stream (default: each backbone's).")
    ] = None,
    stem_dim: Annotated[int, typer.Option(help="conv3d_stem token width.")] = 768,
    stem_patch_px: Annotated[int, typer.Option(help="conv3d_stem patch side, pixels.")] = 16,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips in training.")] = True,
    epochs: Annotated[int, typer.Option(help="Maximum number of epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Videos per step.")] = 2,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the head (AdamW).")] = 1e-4,
    backbone_lr_scale: Annotated[
        float, typer.Option(help="Pretrained backbones train at lr × this.")
    ] = 0.1,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.01,
    warmup_epochs: Annotated[int, typer.Option(help="Linear warm-up epochs.")] = 1,
    patience: Annotated[int, typer.Option(help="Early-stopping patience; 0 = off.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for init, augmentation and shuffling.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
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
    runs_dir: Annotated[str, typer.Option(help="Where run directories are written.")] = "runs",
    head_kwarg: Annotated[
        list[str] | None, typer.Option(help="Head argument as key=value, repeatable.")
    ] = None,
) -> None:
    """Train backbone(s) and head together from decoded frames (end-to-end) and print per-split
    metrics next to the majority baseline."""
    from heads.cli_common import _fail, parse_key_values
    from heads.finetune import finetune as run_finetune
    from heads.finetune_setup import FinetuneConfig
    from pipeline.weights import WeightsError

    try:
        catalog_options = parse_key_values(catalog_option, "--catalog-option")
        if variant is not None:
            catalog_options["variant"] = variant
        if trainable is not None and [t.lower() for t in trainable] == ["none"]:
            trainable = []
        config = FinetuneConfig(
            task=task, preset=preset, dataset=dataset, data_root=data_root,
            catalog_options=catalog_options, head=head, encoders=tuple(encoder or ()),
            trainable=None if trainable is None else tuple(trainable),
            weights=tuple(weights or ("none",)), weights_seed=weights_seed, plan=plan,
            num_frames=num_frames, frames_per_clip=frames_per_clip, frame_size_px=frame_size_px,
            stem_dim=stem_dim, stem_patch_px=stem_patch_px, flip=flip, epochs=epochs,
            batch_size=batch_size, lr=lr, backbone_lr_scale=backbone_lr_scale,
            weight_decay=weight_decay, warmup_epochs=warmup_epochs, patience=patience,
            seed=seed, device=device, precision=precision, grad_checkpoint=grad_checkpoint,
            chunk_windows=chunk_windows, train_batchnorm=train_batchnorm,
            num_workers=num_workers, cache_decoded=cache_decoded, init_from=init_from,
            runs_dir=runs_dir, head_kwargs=parse_key_values(head_kwarg, "--head-kwarg"),
        )
        run_finetune(config, log=typer.echo)
    except (KeyError, ValueError, FileNotFoundError, WeightsError) as err:
        _fail(err.args[0] if isinstance(err, KeyError) and err.args else str(err))

"""Flag parsing, error reporting and the options shared by the ``heads`` commands
(``heads/cli.py`` and ``heads/finetune/cli.py``)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer

# The options of the fields both training commands share (heads.config.RunConfig); each command
# gives the default where it declares the parameter (`heads train`: None = from the files).
Dataset = Annotated[str | None, typer.Option(help="Catalog key, e.g. demo or folder.")]
DataRoot = Annotated[
    str | None,
    typer.Option(help="Catalog root directory (default: data/<dataset>, and for a variant "
                 "data/<dataset>-<variant>)."),
]
Variant = Annotated[
    str | None, typer.Option(help="Catalog variant, as given to `pipeline extract` (demo: small).")
]
CatalogOption = Annotated[
    list[str] | None,
    typer.Option(metavar="KEY=VALUE",
                 help="Catalog option as key=value, repeatable (folder: labels=FILE.csv)."),
]
Plan = Annotated[
    str | None, typer.Option(help="Sampling plan (default: the head's or the preset's).")
]
RunsDir = Annotated[str | None, typer.Option(help="Where run directories are written.")]
Epochs = Annotated[int | None, typer.Option(help="Maximum number of epochs.")]
BatchSize = Annotated[int | None, typer.Option(help="Videos per step.")]
Lr = Annotated[float | None, typer.Option(help="Peak learning rate (AdamW) of the head.")]
WeightDecay = Annotated[float | None, typer.Option(help="AdamW weight decay (matrices only).")]
Schedule = Annotated[
    str | None,
    typer.Option(help="Learning-rate schedule: warmup_cosine (linear warm-up, then cosine "
                 "decay to 0; default) or steps (the lr times --lr-gamma at each "
                 "--lr-milestone epoch)."),
]
WarmupEpochs = Annotated[int | None, typer.Option(help="Linear warm-up epochs.")]
Optimizer = Annotated[str | None, typer.Option(
    help="adamw (default) or sgd (VTN §4.1: SGD, momentum 0.9).")]
Momentum = Annotated[float | None, typer.Option(help="sgd: momentum (default 0.9).")]
Nesterov = Annotated[bool | None, typer.Option(
    "--nesterov/--no-nesterov", help="sgd: Nesterov momentum (VTN's official config).")]
LrMilestones = Annotated[list[int] | None, typer.Option(
    help="steps schedule: an epoch at which the lr is multiplied by --lr-gamma, repeatable "
         "(VTN's ViT-B: 13 and 24).")]
LrGamma = Annotated[float | None, typer.Option(help="steps schedule: the factor (default 0.1).")]
GradClip = Annotated[float | None, typer.Option(help="Max global gradient norm.")]
Patience = Annotated[int | None, typer.Option(help="Early-stopping patience in epochs; 0 = off.")]
Seed = Annotated[int | None, typer.Option(help="Seed for init, dropout/augmentation, shuffling.")]
Device = Annotated[str | None, typer.Option(
    help="auto (a CUDA GPU when torch sees one, else the CPU; the default), cpu, cuda or "
         "cuda:N. Data-parallel workers take the GPUs Ray gives them.")]
Precision = Annotated[str | None, typer.Option(
    help="Autocast: auto (bf16 on a CUDA GPU that has it, else fp32; the default), fp32, bf16, "
         "fp16 (with loss scaling).")]
DataParallel = Annotated[int | None, typer.Option(
    help="Data-parallel workers (Ray Train, DDP: nccl on GPUs, gloo on CPUs), on this machine "
         "or the Ray cluster of --address / RAY_ADDRESS; --batch-size is per worker, the "
         "global batch is batch size x workers. Default 1: train in this process.")]
CpusPerWorker = Annotated[float | None, typer.Option(
    help="CPUs Ray reserves per data-parallel worker (its torch threads follow; default 1).")]
MaxFailures = Annotated[int | None, typer.Option(
    help="Data-parallel: restarts of the workers after one fails, each resuming from the last "
         "checkpoint (default 0: the run fails naming the worker).")]
SyncBatchnorm = Annotated[bool | None, typer.Option(
    "--sync-batchnorm/--no-sync-batchnorm",
    help="Data-parallel: BatchNorm statistics over the global batch (SyncBatchNorm) in "
         "backbones that train their BatchNorm (default off).")]
Address = Annotated[str | None, typer.Option(
    help="Ray cluster address for --data-parallel (default: RAY_ADDRESS, else a local Ray).")]
HeadKwarg = Annotated[
    list[str] | None,
    typer.Option(metavar="KEY=VALUE",
                 help="Head argument as key=value, repeatable (e.g. d_model=128)."),
]


def parse_key_values(items: list[str] | None, flag: str) -> dict:
    """``key=value`` strings as a dict; values parsed as JSON when they are JSON (``64``,
    ``0.5``, ``true``, ``[1, 2]``), else kept as strings.

    Args:
        items: The repeated flag's values.
        flag: The flag's name, for error messages.

    Raises:
        typer.BadParameter: an item has no ``=`` or an empty key.
    """
    kwargs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(
                f"{item!r} is not key=value (e.g. {flag} name=value)", param_hint=flag
            )
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    return kwargs


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def check_device(device: str | None, *, data_parallel: int | None = None) -> None:
    """Raise ``ValueError`` when ``--device`` is not a device name, or names a GPU torch
    cannot see here (checked before any data is loaded; a data-parallel run's workers get
    their GPUs from the Ray cluster instead, checked when it starts)."""
    if device is None:
        return
    from heads.runtime import check_device_name, resolve_device

    check_device_name(device)
    if device != "auto" and (data_parallel or 1) == 1:
        resolve_device(device)


def check_store(store: str | None) -> None:
    """Raise ``ValueError`` naming ``--store`` when its URL's filesystem package is missing
    (``s3://`` without s3fs) or its scheme is unknown; local paths pass."""
    from pipeline.cli import check_store_url

    check_store_url(store)


def _no_cuda(err: BaseException) -> bool:
    """``err`` is torch's refusal to use CUDA on a machine without it (a device set in a config
    file, not by the flag, reaches torch before any check)."""
    import torch

    text = str(err)
    return not torch.cuda.is_available() and any(
        s in text for s in ("NVIDIA driver", "CUDA GPUs are available", "not compiled with CUDA"))


def _from_fsspec(err: BaseException) -> bool:
    """``err`` was raised inside fsspec (its "Install s3fs to access S3" for a URL whose
    filesystem package is missing)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "fsspec" in tb.tb_frame.f_code.co_filename


@contextmanager
def user_errors(*extra: type[Exception]):
    """Bad input (unknown names, missing files or feature sets, bad values, and the ``extra``
    error types, e.g. missing backbone weights; a CUDA device on a machine without one; a store
    URL whose filesystem package is missing) → a red message and exit code 2 instead of a
    traceback."""
    try:
        yield
    except (KeyError, ValueError, FileNotFoundError, FileExistsError, *extra) as err:
        # KeyError's str() quotes its message; show the message itself.
        _fail(err.args[0] if isinstance(err, KeyError) and err.args else str(err))
    except (RuntimeError, AssertionError) as err:
        if not _no_cuda(err):
            raise
        _fail("device cuda (from the flags or a config file): torch sees no CUDA GPU here; use "
              "--device cpu, or --device auto to take a GPU only where there is one")
    except ImportError as err:
        if not _from_fsspec(err):
            raise
        _fail(f"{err}: the store URL's filesystem package is missing (pip install it on this "
              "machine and on every Ray node)")

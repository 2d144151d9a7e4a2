"""Run directories of ``heads train`` and ``heads finetune``: create, write, read back, list.

Layout of ``<runs_dir>/<UTC time>-<head>-<task>/`` (``heads finetune``: ``-<preset>-`` and its
own ``config.json`` fields, see :mod:`heads.finetune.recipe`):

- ``config.json``: ``config`` (the resolved :class:`heads.config.TrainConfig`, including the
  ``config_files`` it came from), ``catalog`` (its name), ``task`` (name, kind, classes) and
  ``feature_sets`` (name, backbone, plan, token kind, dim and fingerprint of each, in stream
  order: the feature-set fingerprint that pins the inputs), ``argv`` (the command line) and,
  after ``heads train --resume``, ``resumes`` (per resumption: its command line, the epoch it
  continued after, the store, the UTC time and the environment);
- ``environment.json``: Python, platform, package versions, the git commit (and whether the
  tree had uncommitted changes), torch's CUDA, the host;
- ``checkpoint.pt`` (best on val) and ``checkpoint_last.pt`` (last epoch, rewritten each epoch):
  ``model``, ``head`` and ``head_args`` (the ``create_head`` arguments that rebuild it),
  ``standardizer`` (per-stream mean/std), ``target_norm`` (regression target mean/std, else
  null), ``config``, ``task``, ``feature_sets``, ``epoch``, and under ``resume`` what the
  training loop needs to continue the run (:meth:`heads.loop.Trainer.restore`: its weights,
  optimiser, scheduler, loss scaler, RNG states, history and best so far); loadable with
  ``torch.load(weights_only=True)``. Both are written under a temporary name and renamed, so a
  killed run leaves whole files (so are the JSON files, :func:`replace_atomically`); a damaged
  or foreign file is a one-line error naming it (:func:`read_checkpoint`);
- ``metrics.json``: ``num_videos``, ``metrics``, ``baseline`` and ``details`` (confusion matrix
  or per-class AP) per split, ``num_dropped``, ``selection`` (metric, best epoch), ``seed`` and
  the per-epoch ``history``;
- ``predictions.parquet``: one row per video and split: ``video_id``, ``split``, ``target``,
  ``predicted`` (class name(s) or value) and the head's ``outputs`` (list of floats);
- ``curves.png``: loss and validation metric per epoch (matplotlib), the best epoch marked
  and the majority baseline's val metric drawn;
- ``tensorboard/``: the same scalars as TensorBoard event files (``tensorboard --logdir RUNS``),
  the loss of every step (``train/step_loss``) and the config as hyperparameters.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from catalogs.base import SPLITS
from heads.metrics import PRIMARY_METRIC
from heads.models import create_head

CHECKPOINTS = {"best": "checkpoint.pt", "last": "checkpoint_last.pt"}
# Distributions whose versions decide a run's numbers; recorded in environment.json.
PACKAGES = ("longvid", "torch", "numpy", "scikit-learn", "polars", "zarr", "ray", "torchvision")
# What every checkpoint of `heads train` and `heads finetune` holds (see the module docstring).
HEAD_FIELDS = ("head", "head_args", "model", "standardizer", "config", "task")
_RETRAIN = ("use the run's other checkpoint (--which best / last) or train it again with "
            "`heads train` / `heads finetune`")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def load_head(path: str | Path, *, which: str = "best") -> tuple[nn.Module, dict]:
    """Rebuild a trained head from a run directory or a checkpoint file.

    Args:
        path: A run directory, or a ``.pt`` file.
        which: For a run directory: ``best`` (``checkpoint.pt``) or ``last``
            (``checkpoint_last.pt``).

    Returns:
        ``(model, checkpoint)``: the model in eval mode with the weights, and the checkpoint
        dict (``standardizer``, ``target_norm``, ``config``, ``task``, ``feature_sets``, ...).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: ``which`` is neither ``best`` nor ``last``; the file is empty, truncated or
            not a checkpoint of a head (:func:`read_checkpoint`), or its weights do not fit the
            head it names.
    """
    path = Path(path)
    if which not in CHECKPOINTS:
        raise ValueError(f"which must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    if path.is_dir():
        path = path / CHECKPOINTS[which]
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass a run directory of `heads train`")
    checkpoint = read_checkpoint(path, required=HEAD_FIELDS)
    model = create_head(checkpoint["head"], **checkpoint["head_args"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:  # another head's weights under this head's name
        raise ValueError(f"checkpoint {path}: its weights do not fit head {checkpoint['head']!r} "
                         f"({_first_line(err)}); {_RETRAIN}") from None
    return model.eval(), checkpoint


def read_checkpoint(path: str | Path, *, required: Sequence[str] = HEAD_FIELDS) -> dict:
    """A checkpoint file's content on the CPU (``torch.load(weights_only=True)``), checked.

    Args:
        path: The ``.pt`` file.
        required: Top-level fields it must have (:data:`HEAD_FIELDS`; ``resume`` for
            :meth:`heads.loop.Trainer.restore`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty or truncated (a run killed while writing it, before
            checkpoints were written atomically; a partial copy), is not a torch checkpoint,
            or lacks ``required`` fields; one line naming the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass a run directory of `heads train`")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes: a run killed while writing it, "
                         f"or a failed copy); {_RETRAIN}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive, its index at the end
        raise ValueError(f"checkpoint {path} is truncated or not a torch checkpoint (no zip "
                         f"index at its end); {_RETRAIN}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # its long message suggests weights_only=False: never here
        raise ValueError(f"{path} holds objects other than tensors and plain values, so it is "
                         f"no checkpoint of this project; {_RETRAIN}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise ValueError(f"checkpoint {path} cannot be read, it is damaged "
                         f"({_first_line(err)}); {_RETRAIN}") from None
    missing = [f for f in required if f not in checkpoint] if isinstance(checkpoint, dict) \
        else list(required)
    if missing:
        what = type(checkpoint).__name__
        raise ValueError(f"{path} is not a checkpoint of `heads train` or `heads finetune` (a "
                         f"{what} without {', '.join(missing)}); pass a run directory those "
                         "commands wrote")
    return checkpoint


def format_table(results: dict) -> str:
    """Per-split metrics next to the majority baseline's primary metric, as aligned text."""
    metric_name = PRIMARY_METRIC[results["kind"]][0]
    names = sorted(
        {k for split in SPLITS for k in results["metrics"][split]},
        key=lambda k: (k != metric_name, k),  # the primary metric first
    )
    header = ["split", "videos", *names, f"baseline {metric_name}"]
    rows = [header]
    for split in SPLITS:
        metrics, baseline = results["metrics"][split], results["baseline"][split]
        rows.append(
            [split, str(results["num_videos"][split])]
            + [f"{metrics[n]:.4f}" if n in metrics else "-" for n in names]
            + [f"{baseline[metric_name]:.4f}" if metric_name in baseline else "-"]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def new_run_dir(runs_dir: Path, head: str, task: str) -> Path:
    """A fresh, empty ``<runs_dir>/<UTC time>-<head>-<task>`` directory (suffixed if taken)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{stamp}-{head}-{re.sub(r'[^A-Za-z0-9._-]+', '_', task)}"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        run_dir = runs_dir / (base if attempt == 0 else f"{base}-{attempt}")
        try:
            run_dir.mkdir()  # exclusive: two runs started in the same second get distinct dirs
            return run_dir
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a fresh run directory under {runs_dir}")


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """Write a file whole or not at all: ``write(tmp)`` fills a temporary file next to
    ``path``, which is flushed to disk and renamed over ``path`` (``os.replace``). A kill or a
    full disk mid-write leaves the previous ``path`` as it was; a failed write removes the
    temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: no two writers
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())  # the content is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """``text`` as ``path``, replaced atomically (:func:`replace_atomically`)."""
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def write_frame(frame: pl.DataFrame, path: str | Path) -> None:
    """A frame as CSV (``.csv``) or parquet (anything else), replaced atomically."""
    if str(path).endswith(".csv"):
        replace_atomically(path, frame.write_csv)
    else:
        replace_atomically(path, frame.write_parquet)


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """``torch.save`` of ``payload``, replaced atomically: a run killed while saving keeps its
    previous checkpoint."""
    replace_atomically(path, lambda tmp: torch.save(payload, tmp))


def write_json(path: Path, payload: dict) -> None:
    """``payload`` as indented JSON, replaced atomically; NaN and inf become null (strict JSON,
    e.g. for an mAP over a split without any positive label)."""

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    write_text(path, json.dumps(clean(payload), indent=2, default=str) + "\n")


def environment() -> dict:
    """What a run's numbers may depend on besides its config: interpreter, platform, package
    versions, the longvid git commit (``git_dirty`` when the tree had uncommitted changes),
    torch's CUDA and cuDNN, and the host."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                                  text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "packages": versions,
        "git_sha": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "num_threads": torch.get_num_threads(),
    }


class TrainingLog:
    """Scalars to TensorBoard event files (``torch.utils.tensorboard``): per epoch at step
    ``epoch``, the training loss of every optimiser step under ``train/step_loss`` at the global
    step, and the run's hyperparameters (the HParams tab).

    Args:
        log_dir: Directory of the event files.
        purge_step: A resumed run's first global step: events a killed run wrote from there on
            are hidden (``SummaryWriter(purge_step=...)``); None for a fresh run.
    """

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def add(self, record: dict) -> None:
        """Write every number of ``record`` (one :func:`heads.train.train` history entry) at
        step ``record["epoch"]``; ``train_loss`` is written as ``train/loss``, ``val_top1`` as
        ``val/top1``."""
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
        self.writer.flush()

    def add_step(self, step: int, loss: float) -> None:
        """One optimiser step's training loss at global ``step`` (1-based; flushed per epoch)."""
        if math.isfinite(loss):
            self.writer.add_scalar("train/step_loss", loss, step)

    def add_hparams(self, config: dict, metrics: dict[str, float]) -> None:
        """The run's config as hyperparameters next to its final ``metrics`` (tag → value), in
        these event files (``SummaryWriter.add_hparams`` would open a sub-run per call). Values
        other than numbers, strings and booleans (tuples, dicts, None) are written as text."""
        from torch.utils.tensorboard.summary import hparams

        plain = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)
                 for k, v in config.items()}
        metrics = {k: v for k, v in metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(v)}
        for summary in hparams(plain, metrics):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def plot_curves(history: list[dict], path: str | Path, *, title: str = "",
                best_epoch: int | None = None, baseline: dict[str, float] | None = None) -> None:
    """Training curves as a PNG, replaced atomically: train/val loss on the left, the val
    metric on the right, integer epochs on both x axes.

    Args:
        history: Per-epoch records (``epoch``, ``train_loss``, optional ``val_loss`` and one
            ``val_<metric>``).
        path: PNG file to write.
        title: Figure title.
        best_epoch: The selected epoch, marked on both panels; None marks none.
        baseline: History key → the majority baseline's value of it (e.g. ``{"val_top1":
            0.4}``), drawn as a dashed line on the metric panel; NaN or None values are left out.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe in workers
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    not_metrics = {"epoch", "train_loss", "val_loss", "lr"}
    metric_keys = sorted({k for r in history for k in r} - not_metrics)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(epochs, [r["train_loss"] for r in history], marker=".", label="train")
    if any("val_loss" in r for r in history):
        axes[0].plot(epochs, [_nan(r.get("val_loss")) for r in history], marker=".",
                     label="val")
    axes[0].set(xlabel="epoch", ylabel="loss")
    for key in metric_keys:
        axes[1].plot(epochs, [_nan(r.get(key)) for r in history], marker=".", label=key)
    for key, value in (baseline or {}).items():
        if value is not None and math.isfinite(value):
            axes[1].axhline(value, color="grey", linestyle="--", label=f"baseline {key}")
    axes[1].set(xlabel="epoch", ylabel="metric")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch is not None:
            ax.axvline(best_epoch, color="tab:red", linestyle=":", label=f"best (epoch "
                       f"{best_epoch})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    try:  # the temporary name has no .png suffix: the format is given
        replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def _nan(value) -> float:
    """A history value as a float for plotting: None (a metric undefined that epoch) is NaN."""
    return np.nan if value is None else value


def predictions_frame(
    task: dict, video_ids: dict[str, list[str]], outputs: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
) -> pl.DataFrame:
    """Per-video predictions of every split as one frame (``predictions.parquet``).

    Args:
        task: ``{"name", "kind", "classes"}``.
        video_ids: Split → video ids.
        outputs: Split → (N, K) or (N, 1) head outputs in target units.
        targets: Split → encoded targets (``heads.data.encode_labels``); may be empty for
            videos without labels (``heads predict``), then ``target`` is null.

    Returns:
        Columns ``video_id``, ``split``, ``target``, ``predicted``, ``outputs`` (list[f64]):
        class names (classification), lists of class names with logit > 0 (multilabel), or
        floats (regression).
    """
    kind, classes = task["kind"], task["classes"]

    def decode(row: np.ndarray, is_output: bool):
        if kind == "regression":
            return float(row.reshape(-1)[0])
        if kind == "classification":
            index = int(np.argmax(row)) if is_output else int(row)
            return classes[index]
        chosen = row > 0 if is_output else row > 0.5
        return [c for c, on in zip(classes, chosen) if on]

    rows = []
    for split, ids in video_ids.items():
        split_targets = targets.get(split)
        for i, video_id in enumerate(ids):
            out = np.asarray(outputs[split][i], dtype=np.float64)
            has_target = split_targets is not None and len(split_targets) > i
            rows.append({
                "video_id": video_id,
                "split": split,
                "target": decode(np.asarray(split_targets[i]), False) if has_target else None,
                "predicted": decode(out, True),
                "outputs": out.tolist(),
            })
    value = {"regression": pl.Float64, "classification": pl.Utf8}.get(kind, pl.List(pl.Utf8))
    schema = {"video_id": pl.Utf8, "split": pl.Utf8, "target": value, "predicted": value,
              "outputs": pl.List(pl.Float64)}
    return pl.DataFrame(rows, schema=schema)


def list_runs(runs_dir: str | Path) -> pl.DataFrame:
    """One row per run directory under ``runs_dir`` (newest first): ``run``, ``head``,
    ``task``, ``seed``, ``features``, ``best_epoch``, ``metric``, ``val``, ``test`` (the task's
    primary metric) and ``status`` (``done``, or ``running / stopped`` without metrics.json)."""
    rows = []
    for run_dir in sorted(Path(runs_dir).glob("*/config.json"), reverse=True):
        run_dir = run_dir.parent
        saved = json.loads((run_dir / "config.json").read_text())
        config, kind = saved["config"], saved["task"]["kind"]
        metric = PRIMARY_METRIC[kind][0]
        row = {
            "run": run_dir.name, "head": config["head"], "task": saved["task"]["name"],
            "seed": config["seed"], "features": "+".join(config["features"]),
            "best_epoch": None, "metric": metric, "val": None, "test": None,
            "status": "running / stopped",
        }
        metrics_path = run_dir / "metrics.json"
        if metrics_path.is_file():
            result = json.loads(metrics_path.read_text())
            row.update(
                best_epoch=result["selection"]["best_epoch"],
                val=result["metrics"]["val"].get(metric),
                test=result["metrics"]["test"].get(metric),
                status="done",
            )
        rows.append(row)
    schema = {"run": pl.Utf8, "head": pl.Utf8, "task": pl.Utf8, "seed": pl.Int64,
              "features": pl.Utf8, "best_epoch": pl.Int64, "metric": pl.Utf8,
              "val": pl.Float64, "test": pl.Float64, "status": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)

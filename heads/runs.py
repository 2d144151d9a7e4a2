"""Run directories of ``heads train``: create, write, read back.

Layout of ``<runs_dir>/<UTC time>-<head>-<task>/``:

- ``config.json``: ``config`` (the resolved :class:`heads.train.TrainConfig`), ``catalog`` (its
  name), ``task`` (name, kind, classes) and ``feature_sets`` (name, backbone, plan, dim and
  fingerprint of each, in stream order);
- ``checkpoint.pt``: ``model`` (best weights), ``head`` and ``head_args`` (the ``create_head``
  arguments that rebuild it), ``standardizer`` (per-stream mean/std), ``target_norm`` (regression
  target mean/std, else null), ``config``, ``task``, ``feature_sets``, ``best_epoch``; loadable
  with ``torch.load(weights_only=True)``;
- ``metrics.json``: ``num_videos``, ``metrics`` and ``baseline`` per split, ``num_dropped``,
  ``selection`` (metric, best epoch) and the per-epoch ``history``.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from catalogs.base import SPLITS
from heads.metrics import PRIMARY_METRIC
from heads.models import create_head


def write_run(
    runs_dir: str | Path, *, head: str, task: str, config: dict, checkpoint: dict, metrics: dict
) -> Path:
    """Create a new run directory and write its three files.

    Args:
        runs_dir: Parent directory (created if missing).
        head: Head name, for the directory name.
        task: Task name, for the directory name.
        config: Content of ``config.json``.
        checkpoint: Content of ``checkpoint.pt``.
        metrics: Content of ``metrics.json``.

    Returns:
        The run directory.
    """
    run_dir = new_run_dir(Path(runs_dir), head, task)
    write_json(run_dir / "config.json", config)
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    write_json(run_dir / "metrics.json", metrics)
    return run_dir


def load_head(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a trained head from a run directory or its ``checkpoint.pt``.

    Returns:
        ``(model, checkpoint)``: the model in eval mode with the best weights, and the checkpoint
        dict (``standardizer``, ``target_norm``, ``config``, ``task``, ``feature_sets``, ...).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass a run directory of `heads train`")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = create_head(checkpoint["head"], **checkpoint["head_args"])
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint


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


def write_json(path: Path, payload: dict) -> None:
    """``payload`` as indented JSON; NaN and inf become null (strict JSON, e.g. for an mAP over a
    split without any positive label)."""

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(payload), indent=2, default=str) + "\n")

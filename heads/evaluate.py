"""``heads eval`` and ``heads predict``: a trained run applied again, from its checkpoint.

Both rebuild the head from ``checkpoint.pt`` (or ``checkpoint_last.pt``), read the run's own
feature sets (checked against the fingerprints recorded at training time), standardise with the
train-split statistics saved in the checkpoint, and aggregate over windows as in training (the
LVU protocol when ``window_sec > 0``; see :mod:`heads.windows`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from catalogs.base import SPLITS
from heads.data import Standardizer, StoredVideos, _in_memory, load_task_data
from heads.metrics import compute_metrics, details, majority_baseline
from heads.runs import load_head, predictions_frame
from heads.windows import predict_videos, with_token_times


@dataclass
class LoadedRun:
    """A run's model and what it needs to be applied to stored features."""

    run_dir: Path
    model: nn.Module
    checkpoint: dict
    standardizer: Standardizer
    device: torch.device = torch.device("cpu")
    autocast: object = None  # zero-argument context-manager factory, or None (fp32)

    @property
    def config(self) -> dict:
        return self.checkpoint["config"]

    @property
    def task(self) -> dict:
        return self.checkpoint["task"]

    def feature_sets(self, store: str | Path | None = None) -> list:
        """The run's feature sets, opened in ``store`` (default: the run's own store).

        Raises:
            ValueError: a feature set is missing, or its fingerprint differs from the one the
                run was trained on (the features changed: retrain, or pass the right --store).
        """
        from pipeline.store import FeatureStore

        store = FeatureStore(store or self.config["store"])
        present = {fs.name: fs for fs in store.feature_sets()}
        out = []
        for info in self.checkpoint["feature_sets"]:
            fs = present.get(info["name"])
            if fs is None:
                raise ValueError(
                    f"feature set {info['name']} of run {self.run_dir} is not in store "
                    f"{store.root}; pass --store with the store the run was trained on"
                )
            if fs.attrs.get("fingerprint") != info["fingerprint"]:
                raise ValueError(
                    f"feature set {info['name']} in {store.root} has fingerprint "
                    f"{fs.attrs.get('fingerprint')}, not the {info['fingerprint']} run "
                    f"{self.run_dir} was trained on"
                )
            out.append(fs)
        return out

    def predict(self, tokens, times) -> np.ndarray:
        """Outputs in target units for raw (unstandardised) per-video tokens, (N, K)/(N, 1)."""
        if isinstance(tokens, StoredVideos):  # streamed: standardised as each video is read
            standardised = tokens.with_transform(self.standardizer.apply)
        else:
            standardised = [self.standardizer.apply(v) for v in tokens]
        if getattr(self.model, "uses_token_times", False):  # one more stream: the token times
            standardised, times = with_token_times(standardised, times)
        outputs = predict_videos(
            self.model, standardised, times, task_kind=self.task["kind"],
            window_sec=float(self.config.get("window_sec") or 0),
            stride_sec=float(self.config.get("eval_stride_sec", 1.0)),
            batch_size=int(self.config["batch_size"]), device=self.device,
            autocast=self.autocast,
        )
        norm = self.checkpoint.get("target_norm")
        return outputs * norm[1] + norm[0] if norm else outputs


def load_run(run_dir: str | Path, *, which: str = "best", device: str = "auto",
             precision: str | None = None, log: Callable[[str], None] | None = None
             ) -> LoadedRun:
    """Rebuild a run's head (``which``: ``best`` or ``last``) with its standardiser, on
    ``device`` (:func:`heads.runtime.resolve_device`; ``log`` gets the line saying which) with
    autocast in ``precision`` (None: the run's own).

    Raises:
        FileNotFoundError: no such run directory or checkpoint.
        ValueError: a device torch cannot see.
    """
    from heads.runtime import legacy_precision, mixed_precision, resolve_device

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}; see `heads runs`")
    model, checkpoint = load_head(run_dir, which=which)
    standardizer = Standardizer.from_state_dict(checkpoint["standardizer"])
    torch_device = resolve_device(device, log=log)
    precision = precision or legacy_precision(checkpoint["config"]).get("precision", "fp32")
    autocast, _ = mixed_precision(torch_device, precision)
    return LoadedRun(run_dir, model.to(torch_device), checkpoint, standardizer, torch_device,
                     autocast)


def _catalog(run: LoadedRun):
    from catalogs import get_catalog

    config = run.config
    return get_catalog(config["dataset"], root=config["data_root"], **config["catalog_options"])


def evaluate_run(
    run_dir: str | Path, *, which: str = "best", store: str | Path | None = None, catalog=None,
    log: Callable[[str], None] = print, device: str = "auto", precision: str | None = None,
) -> dict:
    """Metrics of a trained run on every split, recomputed from its checkpoint, on ``device``
    with ``precision`` (see :func:`load_run`).

    Returns:
        ``{"task", "kind", "num_videos", "metrics", "baseline", "details"}`` (as in
        ``metrics.json``).
    """
    run = load_run(run_dir, which=which, device=device, precision=precision, log=log)
    catalog = catalog or _catalog(run)
    data = load_task_data(catalog, run.task["name"], run.feature_sets(store), log=log,
                          loading=run.config.get("data_loading", "auto"),
                          stream_cache_mib=run.config.get("stream_cache_mib", 1024.0))
    kind = run.task["kind"]
    results = {"task": run.task["name"], "kind": kind, "num_videos": {}, "metrics": {},
               "baseline": {}, "details": {}}
    with torch.no_grad():
        for split in SPLITS:
            results["num_videos"][split] = len(data.tokens[split])
            if not data.tokens[split]:
                results["metrics"][split] = results["details"][split] = {}
            else:
                outputs = run.predict(data.tokens[split], data.times[split])
                results["metrics"][split] = compute_metrics(kind, outputs, data.targets[split])
                results["details"][split] = details(kind, outputs, data.targets[split],
                                                    run.task["classes"])
            results["baseline"][split] = majority_baseline(
                data.targets["train"], data.targets[split], kind
            )
    return results


def predict_run(
    run_dir: str | Path, *, video_ids: Sequence[str] | None = None, which: str = "best",
    store: str | Path | None = None, device: str = "auto", precision: str | None = None,
    log: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """A run's predictions for stored videos, labelled or not.

    Args:
        run_dir: The run.
        video_ids: Videos to predict; None = every video stored ``ok`` in all the run's
            feature sets.
        which: ``best`` or ``last`` checkpoint.
        store: Store root (default: the run's).
        device, precision, log: see :func:`load_run`.

    Returns:
        ``predictions.parquet``'s columns (``target`` null, ``split`` = ``predict``).

    Raises:
        KeyError: a video is not stored (ok) in one of the feature sets; names it.
    """
    run = load_run(run_dir, which=which, device=device, precision=precision, log=log)
    feature_sets = run.feature_sets(store)
    if video_ids is None:
        ok = [fs.ok_ids() for fs in feature_sets]
        video_ids = sorted(set.intersection(*ok))
    video_ids = list(video_ids)
    read = [fs.read_many(video_ids) for fs in feature_sets]
    tokens = [[_in_memory(r[v].tokens) for r in read] for v in video_ids]
    times = [[np.stack([r[v].start_sec, r[v].end_sec], axis=1) for r in read] for v in video_ids]
    outputs = run.predict(tokens, times) if video_ids else np.zeros((0, 1))
    return predictions_frame(run.task, {"predict": video_ids}, {"predict": outputs}, {})

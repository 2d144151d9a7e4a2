"""Several runs at once: one config over several seeds (mean ± standard error: "for LVU we
compute the standard error averaged over five runs as proposed in the original paper", STAN §4
Metrics), and sweeps over heads × tasks × seeds on Ray.

A sweep runs each cell (head, task, seed) as one :func:`heads.train.train` call in a pool of
Ray actors, each holding ``cpus_per_run`` CPUs (its torch threads) and ``gpus_per_run`` of a GPU
(a fraction packs several cells on one GPU: 0.25 trains four ViS4mer cells side by side), so
cells land on the cluster's GPU nodes through Ray's resources; Ray is started or joined as
``pipeline extract`` does it (:func:`pipeline.cluster.start_ray`: ``--address``, else
``RAY_ADDRESS``, else a local Ray), with the workers' log lines forwarded. Each actor builds
the catalog once and keeps every feature set's videos it has read
(``heads.data.load_task_data``'s ``cache``), so a feature set is read from the store at most
once per worker, whatever the number of cells the worker runs.

A head's features are its defaults (``heads/configs/<head>.toml``, with the file's
``[datasets.<dataset>]`` table for the sweep's dataset) unless ``--set HEAD.features=[...]``
says otherwise; a head whose feature sets the store lacks is not run:
its cells are listed in the summary as ``skipped`` with the reason (and the ``pipeline
extract`` command to run). A cell that fails is listed as ``failed`` with its error; the other
cells go on. A worker process that dies (a segfault, the OOM killer, ``ray.kill``) fails only
the cell it was running: a fresh actor takes its place for the cells still to run.

``sweep.json`` is rewritten (atomically) after every cell, and ``summary.csv`` /
``summary.md`` are written however the sweep ends, also when the driver stops half-way (cells
never started are ``not run``). :func:`resume_sweep` (``heads sweep --resume DIR``) reruns the
cells of a sweep directory that are missing or not ``ok``, with the heads, tasks, seeds and
overrides its ``sweep.json`` recorded, and keeps the rest.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from catalogs.base import SPLITS
from heads.metrics import PRIMARY_METRIC

# The status of a cell the sweep stopped before (a driver killed or interrupted half-way).
NOT_RUN = "not run"


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n)); NaN values are left out.

    Returns:
        ``(mean, se)``; ``se`` is NaN for fewer than two values, both NaN for none.
    """
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(finite) == 0:
        return float("nan"), float("nan")
    if len(finite) == 1:
        return float(finite[0]), float("nan")
    return float(finite.mean()), float(finite.std(ddof=1) / math.sqrt(len(finite)))


def summarize_seeds(results: Sequence[dict]) -> dict:
    """Mean ± standard error over runs of one config that differ only in the seed.

    Args:
        results: :func:`heads.train.train` results.

    Returns:
        ``{"seeds", "run_dirs", "metrics": {split: {metric: {"mean", "se", "n"}}}}``.
    """
    summary: dict = {"seeds": [r["seed"] for r in results],
                     "run_dirs": [r.get("run_dir") for r in results], "metrics": {}}
    for split in SPLITS:
        names = sorted({k for r in results for k in r["metrics"][split]})
        summary["metrics"][split] = {}
        for name in names:
            mean, se = mean_se([r["metrics"][split].get(name, float("nan")) for r in results])
            n = sum(1 for r in results if name in r["metrics"][split])
            summary["metrics"][split][name] = {"mean": mean, "se": se, "n": n}
    return summary


def format_mean_se(mean: float, se: float) -> str:
    """``0.7368 ± 0.0304``; ``-`` when ``mean`` is NaN; no ± part when ``se`` is NaN."""
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.4f}" if not math.isfinite(se) else f"{mean:.4f} ± {se:.4f}"


def format_seed_summary(summary: dict) -> str:
    """The split × metric table of :func:`summarize_seeds` as aligned text."""
    names = sorted({k for split in SPLITS for k in summary["metrics"][split]})
    rows = [["split", *names]]
    for split in SPLITS:
        cells = summary["metrics"][split]
        rows.append([split] + [
            format_mean_se(cells[n]["mean"], cells[n]["se"]) if n in cells else "-" for n in names
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return f"mean ± standard error over seeds {summary['seeds']}\n" + "\n".join(lines)


def protocol_seeds(catalog, default: int) -> int:
    """How many seeds a dataset's results are reported over: the catalog's ``protocol_seeds``
    (LVU: 5, "the standard error averaged over five runs", STAN §4 Metrics after the LVU paper),
    else ``default``."""
    return int(catalog.meta.get("protocol_seeds", default))


def train_seeds(config, seeds: Sequence[int], *, log: Callable[[str], None] = print,
                **train_kwargs) -> dict:
    """Train ``config`` once per seed and summarise (mean ± standard error).

    Args:
        config: A :class:`heads.config.TrainConfig`; its ``seed`` is replaced by each of ``seeds``.
        seeds: The seeds, e.g. ``range(5)``.
        log: Progress lines.
        **train_kwargs: Passed to :func:`heads.train.train` (``catalog``, ``cache``).

    Returns:
        :func:`summarize_seeds` of the runs, plus ``results`` (each run's result).
    """
    from heads.train import train

    cache = train_kwargs.pop("cache", {})  # read the features once for every seed
    results = []
    for seed in seeds:
        log(f"--- seed {seed}")
        results.append(train(replace(config, seed=seed), log=log, cache=cache, **train_kwargs))
    return {**summarize_seeds(results), "results": results}


# ---------------------------------------------------------------------------------- sweeps


def parse_sets(items: Sequence[str], heads: Sequence[str]) -> dict[str, dict]:
    """``--set`` values as per-head overrides.

    ``key=value`` applies to every head, ``HEAD.key=value`` to one; ``value`` is JSON when it
    parses as JSON (``3``, ``["vit_b16"]``, ``{"d_model": 64}``), else a string. Per-head
    values win over global ones.

    Raises:
        ValueError: an item without ``=``, or a ``HEAD.`` prefix naming a head not in ``heads``.
    """
    global_values: dict = {}
    per_head: dict[str, dict] = {h: {} for h in heads}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r} is not [HEAD.]key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        head, dot, field_name = key.strip().rpartition(".")
        if dot:
            if head not in per_head:
                raise ValueError(
                    f"--set {item!r}: head {head!r} is not in the sweep ({', '.join(heads)})"
                )
            per_head[head][field_name] = value
        else:
            global_values[field_name] = value
    return {h: {**global_values, **per_head[h]} for h in heads}


class SweepWorker:
    """A Ray actor running sweep cells; keeps the catalog and the feature reads between cells.

    Args:
        catalog: The dataset.
        num_threads: torch intra-op threads of this worker (the CPUs Ray gave it).
        device: The device of every cell it runs (``cuda``: the GPU share Ray gave it).
    """

    def __init__(self, catalog, num_threads: int = 1, device: str = "cpu"):
        import torch

        torch.set_num_threads(num_threads)
        self.catalog, self.device = catalog, device
        self.cache: dict = {}

    def run(self, cell: dict) -> dict:
        """Train one cell (``{"head", "task", "seed", "config"}``); never raises: an error is
        returned as ``status = failed`` with its message."""
        from heads.train import TrainConfig, train

        row = {k: cell[k] for k in ("head", "task", "seed")}
        try:
            config = TrainConfig(**{**cell["config"], "device": self.device})
            result = train(config, catalog=self.catalog, log=lambda _: None, cache=self.cache)
        except Exception as err:  # a failing cell is reported; the sweep goes on
            return {**row, "status": "failed", "error": f"{type(err).__name__}: {err}"}
        return {**row, "status": "ok", "kind": result["kind"], "metrics": result["metrics"],
                "baseline": result["baseline"], "run_dir": result["run_dir"],
                "best_epoch": result["selection"]["best_epoch"]}


def plan_sweep(catalog, *, heads: Sequence[str], tasks: Sequence[str], seeds: Sequence[int],
               overrides: dict[str, dict], config_file: str | None = None):
    """The cells of a sweep, and the (head, task) pairs that cannot run.

    Returns:
        ``(cells, skipped)``: ``cells`` a list of ``{"head", "task", "seed", "config"}``
        (``config`` a ``TrainConfig`` as a dict), ``skipped`` a list of ``{"head", "task",
        "reason"}``.

    Raises:
        KeyError, ValueError: unknown head or task, or a bad override (before anything runs).
    """
    from heads.config_files import build_config
    from heads.data import head_token_kinds, resolve_feature_sets
    from heads.models import num_streams_for
    from heads.config_files import resolve_config

    for task in tasks:
        catalog.task(task)  # KeyError listing the valid tasks
    cells, skipped = [], []
    variant = catalog.meta.get("variant")
    for head in heads:
        config = resolve_config(build_config(
            {**overrides.get(head, {}), "head": head, "task": tasks[0]}, config_file=config_file
        ))
        try:
            num_streams_for(head, len(config.features))
            resolve_feature_sets(
                config.store, catalog.name, config.features, config.plan,
                prefer={"dataset_variant": variant} if variant is not None else None,
                token_kinds=head_token_kinds(head),
            )
        except ValueError as err:
            skipped += [{"head": head, "task": t, "reason": str(err)} for t in tasks]
            continue
        for task in tasks:
            for seed in seeds:
                cell_config = replace(config, task=task, seed=seed)
                cells.append({"head": head, "task": task, "seed": seed,
                              "config": asdict(cell_config)})
    return cells, skipped


def summary_table(outcomes: Sequence[dict], skipped: Sequence[dict]) -> pl.DataFrame:
    """One row per (head, task): the primary metric's val and test mean ± standard error over
    the seeds that ran, the majority baseline's test value, and the status."""
    rows = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome["head"], outcome["task"]), []).append(outcome)
    for (head, task), group in groups.items():
        done = [o for o in group if o["status"] == "ok"]
        failed = [o for o in group if o["status"] == "failed"]
        not_run = [o for o in group if o["status"] == NOT_RUN]
        row = {"head": head, "task": task, "kind": None, "metric": None, "seeds": len(done),
               "val": "-", "test": "-", "test_mean": None, "test_se": None,
               "baseline_test": None, "status": "ok"}
        if done:
            kind = done[0]["kind"]
            metric = PRIMARY_METRIC[kind][0]
            val = mean_se([o["metrics"]["val"].get(metric, float("nan")) for o in done])
            test = mean_se([o["metrics"]["test"].get(metric, float("nan")) for o in done])
            row.update(kind=kind, metric=metric, val=format_mean_se(*val),
                       test=format_mean_se(*test), test_mean=test[0], test_se=test[1],
                       baseline_test=done[0]["baseline"]["test"].get(metric))
        problems = [f"failed {len(failed)}: {failed[0]['error']}"] if failed else []
        problems += [f"{NOT_RUN} {len(not_run)}"] if not_run else []
        if problems:
            row["status"] = "; ".join(problems)
        rows.append(row)
    for skip in skipped:
        rows.append({"head": skip["head"], "task": skip["task"], "kind": None, "metric": None,
                     "seeds": 0, "val": "-", "test": "-", "test_mean": None, "test_se": None,
                     "baseline_test": None,
                     # the first clause; sweep.json and the log keep the whole reason
                     "status": f"skipped: {skip['reason'].split(' (present:')[0]}"})
    schema = {"head": pl.Utf8, "task": pl.Utf8, "kind": pl.Utf8, "metric": pl.Utf8,
              "seeds": pl.Int64, "val": pl.Utf8, "test": pl.Utf8, "test_mean": pl.Float64,
              "test_se": pl.Float64, "baseline_test": pl.Float64, "status": pl.Utf8}
    return pl.DataFrame(rows, schema=schema).sort(["head", "task"])


def to_markdown(table: pl.DataFrame) -> str:
    """The summary as a markdown table (mean ± standard error columns, no raw numbers)."""
    columns = ["head", "task", "metric", "seeds", "val", "test", "baseline_test", "status"]

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}" if math.isfinite(value) else "-"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.iter_rows(named=True):
        lines.append("| " + " | ".join(cell(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def failed_cells(table: pl.DataFrame) -> int:
    """How many (head, task) rows of a summary have a cell that failed or did not run (skipped
    heads do not count: they never had cells)."""
    return table.filter(pl.col("status").str.starts_with("failed")
                        | pl.col("status").str.starts_with(NOT_RUN)).height


def cell_key(cell: dict) -> tuple[str, str, int]:
    """A cell's (or its outcome's) identity in a sweep: ``(head, task, seed)``."""
    return cell["head"], cell["task"], int(cell["seed"])


def run_sweep(
    catalog,
    *,
    heads: Sequence[str],
    tasks: Sequence[str],
    seeds: Sequence[int],
    overrides: dict[str, dict],
    out_dir: str | Path,
    config_file: str | None = None,
    address: str | None = None,
    num_workers: int | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
    resources: RunResources | None = None,
) -> pl.DataFrame:
    """Run every (head, task, seed) cell on Ray and write the summary.

    Args:
        catalog: The dataset.
        heads: Head names.
        tasks: Task names of the catalog.
        seeds: Seeds, one run per cell and seed.
        overrides: Per head, ``TrainConfig`` values (see :func:`parse_sets`); ``runs_dir`` is
            set to ``out_dir``.
        out_dir: The sweep directory: run directories, ``summary.csv``, ``summary.md`` and
            ``sweep.json`` (the arguments and every cell's outcome, rewritten after each cell).
        config_file: Optional TOML file applied to every cell.
        address: Ray cluster address; None starts Ray locally.
        num_workers: Actors; default as many as the cluster's CPUs (and GPUs) hold.
        log: Progress lines and the summary.
        resume: Keep the ``ok`` outcomes of ``out_dir/sweep.json`` and run only the other
            cells (missing, failed or not run).
        resources: CPUs and GPU share per cell and the cells' device (:class:`RunResources`);
            None: one CPU, no GPU.

    Raises:
        ValueError: the cluster lacks the GPUs or CPUs one cell asks for (before any cell).

    Returns:
        The summary table (also written as CSV and markdown), written also when a cell fails,
        a worker dies or the driver stops (then re-raised).
    """
    from heads.runs import write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = {h: {**overrides.get(h, {}), "runs_dir": str(out_dir / "runs")} for h in heads}
    cells, skipped = plan_sweep(catalog, heads=heads, tasks=tasks, seeds=seeds,
                                overrides=overrides, config_file=config_file)
    for skip in {s["head"]: s for s in skipped}.values():
        log(f"skipping {skip['head']}: {skip['reason']}")
    planned = {cell_key(c) for c in cells}
    outcomes = [o for o in _saved_outcomes(out_dir) if o["status"] == "ok"
                and cell_key(o) in planned] if resume else []
    kept = {cell_key(o) for o in outcomes}
    todo = [c for c in cells if cell_key(c) not in kept]
    if resume:
        log(f"resuming {out_dir}: {len(kept)} runs done, {len(todo)} to run")
    resources = resources or RunResources()
    record = {"heads": list(heads), "tasks": list(tasks), "seeds": list(seeds),
              "overrides": overrides, "config_file": config_file,
              "resources": asdict(resources),
              "cells": [list(cell_key(c)) for c in cells], "outcomes": outcomes,
              "skipped": skipped}

    def finished(outcome: dict) -> None:
        outcomes.append(outcome)
        write_json(out_dir / "sweep.json", record)  # a killed driver still leaves the record
        if outcome["status"] != "ok":
            log(f"{outcome['head']}/{outcome['task']}/seed {outcome['seed']} failed: "
                f"{outcome['error']}")

    write_json(out_dir / "sweep.json", record)
    try:
        if todo:
            _run_cells(catalog, todo, finished, address=address, num_workers=num_workers,
                       log=log, resources=resources)
    finally:  # however the sweep ends, its summary is written
        table = _write_summary(out_dir, cells, outcomes, skipped)
        write_json(out_dir / "sweep.json", record)
    log(to_markdown(table))
    log(f"sweep written to {out_dir}")
    if failed_cells(table):
        log(f"some runs failed or did not run; rerun only those with: heads sweep --resume "
            f"{out_dir}")
    return table


def resume_sweep(sweep_dir: str | Path, *, catalog=None, address: str | None = None,
                 num_workers: int | None = None, resources: RunResources | None = None,
                 log: Callable[[str], None] = print) -> pl.DataFrame:
    """Rerun the cells of a sweep directory that are missing or not ``ok`` in its
    ``sweep.json``, with the heads, tasks, seeds, overrides and config file recorded there.

    Args:
        sweep_dir: A directory written by :func:`run_sweep` (``heads sweep``).
        catalog: The dataset; default: opened from the recorded overrides (``dataset``,
            ``data_root``, ``catalog_options``).
        resources: Per-cell resources; None: the ones ``sweep.json`` recorded.

    Raises:
        FileNotFoundError: no ``sweep.json`` in ``sweep_dir``.
        ValueError: ``sweep.json`` is not a sweep's record.
    """
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"no sweep.json in {sweep_dir}; pass --resume a directory "
                                "`heads sweep` wrote")
    try:
        saved = json.loads(path.read_text())
        heads, tasks, seeds = saved["heads"], saved["tasks"], saved["seeds"]
        overrides = saved["overrides"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not the record of a `heads sweep` ({type(err).__name__}: "
                         f"{err}); start the sweep again without --resume") from None
    if catalog is None:
        from catalogs import get_catalog

        first = overrides[heads[0]]
        catalog = get_catalog(first["dataset"], root=first.get("data_root"),
                              **first.get("catalog_options", {}))
    if resources is None:
        resources = RunResources(**saved.get("resources", {}))
    return run_sweep(catalog, heads=heads, tasks=tasks, seeds=seeds, overrides=overrides,
                     out_dir=sweep_dir, config_file=saved.get("config_file"), address=address,
                     num_workers=num_workers, log=log, resume=True, resources=resources)


def _saved_outcomes(out_dir: Path) -> list[dict]:
    path = out_dir / "sweep.json"
    return json.loads(path.read_text()).get("outcomes", []) if path.is_file() else []


def _write_summary(out_dir: Path, cells: list[dict], outcomes: list[dict],
                   skipped: list[dict]) -> pl.DataFrame:
    """``summary.csv`` and ``summary.md``; cells without an outcome count as ``not run``."""
    from heads.runs import write_frame, write_text

    ran = {cell_key(o) for o in outcomes}
    not_run = [{"head": c["head"], "task": c["task"], "seed": c["seed"], "status": NOT_RUN,
                "error": "the sweep stopped before this run"}
               for c in cells if cell_key(c) not in ran]
    table = summary_table([*outcomes, *not_run], skipped)
    write_frame(table, out_dir / "summary.csv")
    write_text(out_dir / "summary.md", to_markdown(table) + "\n")
    return table


# A free worker is asked again at this interval: Ctrl-C reaches the driver between waits.
WAIT_SEC = 1.0


@dataclass(frozen=True)
class RunResources:
    """What one sweep cell holds on the cluster (``heads sweep --cpus-per-run
    --gpus-per-run --device``).

    Attributes:
        cpus: CPUs per cell (Ray's ``num_cpus``); its torch threads follow.
        gpus: GPU share per cell (Ray's ``num_gpus``; 0.25 packs four cells on a GPU).
        device: The cells' device: ``auto`` is ``cuda`` when ``gpus`` > 0, else ``cpu``.
    """

    cpus: float = 1.0
    gpus: float = 0.0
    device: str = "auto"

    def __post_init__(self) -> None:
        from heads.runtime import check_device_name

        if self.cpus <= 0:
            raise ValueError(f"--cpus-per-run must be positive, got {self.cpus:g}")
        if self.gpus < 0 or (self.gpus > 1 and self.gpus != int(self.gpus)):
            raise ValueError(f"--gpus-per-run must be a fraction of one GPU (e.g. 0.25) or a "
                             f"whole number of GPUs, got {self.gpus:g}")
        check_device_name(self.device)
        if self.device.startswith("cuda") and not self.gpus:
            raise ValueError(f"--device {self.device}: give each run a GPU share with "
                             "--gpus-per-run (e.g. 0.25), so that Ray places it on a GPU")
        if self.device == "cpu" and self.gpus:
            raise ValueError(f"--device cpu with --gpus-per-run {self.gpus:g}: drop one of them")

    @property
    def cell_device(self) -> str:
        """The device every cell trains on (one GPU share is the actor's ``cuda``)."""
        if self.device == "auto":
            return "cuda" if self.gpus else "cpu"
        return "cuda" if self.device.startswith("cuda") else "cpu"

    def check(self, cluster: dict[str, float]) -> int:
        """How many cells the cluster's ``cluster`` resources (``ray.cluster_resources()``)
        run at once.

        Raises:
            ValueError: it runs none (too few GPUs or CPUs), naming the fix.
        """
        num_gpus, num_cpus = cluster.get("GPU", 0.0), cluster.get("CPU", 0.0)
        if self.gpus and num_gpus < self.gpus:
            raise ValueError(f"--gpus-per-run {self.gpus:g}: the Ray cluster has "
                             f"{num_gpus:g} GPU(s); drop --gpus-per-run to train on the CPUs, "
                             "or join a cluster with GPUs (--address / RAY_ADDRESS)")
        if num_cpus < self.cpus:
            raise ValueError(f"--cpus-per-run {self.cpus:g}: the Ray cluster has "
                             f"{num_cpus:g} CPU(s); ask for fewer per run")
        fits = int(num_cpus // self.cpus)
        if self.gpus:
            fits = min(fits, int(round(num_gpus / self.gpus, 6)))
        return max(1, fits)


def _run_cells(catalog, cells: list[dict], finished: Callable[[dict], None], *,
               address: str | None, num_workers: int | None,
               log: Callable[[str], None], resources: RunResources | None = None) -> None:
    """Run ``cells`` on a pool of :class:`SweepWorker` actors, one cell per actor at a time,
    calling ``finished(outcome)`` for each. A worker that dies fails its cell (``failed``, with
    the reason) and is replaced by a fresh actor while cells remain.

    Raises:
        ValueError: the cluster cannot hold one cell (:meth:`RunResources.check`), before any.
    """
    import ray
    from ray.exceptions import RayError
    from tqdm.auto import tqdm

    from pipeline.cluster import start_ray

    resources = resources or RunResources()
    started_here = start_ray(address)
    worker = ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus,
                        max_restarts=0)(SweepWorker)
    threads, device = max(1, int(resources.cpus)), resources.cell_device
    actors: list = []  # every actor started here, ended here whatever happens
    try:
        fits = resources.check(ray.cluster_resources())
        num_workers = max(1, min(num_workers or fits, len(cells)))
        actors += [worker.remote(catalog, threads, device) for _ in range(num_workers)]
        idle, todo, running = list(actors), list(reversed(cells)), {}
        share = f", {resources.gpus:g} GPU each" if resources.gpus else ""
        log(f"sweep: {len(cells)} runs on {num_workers} Ray workers ({resources.cpus:g} CPU"
            f"{share}; device {device})")
        progress = tqdm(total=len(cells), desc="sweep", disable=None)
        while todo or running:
            while todo and idle:
                actor, cell = idle.pop(), todo.pop()
                running[actor.run.remote(cell)] = (actor, cell)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_SEC)
            for ref in ready:
                actor, cell = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                    idle.append(actor)
                except RayError as err:  # the worker died (SweepWorker.run itself never raises)
                    outcome = {**dict(zip(("head", "task", "seed"), cell_key(cell))),
                               "status": "failed", "error": _worker_death(err)}
                    with suppress(RayError):
                        ray.kill(actor, no_restart=True)
                    if todo:  # a fresh actor takes the dead one's place
                        actors.append(worker.remote(catalog, threads, device))
                        idle.append(actors[-1])
                progress.update()
                finished(outcome)
        progress.close()
    finally:
        for actor in actors:  # their CPUs go back to the cluster, also on Ctrl-C
            with suppress(RayError):
                ray.kill(actor, no_restart=True)
        if started_here:
            ray.shutdown()


def _worker_death(err: Exception) -> str:
    """One line on why a cell's worker is gone, from Ray's multi-line error."""
    text = str(err)
    detail = re.search(r"Worker exit detail: ([^.]*)", text)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    reason = detail.group(1).strip() if detail else first
    return f"worker process died ({type(err).__name__}: {reason})"

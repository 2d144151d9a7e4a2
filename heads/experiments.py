"""Several runs at once: one config over several seeds (mean ± standard error: "for LVU we
compute the standard error averaged over five runs as proposed in the original paper", STAN §4
Metrics), and sweeps over heads × tasks × seeds on Ray.

A sweep runs each cell (head, task, seed) as one :func:`heads.train.train` call in a pool of
Ray actors, one per worker CPU. Each actor builds the catalog once and keeps every feature
set's videos it has read (``heads.data.load_task_data``'s ``cache``), so a feature set is
read from the store at most once per worker, whatever the number of cells the worker runs.

A head's features are its defaults (``heads/configs/<head>.toml``, with the file's
``[datasets.<dataset>]`` table for the sweep's dataset) unless ``--set HEAD.features=[...]``
says otherwise; a head whose feature sets the store lacks is not run:
its cells are listed in the summary as ``skipped`` with the reason (and the ``pipeline
extract`` command to run). A cell that fails is listed as ``failed`` with its error; the other
cells go on.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import polars as pl

from catalogs.base import SPLITS
from heads.metrics import PRIMARY_METRIC


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
        num_threads: torch intra-op threads of this worker.
    """

    def __init__(self, catalog, num_threads: int = 1):
        import torch

        torch.set_num_threads(num_threads)
        self.catalog = catalog
        self.cache: dict = {}

    def run(self, cell: dict) -> dict:
        """Train one cell (``{"head", "task", "seed", "config"}``); never raises: an error is
        returned as ``status = failed`` with its message."""
        from heads.train import TrainConfig, train

        row = {k: cell[k] for k in ("head", "task", "seed")}
        try:
            result = train(TrainConfig(**cell["config"]), catalog=self.catalog,
                           log=lambda _: None, cache=self.cache)
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
        failed = [o for o in group if o["status"] != "ok"]
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
        if failed:
            row["status"] = f"failed {len(failed)}: {failed[0]['error']}"
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
            ``sweep.json`` (the arguments and every cell's outcome).
        config_file: Optional TOML file applied to every cell.
        address: Ray cluster address; None starts Ray locally.
        num_workers: Actors; default one per CPU of the cluster.
        log: Progress lines and the summary.

    Returns:
        The summary table (also written as CSV and markdown).
    """
    import ray
    from ray.util import ActorPool
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = {h: {**overrides.get(h, {}), "runs_dir": str(out_dir / "runs")} for h in heads}
    cells, skipped = plan_sweep(catalog, heads=heads, tasks=tasks, seeds=seeds,
                                overrides=overrides, config_file=config_file)
    for skip in {s["head"]: s for s in skipped}.values():
        log(f"skipping {skip['head']}: {skip['reason']}")
    outcomes: list[dict] = []
    if cells:
        started_here = not ray.is_initialized()
        if started_here:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster needs no token
            # "local" starts a fresh instance instead of joining whatever Ray runs on the host.
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
        try:
            num_cpus = int(ray.available_resources().get("CPU", 1)) or 1
            num_workers = max(1, min(num_workers or num_cpus, len(cells)))
            actor = ray.remote(num_cpus=1)(SweepWorker)
            pool = ActorPool([actor.remote(catalog, 1) for _ in range(num_workers)])
            log(f"sweep: {len(cells)} runs on {num_workers} Ray workers")
            results = pool.map_unordered(lambda a, cell: a.run.remote(cell), cells)
            for outcome in tqdm(results, total=len(cells), desc="sweep", disable=None):
                outcomes.append(outcome)
                if outcome["status"] != "ok":
                    log(f"{outcome['head']}/{outcome['task']}/seed {outcome['seed']} failed: "
                        f"{outcome['error']}")
        finally:
            if started_here:
                ray.shutdown()
    table = summary_table(outcomes, skipped)
    table.write_csv(out_dir / "summary.csv")
    markdown = to_markdown(table)
    (out_dir / "summary.md").write_text(markdown + "\n")
    from heads.runs import write_json

    write_json(out_dir / "sweep.json", {
        "heads": list(heads), "tasks": list(tasks), "seeds": list(seeds),
        "overrides": overrides, "config_file": config_file, "outcomes": outcomes,
        "skipped": skipped,
    })
    log(markdown)
    log(f"sweep written to {out_dir}")
    return table

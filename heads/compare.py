"""Our results next to a paper's table: ``heads compare RUN_OR_SWEEP_DIR --table vis4mer_lvu``.

A reference table is a TOML file of ``heads/references/`` (package data): its ``[source]``
(paper, table, section, page, dataset, split) and one ``[rows.<head>]`` per row of the paper
that longvid has a head for, mapping task names of the catalog to ``{metric, value, unit}``.
Units are the paper's: ``"%"`` (top-1 accuracy, mAP as a percentage), ``"fraction"`` or
``"mse"`` (as is). longvid's metrics are fractions (:mod:`heads.metrics`): :func:`to_paper_units`
converts them explicitly, standard errors too.

Each cell of the comparison is ours (mean ± standard error over the seeds that ran) next to the
paper's value and the difference, with a verdict: within or outside 2 SE, ``n=1: no SE`` or
``SE is 0`` (no test possible), or why the cell could not run (head or task not in the sweep,
head skipped for want of features, every seed failed — the reasons are read from
``sweep.json``). Written as ``compare.md``, ``compare.csv`` and a bar chart ``compare.png``.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable
from pathlib import Path

import polars as pl

from heads.experiments import NOT_RUN, mean_se

REFERENCE_DIR = Path(__file__).parent / "references"
# Paper unit → factor from longvid's value (a fraction, or an MSE) to the paper's.
UNIT_FACTORS: dict[str, float] = {"%": 100.0, "fraction": 1.0, "mse": 1.0}
# How far from the paper a mean may be, in standard errors, before it is marked.
NUM_SE = 2.0


def list_references() -> list[str]:
    """Names of the shipped reference tables (``heads/references/<name>.toml``)."""
    return sorted(p.stem for p in REFERENCE_DIR.glob("*.toml"))


def load_reference(name_or_path: str | Path) -> dict:
    """A reference table: a shipped name (``vis4mer_lvu``) or a path to a TOML file.

    Returns:
        ``{"name", "source": {...}, "rows": {row: {"label", "head", "cells": {task: {"metric",
        "value", "unit"}}}}}``.

    Raises:
        KeyError: an unknown name (the message lists the shipped ones).
        ValueError: a cell without metric/value/unit, or a unit not in :data:`UNIT_FACTORS`.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = REFERENCE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise KeyError(f"no reference table {str(name_or_path)!r}; shipped: "
                           f"{', '.join(list_references())} (or pass a .toml path)")
    table = tomllib.loads(path.read_text())
    for key, row in table.get("rows", {}).items():
        row.setdefault("head", key)
        row.setdefault("label", key)
        for task, cell in row.get("cells", {}).items():
            missing = {"metric", "value", "unit"} - set(cell)
            if missing:
                raise ValueError(f"{path}: rows.{key}.cells.{task} lacks {sorted(missing)}")
            if cell["unit"] not in UNIT_FACTORS:
                raise ValueError(f"{path}: rows.{key}.cells.{task}: unit {cell['unit']!r} is "
                                 f"not one of {', '.join(UNIT_FACTORS)}")
    return {"name": path.stem, "source": table.get("source", {}), "rows": table.get("rows", {})}


def to_paper_units(value: float, unit: str) -> float:
    """longvid's ``value`` (a fraction, e.g. top-1 0.5714, or an MSE) in the paper's ``unit``:
    ``"%"`` → ×100 (57.14), ``"fraction"`` and ``"mse"`` as is."""
    return value * UNIT_FACTORS[unit]


def read_results(path: str | Path) -> dict:
    """The outcomes under ``path``: a sweep directory (``sweep.json``), a run directory
    (``config.json`` + ``metrics.json``), or a folder holding either (the newest sweep in it,
    else every run directory in it).

    Returns:
        ``{"source", "heads", "tasks", "outcomes", "skipped"}``; ``heads``/``tasks`` are what
        was planned (None when unknown), an outcome is ``{"head", "task", "seed", "status",
        "metrics"?, "error"?}`` as in ``sweep.json``.

    Raises:
        FileNotFoundError: nothing of the kind under ``path``.
    """
    path = Path(path)
    if (path / "sweep.json").is_file():
        saved = json.loads((path / "sweep.json").read_text())
        done = {(o["head"], o["task"], int(o["seed"])) for o in saved.get("outcomes", [])}
        never = [{"head": h, "task": t, "seed": s, "status": NOT_RUN,
                  "error": "the sweep stopped before this run"}
                 for h, t, s in saved.get("cells", []) if (h, t, int(s)) not in done]
        return {"source": str(path), "heads": saved.get("heads"), "tasks": saved.get("tasks"),
                "outcomes": [*saved.get("outcomes", []), *never],
                "skipped": saved.get("skipped", [])}
    if (path / "config.json").is_file():
        return {"source": str(path), "heads": None, "tasks": None,
                "outcomes": [_run_outcome(path)], "skipped": []}
    sweeps = sorted(p.parent for p in path.glob("*/sweep.json")) if path.is_dir() else []
    if sweeps:
        return read_results(sweeps[-1])  # names start with the UTC time: the newest is last
    runs = sorted(p.parent for p in path.glob("*/config.json")) if path.is_dir() else []
    if runs:
        return {"source": str(path), "heads": None, "tasks": None,
                "outcomes": [_run_outcome(r) for r in runs], "skipped": []}
    raise FileNotFoundError(f"{path}: no sweep.json or run directory (config.json) in it or "
                            "its sub-folders; pass a directory `heads sweep` or `heads train` "
                            "wrote")


def _run_outcome(run_dir: Path) -> dict:
    """A run directory as a sweep outcome."""
    saved = json.loads((run_dir / "config.json").read_text())
    row = {"head": saved["config"]["head"], "task": saved["task"]["name"],
           "seed": saved["config"]["seed"]}
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        return {**row, "status": NOT_RUN, "error": f"{run_dir.name} has no metrics.json "
                "(still running, or stopped)"}
    return {**row, "status": "ok", "metrics": json.loads(metrics_path.read_text())["metrics"]}


def _missing_reason(results: dict, head: str, task: str) -> str:
    """Why a (head, task) cell has no outcome at all."""
    for skip in results["skipped"]:
        if skip["head"] == head and skip["task"] == task:
            return f"skipped: {skip['reason']}"
    if results["heads"] is not None and head not in results["heads"]:
        return f"not run: head {head!r} is not in the sweep ({', '.join(results['heads'])})"
    if results["tasks"] is not None and task not in results["tasks"]:
        return f"not run: task {task!r} is not in the sweep ({', '.join(results['tasks'])})"
    return f"not run: no run of {head} on {task} in {results['source']}"


def compare_cell(results: dict, head: str, task: str, reference_cell: dict, *,
                 split: str = "test") -> dict:
    """One cell: ours (in the paper's unit) next to the paper's value.

    Returns:
        ``{"paper", "ours_mean", "ours_se", "n", "diff", "within_2se", "status"}``;
        ``within_2se`` is None when it cannot be tested (n=1, SE 0, nothing ran).
    """
    metric, unit, paper = reference_cell["metric"], reference_cell["unit"], reference_cell["value"]
    cell = {"paper": float(paper), "ours_mean": None, "ours_se": None, "n": 0, "diff": None,
            "within_2se": None}
    group = [o for o in results["outcomes"] if o["head"] == head and o["task"] == task]
    if not group:
        return {**cell, "status": _missing_reason(results, head, task)}
    ok = [o for o in group if o["status"] == "ok"]
    values = [o["metrics"][split][metric] for o in ok if o["metrics"][split].get(metric) is not None]
    notes = []
    failed = [o for o in group if o["status"] == "failed"]
    if failed:
        notes.append(f"failed {len(failed)} of {len(group)} seeds: {failed[0]['error']}")
    not_run = [o for o in group if o["status"] == NOT_RUN]
    if not_run:
        notes.append(f"{NOT_RUN} {len(not_run)} of {len(group)} seeds: {not_run[0]['error']}")
    if ok and not values:
        present = sorted(ok[0]["metrics"][split])
        notes.append(f"metric {metric!r} not in the runs' {split} metrics ({', '.join(present)})")
    if not values:
        return {**cell, "status": "could not run: " + "; ".join(notes)}
    mean, se = mean_se([to_paper_units(v, unit) for v in values])
    diff = mean - float(paper)
    if len(values) == 1:
        verdict, within = "n=1: no SE, not tested", None
    elif not math.isfinite(se) or se == 0:
        verdict, within = "SE is 0: not tested", None
    else:
        within = abs(diff) <= NUM_SE * se
        verdict = f"within {NUM_SE:g} SE" if within else f"OUTSIDE {NUM_SE:g} SE"
    return {**cell, "ours_mean": mean, "ours_se": se if math.isfinite(se) else None,
            "n": len(values), "diff": diff, "within_2se": within,
            "status": "; ".join([verdict, *notes])}


def compare(reference: dict, results: dict, *, split: str = "test") -> pl.DataFrame:
    """Every cell of ``reference`` against ``results`` (:func:`read_results`), one row each:
    ``row, head, task, metric, unit, paper, ours_mean, ours_se, n, diff, within_2se, status``."""
    rows = []
    for row in reference["rows"].values():
        for task, reference_cell in row["cells"].items():
            rows.append({"row": row["label"], "head": row["head"], "task": task,
                         "metric": reference_cell["metric"], "unit": reference_cell["unit"],
                         **compare_cell(results, row["head"], task, reference_cell,
                                        split=split)})
    schema = {"row": pl.Utf8, "head": pl.Utf8, "task": pl.Utf8, "metric": pl.Utf8,
              "unit": pl.Utf8, "paper": pl.Float64, "ours_mean": pl.Float64,
              "ours_se": pl.Float64, "n": pl.Int64, "diff": pl.Float64,
              "within_2se": pl.Boolean, "status": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)


def _number(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2f}" if unit == "%" else f"{value:.4f}"


def to_markdown(table: pl.DataFrame, reference: dict) -> str:
    """The comparison as markdown, headed by the paper's source."""
    source = reference["source"]
    heading = (f"Comparison with {source.get('paper', reference['name'])}, "
               f"{source.get('table', '')} (page: {source.get('page', '?')}); "
               f"split {source.get('split', 'test')}; ours = mean ± SE over seeds.")
    lines = [heading, "",
             "| paper row | head | task | metric | paper | ours | n | ours − paper | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        unit = r["unit"]
        ours = _number(r["ours_mean"], unit)
        if r["ours_se"] is not None and ours != "-":
            ours += f" ± {_number(r['ours_se'], unit)}"
        suffix = " %" if unit == "%" else ""
        status = r["status"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['row']} | {r['head']} | {r['task']} | {r['metric']} ({unit}) | "
                     f"{_number(r['paper'], unit)}{suffix} | {ours} | {r['n']} | "
                     f"{_number(r['diff'], unit)} | {status} |")
    return "\n".join(lines)


def plot_comparison(table: pl.DataFrame, path: str | Path, *, title: str) -> None:
    """A bar chart: one panel per task, per head the paper's bar next to ours (± 2 SE);
    cells that could not run have no bar of ours and an ``x`` at zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(table["task"].to_list()))
    num_cols = min(3, len(tasks))
    num_rows = math.ceil(len(tasks) / num_cols)
    fig, axes = plt.subplots(num_rows, num_cols, figsize=(4.2 * num_cols, 3.2 * num_rows),
                             squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        cells = table.filter(pl.col("task") == task)
        xs = range(cells.height)
        ax.bar([x - 0.2 for x in xs], cells["paper"].to_list(), width=0.4, label="paper",
               color="#999999")
        for x, r in zip(xs, cells.iter_rows(named=True)):
            if r["ours_mean"] is None:
                ax.plot([x + 0.2], [0], marker="x", color="#c0392b")
                continue
            err = NUM_SE * r["ours_se"] if r["ours_se"] is not None else 0.0
            ax.bar([x + 0.2], [r["ours_mean"]], width=0.4, yerr=[err], capsize=3,
                   color="#2e86c1" if r["within_2se"] is not False else "#c0392b",
                   label="ours (± 2 SE)" if x == 0 else None)
        ax.set_xticks(list(xs), cells["head"].to_list())
        ax.set_title(f"{task} ({cells['metric'][0]}, {cells['unit'][0]})", fontsize=9)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_compare(path: str | Path, *, table: str, out_dir: str | Path | None = None,
                split: str | None = None, log: Callable[[str], None] = print) -> pl.DataFrame:
    """Compare the results under ``path`` with reference ``table``; write ``compare.md``,
    ``compare.csv`` and ``compare.png`` into ``out_dir`` (default: the sweep or run directory).

    Raises:
        KeyError: unknown table. FileNotFoundError: no results under ``path``.
    """
    from heads.runs import write_frame, write_text

    reference = load_reference(table)
    results = read_results(path)
    split = split or reference["source"].get("split", "test")
    comparison = compare(reference, results, split=split)
    out = Path(out_dir) if out_dir is not None else Path(results["source"])
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(comparison, reference)
    write_text(out / "compare.md", markdown + "\n")
    write_frame(comparison, out / "compare.csv")
    source = reference["source"]
    plot_comparison(comparison, out / "compare.png",
                    title=f"{source.get('table', reference['name'])}: paper vs ours "
                          f"({results['source']})")
    log(markdown)
    log(f"comparison written to {out} (compare.md, compare.csv, compare.png)")
    return comparison

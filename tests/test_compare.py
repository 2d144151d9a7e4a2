"""`heads compare`: the reference tables against the papers' text, the unit conversion, the
verdicts on a synthetic sweep, and the demo dry run end to end (extract → sweep → compare)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from heads.cli import app
from heads.compare import (
    compare,
    load_reference,
    read_results,
    run_compare,
    to_paper_units,
)

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT.parent / "shared" / "papers"
# The column order of each paper's table, as longvid task names.
VIS4MER_COLUMNS = ("relationship", "way_speaking", "scene", "director", "genre", "writer",
                   "year", "like_ratio", "view_count")
STAN_COLUMNS = ("relationship", "way_speaking", "scene")


def _paper_row(text_file: str, row_start: str) -> list[float]:
    """The numbers of the line of ``text_file`` that starts with ``row_start``, in order
    (markup such as <b>…</b> stripped; reference numbers in brackets dropped)."""
    path = PAPERS / text_file
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    (line,) = [ln for ln in path.read_text().splitlines()
               if re.sub(r"</?\w+>|\|", "", ln).strip().startswith(row_start)]
    line = re.sub(r"</?\w+>", "", line)
    line = re.sub(r"\[[\d, ]+\]", "", line)
    return [float(x) for x in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", line)]


@pytest.mark.parametrize(("table", "row", "text_file", "row_start", "columns"), [
    ("vis4mer_lvu", "vis4mer", "vis4mer.txt", "ViS4mer\tstate-space", VIS4MER_COLUMNS),
    ("vis4mer_lvu", "lst", "vis4mer.txt", "Long Seq. Transformer", VIS4MER_COLUMNS),
    ("stan_lvu", "stan", "stan.txt", "STAN-Large (ours)", STAN_COLUMNS),
])
def test_reference_values_are_the_papers(table, row, text_file, row_start, columns):
    reference = load_reference(table)
    assert reference["source"]["table"] == "Table 2" and reference["source"]["dataset"] == "lvu"
    assert reference["source"]["text"] == text_file
    cells = reference["rows"][row]["cells"]
    assert tuple(cells) == columns  # every column of the table, in the paper's order
    assert [cells[t]["value"] for t in columns] == _paper_row(text_file, row_start)
    for task in columns:
        unit = "mse" if task in ("like_ratio", "view_count") else "%"
        assert cells[task]["unit"] == unit
        assert cells[task]["metric"] == ("mse" if unit == "mse" else "top1")


def test_spot_values_and_task_names():
    from catalogs.lvu import TASK_NAMES

    vis4mer = load_reference("vis4mer_lvu")["rows"]
    assert vis4mer["vis4mer"]["cells"]["relationship"]["value"] == 57.14
    assert vis4mer["vis4mer"]["cells"]["view_count"]["value"] == 3.63
    assert vis4mer["lst"]["cells"]["scene"]["value"] == 62.79
    stan = load_reference("stan_lvu")["rows"]["stan"]["cells"]
    assert (stan["relationship"]["value"], stan["way_speaking"]["value"],
            stan["scene"]["value"]) == (56.25, 41.41, 58.33)
    for table in ("vis4mer_lvu", "stan_lvu"):
        for row in load_reference(table)["rows"].values():
            assert set(row["cells"]) <= set(TASK_NAMES)
    with pytest.raises(KeyError, match="shipped: demo_dry_run, stan_lvu, vis4mer_lvu"):
        load_reference("vis4mer")


def test_units_fractions_to_percent_and_mse_as_is():
    assert to_paper_units(0.5714, "%") == pytest.approx(57.14)
    assert to_paper_units(3.63, "mse") == 3.63
    assert to_paper_units(0.25, "fraction") == 0.25


def _write_sweep(path: Path) -> Path:
    """A sweep.json as heads.experiments.run_sweep writes it: vis4mer ran relationship on 3
    seeds and way_speaking on 1, view_count on 2 identical seeds, scene failed; lst skipped."""
    def ok(task, seed, **test):
        return {"head": "vis4mer", "task": task, "seed": seed, "status": "ok",
                "kind": "classification", "metrics": {"train": {}, "val": {}, "test": test}}

    outcomes = [ok("relationship", 0, top1=0.56), ok("relationship", 1, top1=0.58),
                ok("relationship", 2, top1=0.57), ok("way_speaking", 0, top1=0.20),
                ok("view_count", 0, mse=3.0), ok("view_count", 1, mse=3.0),
                {"head": "vis4mer", "task": "scene", "seed": 0, "status": "failed",
                 "error": "RuntimeError: CUDA out of memory"}]
    tasks = ["relationship", "way_speaking", "scene", "view_count"]
    record = {"heads": ["vis4mer", "lst"], "tasks": tasks, "seeds": [0, 1, 2],
              "cells": [[o["head"], o["task"], o["seed"]] for o in outcomes],
              "outcomes": outcomes,
              "skipped": [{"head": "lst", "task": t, "reason": "no feature set vit_l16_in21k "
                           "(fps plan) in the store; run pipeline extract ..."} for t in tasks]}
    path.mkdir(parents=True)
    (path / "sweep.json").write_text(json.dumps(record))
    return path


def test_verdicts_on_a_synthetic_sweep(tmp_path):
    sweep = _write_sweep(tmp_path / "runs" / "20250101T000000Z-sweep-vis4mer-lst")
    table = compare(load_reference("vis4mer_lvu"), read_results(tmp_path / "runs"))
    cells = {(r["head"], r["task"]): r for r in table.iter_rows(named=True)}
    rel = cells["vis4mer", "relationship"]
    assert rel["ours_mean"] == pytest.approx(57.0) and rel["n"] == 3
    assert rel["ours_se"] == pytest.approx(100 * 0.01 / 3**0.5)
    assert rel["diff"] == pytest.approx(57.0 - 57.14) and rel["within_2se"] is True
    speak = cells["vis4mer", "way_speaking"]
    assert speak["ours_mean"] == pytest.approx(20.0) and speak["status"].startswith("n=1")
    assert speak["within_2se"] is None
    views = cells["vis4mer", "view_count"]
    assert views["ours_mean"] == 3.0 and views["status"].startswith("SE is 0")
    assert "CUDA out of memory" in cells["vis4mer", "scene"]["status"]
    assert cells["vis4mer", "scene"]["status"].startswith("could not run")
    assert "no feature set vit_l16_in21k" in cells["lst", "scene"]["status"]
    assert "task 'genre' is not in the sweep" in cells["vis4mer", "genre"]["status"]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compare", str(sweep), "--table", "vis4mer_lvu",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "57.00 ± 0.58" in result.output and "57.14 %" in result.output
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.csv", "compare.png"}
    assert pl.read_csv(out / "compare.csv").height == 18


def test_outside_2se_is_marked(tmp_path):
    sweep = _write_sweep(tmp_path / "sweep")
    record = json.loads((sweep / "sweep.json").read_text())
    for outcome, value in zip(record["outcomes"][:3], (0.40, 0.41, 0.42)):
        outcome["metrics"]["test"]["top1"] = value
    (sweep / "sweep.json").write_text(json.dumps(record))
    table = compare(load_reference("vis4mer_lvu"), read_results(sweep))
    rel = table.filter((pl.col("head") == "vis4mer") & (pl.col("task") == "relationship")).row(
        0, named=True)
    assert rel["within_2se"] is False and rel["status"].startswith("OUTSIDE 2 SE")


def test_errors_name_what_to_pass(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["compare", str(tmp_path), "--table", "vis4mer_lvu"])
    assert result.exit_code == 2 and "no sweep.json" in result.output
    result = runner.invoke(app, ["compare", str(tmp_path), "--table", "nope"])
    assert result.exit_code == 2 and "vis4mer_lvu" in result.output


# ------------------------------------------------------------------- the demo dry run

# CPU-sized stand-ins of a reproduction job's settings (scripts/reproduce_demo.sh runs the same
# at a larger size): random resnet18 weights, 2 uniform frames at 64 px, 2 epochs, 2 seeds.
DRY_RUN_EXTRACT = {"backbones": ("resnet18",), "plan": "uniform", "num_frames": 2,
                   "detector": "none", "precision": "fp32", "short_side_px": 64,
                   "weights": ("none",)}
DRY_RUN_TASKS = ["most_screen_time", "bunny_fraction"]


def test_the_demo_dry_run_extracts_sweeps_and_compares(demo_small, ray_local, tmp_path):
    """extract → sweep → compare on the small demo, as jobs/reproduce/*.yaml chain them: the
    table, CSV and chart are written, swept cells carry numbers, and the cells that could not
    run say why (stan: its scene features are not in the store; vis4mer: not in the
    sweep; sources_present: not a task of the sweep)."""
    import torch

    from heads.experiments import run_sweep
    from pipeline.extract import ExtractConfig, run_extract

    torch.set_num_threads(1)
    store = tmp_path / "store"
    run_extract(ExtractConfig(store=str(store), num_workers=0, compact=False, **DRY_RUN_EXTRACT),
                catalog=demo_small, progress=False)
    base = {"dataset": "demo", "data_root": str(demo_small.root), "store": str(store),
            "catalog_options": {"variant": "small"}, "epochs": 2}
    overrides = {"mean": {**base, "plan": "uniform"}, "stan": dict(base)}
    runs = tmp_path / "runs" / "reproduce" / "demo_dry_run"
    run_sweep(demo_small, heads=["mean", "stan"], tasks=DRY_RUN_TASKS, seeds=[0, 1],
              overrides=overrides, out_dir=runs / "20250101T000000Z-sweep-mean-stan",
              log=lambda _: None)
    lines: list[str] = []
    table = run_compare(runs, table="demo_dry_run", log=lines.append)
    sweep_dir = runs / "20250101T000000Z-sweep-mean-stan"
    for name in ("compare.md", "compare.csv", "compare.png"):
        assert (sweep_dir / name).stat().st_size > 0
    assert (sweep_dir / "compare.png").read_bytes()[:4] == b"\x89PNG"
    cells = {(r["head"], r["task"]): r for r in table.iter_rows(named=True)}
    screen = cells["mean", "most_screen_time"]
    assert screen["n"] == 2 and 0 <= screen["ours_mean"] <= 100  # a fraction shown in %
    assert screen["diff"] == pytest.approx(screen["ours_mean"] - 50.0)
    assert cells["mean", "bunny_fraction"]["n"] == 2
    assert "plan 'scene'" in cells["stan", "most_screen_time"]["status"]
    assert cells["stan", "most_screen_time"]["status"].startswith("skipped")
    assert "not in the sweep" in cells["vis4mer", "most_screen_time"]["status"]
    assert "task 'sources_present' is not in the sweep" in cells["stan", "sources_present"]["status"]
    markdown = (sweep_dir / "compare.md").read_text()
    assert "NOT FROM A PAPER" not in markdown and "made-up" in markdown
    assert pl.read_csv(sweep_dir / "compare.csv")["status"].null_count() == 0
    print("\n".join(lines))

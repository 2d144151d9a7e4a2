"""Runs that are killed or meet damaged files (issue 16, items 11 and 12): checkpoints and run
files are replaced whole or not at all, a damaged checkpoint is a one-line error, and a sweep
survives a dead worker, always writes its summary and resumes only what did not finish."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from heads.cli import app
from heads.runs import load_head, write_json
from test_heads_train import DATASET, MEAN_SMALL, small_config, toy_catalog, write_toy_store

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"log": lambda _: None}
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    write_toy_store(root)
    return root


@pytest.fixture(scope="module")
def mean_run(toy_store, tmp_path_factory) -> Path:
    from heads.train import train

    runs = tmp_path_factory.mktemp("runs")
    config = small_config("mean", "genre", toy_store, runs, epochs=2, features=("resnet18",))
    return Path(train(config, catalog=toy_catalog(), **QUIET)["run_dir"])


@contextmanager
def file_size_limit(num_bytes: int):
    """Writes past ``num_bytes`` fail (EFBIG) in this process, as a full disk or a kill in the
    middle of a write would leave them: deterministic, and blind to how the file is written."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (num_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


# ------------------------------------------------------------------- item 11: atomic files


KILLED_DURING_SAVE = """
import os, signal, sys
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
from heads.train import train
from test_heads_train import small_config, toy_catalog

real_save, calls = torch.save, []

def save_then_killed(payload, path, *args, **kwargs):
    calls.append(path)
    if len(calls) < 2:
        return real_save(payload, path, *args, **kwargs)
    real_save(payload, path, *args, **kwargs)  # the second epoch's checkpoint ...
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])  # ... half written when the kill comes
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_then_killed
config = small_config("mean", "genre", Path({store!r}), Path({runs!r}), epochs=3, patience=0,
                      features=("resnet18",))
train(config, catalog=toy_catalog(), log=lambda _: None)
"""


def test_a_kill_during_the_checkpoint_save_keeps_the_previous_checkpoint(toy_store, tmp_path):
    script = KILLED_DURING_SAVE.format(tests=str(TESTS_DIR), store=str(toy_store),
                                       runs=str(tmp_path / "runs"))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    for name in ("checkpoint_last.pt", "checkpoint.pt"):  # epoch 1's, whole
        model, checkpoint = load_head(run_dir / name)
        assert checkpoint["epoch"] == 1 and checkpoint["resume"]["history"][0]["epoch"] == 1


def test_a_failed_json_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"metrics": {"val": {"top1": 0.5}}})
    before = path.read_bytes()
    big = {"history": [{"epoch": i, "train_loss": 0.1 * i} for i in range(5000)]}
    with file_size_limit(len(before) + 4096), pytest.raises(OSError):
        write_json(path, big)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left


def test_summary_and_prediction_files_are_replaced_whole(tmp_path):
    import polars as pl

    from heads.runs import write_frame

    frame = pl.DataFrame({"video_id": [f"v{i}" for i in range(20000)], "x": range(20000)})
    for name in ("predictions.parquet", "summary.csv"):
        path = tmp_path / name
        write_frame(frame.head(3), path)
        before = path.read_bytes()
        with file_size_limit(len(before) + 1024), pytest.raises(
                (OSError, pl.exceptions.ComputeError)):  # polars' parquet writer wraps EFBIG
            write_frame(frame, path)
        assert path.read_bytes() == before, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.parquet", "summary.csv"]


# ------------------------------------------------------------ item 11: damaged checkpoints


def damage(kind: str, source: Path, path: Path) -> Path:
    """``path`` made into a damaged or foreign checkpoint of the given kind."""
    if kind == "truncated":
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "foreign dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "not a dict":
        torch.save([torch.zeros(3)], path)
    elif kind == "pickled object":  # what a weights-only load refuses to unpickle
        torch.save({"head": "mean", "where": Path("/x")}, path)
    return path


DAMAGE = ["truncated", "empty", "text", "foreign dict", "not a dict", "pickled object"]


def one_line_error(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_checkpoint_is_a_one_line_error(mean_run, tmp_path, kind):
    path = damage(kind, mean_run / "checkpoint.pt", tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError) as err:
        load_head(path)
    message = one_line_error(err, path)
    assert "heads train" in message  # what to do


def test_heads_eval_predict_explain_name_a_truncated_checkpoint(mean_run, tmp_path,
                                                                 monkeypatch):
    import shutil

    import catalogs

    monkeypatch.setattr(catalogs, "get_catalog", lambda name, **kw: toy_catalog())
    run_dir = tmp_path / mean_run.name
    shutil.copytree(mean_run, run_dir)
    damage("truncated", mean_run / "checkpoint.pt", run_dir / "checkpoint.pt")
    runner = CliRunner()
    for args in (["eval", str(run_dir)], ["predict", str(run_dir)],
                 ["explain", str(run_dir), "--video", "toy/v01"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)
        assert str(run_dir / "checkpoint.pt") in lines[0] and "Traceback" not in result.output
    result = runner.invoke(app, ["eval", str(run_dir), "--which", "last"])  # the other one
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("kind", ["truncated", "foreign dict"])
def test_trainer_restore_names_a_damaged_checkpoint(mean_run, toy_store, tmp_path, kind):
    from heads.train import build, setup

    last = damage(kind, mean_run / "checkpoint_last.pt", tmp_path / "checkpoint_last.pt")
    config = small_config("mean", "genre", toy_store, tmp_path / "runs", epochs=2,
                          features=("resnet18",))
    config, catalog, data = build(config, catalog=toy_catalog(), cache=None, **QUIET)
    run = setup(config, catalog, data, **QUIET)
    with pytest.raises(ValueError) as err:
        run.trainer.restore(last, mean_run / "checkpoint.pt")
    one_line_error(err, last)
    run.trainer.restore(mean_run / "checkpoint_last.pt", mean_run / "checkpoint.pt")
    assert run.trainer.epoch == 2


# ------------------------------------------------------------------- item 12: sweeps


def dying_catalog(marker: Path):
    """The toy catalog, but the first Ray worker that asks it for a task dies at once (as a
    segfault or the OOM killer would end it); ``marker`` records that one died."""
    from catalogs.base import Catalog

    class DyingCatalog(Catalog):  # defined here: Ray ships the class itself to the workers
        def task(self, name):
            if os.getpid() != self.driver_pid and not Path(self.marker).exists():
                Path(self.marker).touch()
                os._exit(1)
            return super().task(name)

    base = toy_catalog()
    catalog = DyingCatalog(**{f: getattr(base, f) for f in base.__dataclass_fields__})
    object.__setattr__(catalog, "driver_pid", os.getpid())
    object.__setattr__(catalog, "marker", str(marker))
    return catalog


SWEEP_FLAGS = ["--heads", "mean", "--tasks", "genre", "--seeds", "3", "--num-workers", "1",
               "--dataset", DATASET, "--set", "epochs=1", "--set", "batch_size=8",
               "--set", f"mean.head_kwargs={json.dumps(MEAN_SMALL)}"]


def test_sweep_survives_a_dead_worker_and_resumes_what_failed(toy_store, ray_local, tmp_path,
                                                              monkeypatch):
    import catalogs

    catalog = dying_catalog(tmp_path / "died")
    monkeypatch.setattr(catalogs, "get_catalog", lambda name, **kw: catalog)
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", *SWEEP_FLAGS, "--store", str(toy_store),
                                 "--runs-dir", str(tmp_path / "sweeps")])
    assert (tmp_path / "died").exists()  # one worker did die
    assert result.exit_code == 1, result.output  # a cell failed
    assert "| mean | genre |" in result.output  # the table was printed all the same
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    assert {"summary.csv", "summary.md", "sweep.json"} <= {p.name for p in sweep_dir.iterdir()}
    saved = json.loads((sweep_dir / "sweep.json").read_text())
    by_seed = {o["seed"]: o for o in saved["outcomes"]}
    assert sorted(by_seed) == [0, 1, 2]
    assert by_seed[0]["status"] == "failed" and "worker" in by_seed[0]["error"]
    assert by_seed[1]["status"] == by_seed[2]["status"] == "ok"  # a new worker ran the rest
    assert len(list((sweep_dir / "runs").iterdir())) == 2
    assert "failed 1" in (sweep_dir / "summary.md").read_text()

    result = runner.invoke(app, ["sweep", "--resume", str(sweep_dir)])
    assert result.exit_code == 0, result.output
    resumed = json.loads((sweep_dir / "sweep.json").read_text())
    assert sorted((o["seed"], o["status"]) for o in resumed["outcomes"]) == [
        (0, "ok"), (1, "ok"), (2, "ok")]
    kept = {o["seed"]: o["run_dir"] for o in resumed["outcomes"]}
    assert kept[1] == by_seed[1]["run_dir"] and kept[2] == by_seed[2]["run_dir"]
    assert len(list((sweep_dir / "runs").iterdir())) == 3  # only seed 0 ran again
    assert "| mean | genre | top1 | 3 |" in (sweep_dir / "summary.md").read_text()


def test_sweep_writes_its_summary_when_the_driver_stops(toy_store, ray_local, tmp_path):
    from heads.experiments import parse_sets, run_sweep

    overrides = parse_sets(["epochs=1", "batch_size=8",
                            f"mean.head_kwargs={json.dumps(MEAN_SMALL)}"], ["mean"])
    overrides = {h: {**v, "dataset": DATASET, "store": str(toy_store)}
                 for h, v in overrides.items()}

    def log(line: str) -> None:
        if "failed" in line:  # the driver is stopped (Ctrl-C) right after the first outcome
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(dying_catalog(tmp_path / "died"), heads=["mean"], tasks=["genre"],
                  seeds=[0, 1, 2], overrides=overrides, out_dir=tmp_path / "sweep",
                  num_workers=1, log=log)
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [(o["seed"], o["status"]) for o in saved["outcomes"]] == [(0, "failed")]
    markdown = (tmp_path / "sweep" / "summary.md").read_text()
    assert "failed 1" in markdown and "not run 2" in markdown
    assert (tmp_path / "sweep" / "summary.csv").is_file()
    for _ in range(100):  # no worker is left holding a CPU (Ray frees them asynchronously)
        if ray_local.available_resources().get("CPU") == 2:
            break
        time.sleep(0.1)
    assert ray_local.available_resources().get("CPU") == 2


def test_finetune_init_from_names_a_truncated_checkpoint(tmp_path):
    """`heads finetune --init-from RUN` reads its checkpoint through the same checks."""
    from heads.finetune.build import load_checkpoint

    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(ValueError, match="checkpoint.pt"):
        load_checkpoint(tmp_path)

"""``heads train --resume`` (issue 20, item 3): a run killed after k epochs and resumed ends
with the numbers of the run never killed; resume refuses what it cannot continue in one line;
and the run is readable: config.json holds the command line, a log gets a line per epoch,
TensorBoard the per-step loss and the hyperparameters, curves.png integer epochs, the best epoch
and the baseline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from heads.cli import app
from test_heads_train import write_toy_store

pytestmark = pytest.mark.usefixtures("one_thread")
TESTS_DIR = Path(__file__).resolve().parent
NUM_EPOCHS, KILLED_AFTER = 5, 2
# Dropout and random 8 s windows: the resumed run must draw what the whole run drew.
TT_SMALL = {"d_model": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 32, "dropout": 0.2}

# `heads train` in a fresh process, on the toy catalog; with a kill epoch, the process is
# SIGKILLed (no cleanup, no `finally`) right after that epoch's checkpoint_last.pt is written.
RUN = """
import os, signal, sys
import torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
import catalogs, dataclasses
import heads.loop
from heads.cli import app
from test_heads_train import toy_catalog

catalogs.register_catalog("toy_test")(
    lambda *, root=None, variant="default": dataclasses.replace(
        toy_catalog(root, name="toy_test"), meta={{"variant": variant}}))
real_save, saves = heads.loop.save_checkpoint, []

def save_then_killed(payload, path):
    real_save(payload, path)
    saves.append(path)
    if len(saves) == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)

if {kill_after}:
    heads.loop.save_checkpoint = save_then_killed
sys.argv = ["heads", *{args!r}]  # as the console script sees it
app({args!r})
"""


def train_args(store: Path, runs: Path, data_root: Path) -> list[str]:
    args = ["train", "--dataset", "toy_test", "--data-root", str(data_root), "--task", "genre",
            "--head", "temporal_transformer", "--features", "resnet18", "--plan", "scene",
            "--store", str(store), "--runs-dir", str(runs), "--epochs", str(NUM_EPOCHS),
            "--batch-size", "4", "--lr", "0.002", "--patience", "0", "--window-sec", "8",
            "--seeds", "1"]
    for key, value in TT_SMALL.items():
        args += ["--head-kwarg", f"{key}={value}"]
    return args


def run_in_a_process(args: list[str], *, kill_after: int = 0) -> subprocess.CompletedProcess:
    script = RUN.format(tests=str(TESTS_DIR), kill_after=kill_after, args=args)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture
def toy_registry(monkeypatch):
    import dataclasses

    import catalogs
    from test_heads_train import toy_catalog

    monkeypatch.setattr(catalogs, "_REGISTRY", dict(catalogs._REGISTRY))
    catalogs.register_catalog("toy_test")(
        lambda *, root=None, variant="default": dataclasses.replace(
            toy_catalog(root, name="toy_test"), meta={"variant": variant}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The whole run and the killed one (each in its own process), before any resume."""
    root = tmp_path_factory.mktemp("resume")
    store = root / "store"
    write_toy_store(store, dataset="toy_test")
    whole = run_in_a_process(train_args(store, root / "whole", root))
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = run_in_a_process(train_args(store, root / "killed", root), kill_after=KILLED_AFTER)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (whole_dir,), (killed_dir,) = (list((root / name).iterdir()) for name in ("whole", "killed"))
    return {"store": store, "root": root, "whole": whole_dir, "killed": killed_dir,
            "whole_output": whole.stdout}


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_a_killed_run_resumed_ends_as_the_run_never_killed(runs, toy_registry):
    killed = runs["killed"]
    assert not (killed / "metrics.json").exists()
    last = torch.load(killed / "checkpoint_last.pt", weights_only=True)
    assert last["epoch"] == KILLED_AFTER
    assert set(last["resume"]) >= {"model", "optimizer", "scheduler", "scaler", "rng", "history",
                                   "best_score", "best_epoch", "since_best"}
    assert set(last["resume"]["rng"]) >= {"python", "numpy", "torch", "generators"}
    assert set(last["resume"]["rng"]["generators"]) == {"windows", "order"}

    # Repeating a stored value is no contradiction.
    result = CliRunner().invoke(app, ["train", "--resume", str(killed), "--epochs",
                                      str(NUM_EPOCHS), "--head", "temporal_transformer"])
    assert result.exit_code == 0, result.output
    assert f"resuming {killed} after epoch {KILLED_AFTER} of {NUM_EPOCHS}" in result.output
    epoch_lines = [line for line in result.output.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == [
        f"{e}/{NUM_EPOCHS}" for e in range(KILLED_AFTER + 1, NUM_EPOCHS + 1)]

    whole = runs["whole"]
    whole_metrics = json.loads((whole / "metrics.json").read_text())
    resumed_metrics = json.loads((killed / "metrics.json").read_text())
    assert resumed_metrics == whole_metrics  # history, selection, every split's metrics
    assert len(resumed_metrics["history"]) == NUM_EPOCHS
    assert pl.read_parquet(killed / "predictions.parquet").equals(
        pl.read_parquet(whole / "predictions.parquet"))
    for name in ("checkpoint_last.pt", "checkpoint.pt"):
        a, b = (torch.load(d / name, weights_only=True) for d in (whole, killed))
        assert a["epoch"] == b["epoch"]
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), (name, key)

    saved = json.loads((killed / "config.json").read_text())
    assert saved["argv"][:2] == ["heads", "train"] and "d_model=16" in saved["argv"]
    (resumption,) = saved["resumes"]
    assert resumption["after_epoch"] == KILLED_AFTER and "git_sha" in resumption["environment"]

    # Finished now: nothing more to resume.
    line = one_error_line(CliRunner().invoke(app, ["train", "--resume", str(killed)]))
    assert "finished" in line


def test_config_json_records_the_command_line(runs):
    saved = json.loads((runs["whole"] / "config.json").read_text())
    assert saved["argv"][:3] == ["heads", "train", "--dataset"] and "--window-sec" in saved["argv"]
    assert "resumes" not in saved


def test_off_a_terminal_one_line_per_epoch(runs):
    lines = [line for line in runs["whole_output"].splitlines() if line.startswith("epoch ")]
    assert len(lines) == NUM_EPOCHS
    first = lines[0].split()
    assert first[:4] == ["epoch", f"1/{NUM_EPOCHS}", "train_loss", first[3]]
    assert {"lr", "val_top1", "val_loss"} <= set(first)
    assert sum(line.endswith("  best") for line in lines) >= 1


@pytest.mark.parametrize("case", ["no checkpoint", "weights only", "contradicting flag",
                                  "with --seeds", "not a run", "finetune run"])
def test_resume_refuses_in_one_line(runs, toy_registry, tmp_path, case):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(runs["killed"] if case != "finetune run" else runs["whole"], run_dir)
    (run_dir / "metrics.json").unlink(missing_ok=True)
    args = ["train", "--resume", str(run_dir)]
    expected = {"no checkpoint": "no resumable checkpoint", "weights only": "weights only",
                "contradicting flag": "--lr 0.5 contradicts its lr 0.002",
                "with --seeds": "drop --seeds", "not a run": "no config.json",
                "finetune run": "not a run of `heads train` on cached features"}[case]
    if case == "no checkpoint":
        (run_dir / "checkpoint_last.pt").unlink()
    elif case == "weights only":
        checkpoint = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
        del checkpoint["resume"]
        torch.save(checkpoint, run_dir / "checkpoint_last.pt")
    elif case == "contradicting flag":
        args += ["--lr", "0.5"]
    elif case == "with --seeds":
        args += ["--seeds", "3"]
    elif case == "not a run":
        (run_dir / "config.json").unlink()
    else:
        saved = json.loads((run_dir / "config.json").read_text())
        del saved["config"]["features"]
        saved["config"]["preset"] = "stan_small"
        (run_dir / "config.json").write_text(json.dumps(saved))
    assert expected in one_error_line(CliRunner().invoke(app, args))


def test_tensorboard_has_the_step_losses_and_the_hparams(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs["whole"] / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/step_loss")]
    history = json.loads((runs["whole"] / "metrics.json").read_text())["history"]
    steps_per_epoch = len(steps) // len(history)
    assert steps == list(range(1, NUM_EPOCHS * steps_per_epoch + 1)) and steps_per_epoch >= 2
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, NUM_EPOCHS + 1))
    assert "hparams/best_val_top1" in events.Tags()["scalars"]
    plugins = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(plugins)


def test_curves_have_integer_epochs_the_best_epoch_and_the_baseline(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from heads.runs import plot_curves

    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), close(fig)))
    history = [{"epoch": e, "train_loss": 1.0 / e, "lr": 1e-3, "val_top1": 0.1 * e,
                "val_loss": 1.2 / e} for e in range(1, 4)]
    path = tmp_path / "curves.png"
    plot_curves(history, path, title="t", best_epoch=2, baseline={"val_top1": 0.2})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary left
    (fig,) = figures
    loss_ax, metric_ax = fig.axes
    for ax in (loss_ax, metric_ax):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        labels = ax.get_legend_handles_labels()[1]
        assert "best (epoch 2)" in labels
    assert "baseline val_top1" in metric_ax.get_legend_handles_labels()[1]


def test_a_streamed_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    """The streaming loader (parts read per epoch, PartLocalSampler's own generator), stopped
    by an exception at the start of epoch 2 (a Ctrl-C), resumed in the same process."""
    from heads.loop import Trainer
    from heads.train import resume_config, train
    from test_heads_train import small_config, toy_catalog

    store = tmp_path / "store"
    write_toy_store(store)

    def config(runs):
        return small_config("temporal_transformer", "genre", store, tmp_path / runs,
                            epochs=3, patience=0, window_sec=8.0, head_kwargs=TT_SMALL,
                            features=("resnet18",), plan="scene", data_loading="stream")

    quiet = {"log": lambda _: None, "catalog": toy_catalog()}
    whole = train(config("whole"), **quiet)
    original = Trainer._train_epoch

    def interrupted_at_epoch_2(self, batches):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, batches)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(config("stopped"), **quiet)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    (stopped,) = (tmp_path / "stopped").iterdir()
    resumed = train(resume_config(stopped), resume=stopped, **quiet)
    assert resumed["run_dir"] == str(stopped)
    assert json.loads((stopped / "metrics.json").read_text()) == json.loads(
        (Path(whole["run_dir"]) / "metrics.json").read_text())


def test_a_run_killed_after_it_stopped_early_only_reports(tmp_path):
    """Killed between its early stop and metrics.json: resuming trains no more epochs."""
    from heads.train import resume_config, train
    from test_heads_train import small_config, toy_catalog

    store = tmp_path / "store"
    write_toy_store(store)
    config = small_config("mean", "genre", store, tmp_path / "runs", epochs=40, patience=1,
                          lr=0.05, features=("resnet18",))
    quiet = {"log": lambda _: None, "catalog": toy_catalog()}
    first = train(config, **quiet)
    assert first["selection"]["num_epochs_run"] < 40  # it stopped early
    run_dir = Path(first["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").unlink()  # as if killed before writing it
    train(resume_config(run_dir), resume=run_dir, **quiet)
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics

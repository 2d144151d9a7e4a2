"""The one training loop (:mod:`heads.loop`): both recipes train through it, its checkpoints
hold what a resumed run needs, and a resumed run is the run that was never stopped."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from heads.config import TrainConfig
from heads.finetune.recipe import finetune
from heads.loop import Trainer
from heads.optim import SCHEDULES, build_schedule
from heads.train import build, setup, train
from test_finetune import tiny_config
from test_heads_train import small_config, toy_catalog, write_toy_store

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"log": lambda _: None}
# Dropout and random 8 s windows: the resumed run must draw what the first one would have.
TT_SMALL = {"d_model": 16, "num_heads": 2, "num_layers": 1, "ff_dim": 32, "dropout": 0.2}


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    write_toy_store(root)
    return root


def resumable_config(toy_store, runs_dir) -> TrainConfig:
    return small_config("temporal_transformer", "genre", toy_store, runs_dir, epochs=5,
                        patience=0, window_sec=8.0, head_kwargs=TT_SMALL,
                        features=("resnet18",), plan="scene")


def test_both_recipes_train_through_the_one_loop(toy_store, demo_small, tmp_path, monkeypatch):
    models, original = [], Trainer.fit

    def spy(self, *args, **kwargs):
        models.append(type(self.model).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", spy)
    cached = train(small_config("mean", "genre", toy_store, tmp_path / "cached", epochs=2),
                   catalog=toy_catalog(), **QUIET)
    pixels = finetune(tiny_config("stat", demo_small, tmp_path / "pixels"), catalog=demo_small,
                      **QUIET)
    assert models[1] == "PixelModel" and len(models) == 2
    layouts = []
    for result in (cached, pixels):
        run_dir = Path(result["run_dir"])
        files = {p.name for p in run_dir.iterdir()}
        assert {"checkpoint.pt", "checkpoint_last.pt", "metrics.json", "config.json",
                "predictions.parquet", "curves.png", "tensorboard"} <= files
        last = torch.load(run_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
        layouts.append(set(last["resume"]))
        assert last["epoch"] == result["selection"]["num_epochs_run"]
        assert last["config"]["epochs"] == result["history"][-1]["epoch"]
    assert layouts[0] == layouts[1] == {"model", "optimizer", "scheduler", "scaler", "rng",
                                        "history", "best_score", "best_epoch", "since_best",
                                        "world_size"}


def test_a_resumed_run_is_the_run_never_stopped(toy_store, tmp_path, monkeypatch):
    whole = train(resumable_config(toy_store, tmp_path / "whole"), catalog=toy_catalog(),
                  **QUIET)

    # The same run, killed while it starts its third epoch ...
    original = Trainer._train_epoch

    def killed_at_epoch_3(self, batches):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return original(self, batches)

    monkeypatch.setattr(Trainer, "_train_epoch", killed_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(resumable_config(toy_store, tmp_path / "killed"), catalog=toy_catalog(), **QUIET)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    (killed,) = (tmp_path / "killed").iterdir()
    last = torch.load(killed / "checkpoint_last.pt", weights_only=True)
    best = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert last["epoch"] == 2

    # ... and resumed from its checkpoints by a fresh process's recipe.
    config, catalog, data = build(resumable_config(toy_store, tmp_path / "resumed"),
                                  catalog=toy_catalog(), cache=None, **QUIET)
    run = setup(config, catalog, data, **QUIET)
    run.trainer.restore(last, best)
    history = run.trainer.fit(run.batches, run.evaluate, desc="resumed")
    assert history == whole["history"]
    whole_last = torch.load(Path(whole["run_dir"]) / "checkpoint_last.pt", weights_only=True)
    resumed_last = torch.load(run.run_dir / "checkpoint_last.pt", weights_only=True)
    for key, value in whole_last["model"].items():
        assert torch.equal(value, resumed_last["model"][key]), key
    whole_best = torch.load(Path(whole["run_dir"]) / "checkpoint.pt", weights_only=True)
    assert run.trainer.best_epoch == whole_best["epoch"]
    for key, value in run.trainer.model.state_dict().items():
        assert torch.equal(value, whole_best["model"][key]), key


def test_best_checkpoint_is_the_selected_epoch(toy_store, tmp_path):
    result = train(resumable_config(toy_store, tmp_path), catalog=toy_catalog(), **QUIET)
    run_dir = Path(result["run_dir"])
    best = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert best["epoch"] == result["selection"]["best_epoch"]
    assert best["resume"]["history"] == result["history"][:best["epoch"]]
    assert not list(run_dir.glob(".*.tmp"))  # written under a temporary name, then renamed


def test_warmup_cosine_schedule():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    schedule = build_schedule("warmup_cosine", optimizer, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(13):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert lrs[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]  # linear warm-up, then the cosine's top
    assert lrs[8] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[12] == pytest.approx(0.0, abs=1e-12)


def test_unknown_schedule_lists_the_valid_ones():
    with pytest.raises(ValueError, match="warmup_cosine"):
        build_schedule("step", None, warmup_steps=0, total_steps=1)
    with pytest.raises(ValueError, match="--schedule must be one of warmup_cosine, steps"):
        TrainConfig(task="genre", schedule="step")
    assert list(SCHEDULES) == ["warmup_cosine", "steps"]

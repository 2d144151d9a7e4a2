"""Data-parallel training (heads.parallel): Ray Train workers with gloo on CPU, against the
one-worker run with the same global batch.

Tolerances: a 2-worker run sums each step's loss in two halves and then across the workers
(gloo's all-reduce), a 1-worker run in one pass with two intra-op threads; float32 sums in
another order differ in the last bits (~1e-7 relative per step). Losses are compared to rel
1e-5. Weights are compared to 5 % of one step's learning rate: AdamW divides each gradient by
its running RMS, so a component whose gradient is near zero turns last-bit noise into an
update difference that is a fraction of lr (measured: 4.4e-5 at lr 2e-3 after 6 steps).
Anything that is not a reduction order (another batch, another init, a duplicated video) moves
the losses by 1e-3 or more and the weights by about lr per step (the loader's seed drawn from
the wrong generator moved the first epoch's loss by 6e-3).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from heads.parallel import Parallel, ShardedBatchSampler, failure_line

sys.path.insert(0, str(Path(__file__).parent))
from test_heads_train import DATASET, STAN_SMALL, toy_catalog, write_toy_store  # noqa: E402

LOSS_REL = 1e-5
LR = 2e-3
WEIGHT_ABS = 0.05 * LR


# ------------------------------------------------------------------ sampling and evaluation


@pytest.mark.parametrize("num_videos,batch_size,world", [(14, 4, 2), (9, 4, 2), (17, 3, 3),
                                                         (5, 2, 4)])
def test_each_global_batch_is_split_over_the_workers_without_repeats(num_videos, batch_size,
                                                                     world):
    """The workers' slices of a global batch are disjoint, cover it, and differ in size by at
    most one; an empty slice is padding (the batch's first video, marked)."""
    order = torch.randperm(num_videos, generator=torch.Generator().manual_seed(0)).tolist()
    batches = list(torch.utils.data.BatchSampler(order, batch_size * world, drop_last=False))
    samplers = [ShardedBatchSampler(batches, rank=r, world_size=world) for r in range(world)]
    per_rank = [list(s) for s in samplers]
    assert all(len(slices) == len(batches) for slices in per_rank)
    for k, batch in enumerate(batches):
        real = [per_rank[r][k] for r in range(world) if not samplers[r].padding[k]]
        assert sorted(i for part in real for i in part) == sorted(batch)
        sizes = [len(part) for part in real]
        assert max(sizes) - min(sizes) <= 1
        for r in range(world):
            if samplers[r].padding[k]:
                assert per_rank[r][k] == [batch[0]] and len(batch) < world
    assert any(any(s.padding) for s in samplers) == any(len(b) < world for b in batches)


def test_padding_marks_are_taken_in_order():
    sampler = ShardedBatchSampler([[0, 1, 2], [3]], rank=1, world_size=2)
    assert list(sampler) == [[2], [3]]
    assert [sampler.take(), sampler.take()] == [False, True]


@pytest.mark.parametrize("num_videos", [0, 1, 5, 16, 33])
def test_evaluation_scores_each_video_once_in_the_one_worker_batches(num_videos):
    batch_size, world = 4, 3
    shares = [Parallel(rank=r, world_size=world).eval_positions(num_videos, batch_size)
              for r in range(world)]
    joined = np.sort(np.concatenate(shares))
    assert np.array_equal(joined, np.arange(num_videos))
    for share in shares:  # whole runs of batch_size: the batches a one-worker run forms
        starts = share[::batch_size]
        assert all(s % batch_size == 0 for s in starts)


def test_a_dead_worker_is_named_not_its_peers_connection_errors():
    class ActorDiedError(Exception):
        pass

    class WorkerGroupError(Exception):
        def __init__(self):
            super().__init__("Training failed due to worker errors")
            self.worker_failures = {
                0: RuntimeError("Traceback ...\nRuntimeError: Connection closed by peer"),
                1: ActorDiedError("The actor died unexpectedly\n  metadata=ActorMetadata(\n"
                                  "    node_ip='10.0.0.7',\n    pid=4242,\n  )"),
            }

    line = failure_line(WorkerGroupError())
    assert line == ("data-parallel run failed: worker 1 died (pid 4242 on 10.0.0.7: killed, "
                    "out of memory, or its node was lost)")
    assert "\n" not in line


# ------------------------------------------------------------------ cached heads on Ray Train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    write_toy_store(root / "store")
    return root


def stan_config(toy: Path, **overrides):
    from heads.train import TrainConfig

    # Dropout 0: the workers' own dropout draws are the one thing that would differ by design.
    fields = dict(dataset=DATASET, task="genre", head="stan", store=str(toy / "store"),
                  runs_dir=str(toy / "runs"), epochs=3, batch_size=8, lr=LR, patience=0,
                  head_kwargs=STAN_SMALL, features=("resnet18", "r2plus1d_18"), plan="scene")
    return TrainConfig(**{**fields, **overrides})


def final_weights(run_dir: str) -> dict[str, torch.Tensor]:
    last = torch.load(Path(run_dir) / "checkpoint_last.pt", weights_only=True)
    return last["resume"]["model"]


def assert_same_run(one: dict, two: dict) -> None:
    assert [h["epoch"] for h in one["history"]] == [h["epoch"] for h in two["history"]]
    for a, b in zip(one["history"], two["history"]):
        assert a["lr"] == b["lr"]
        for key in ("train_loss", "val_loss"):
            assert b[key] == pytest.approx(a[key], rel=LOSS_REL), key
    assert one["selection"]["best_epoch"] == two["selection"]["best_epoch"]
    wa, wb = final_weights(one["run_dir"]), final_weights(two["run_dir"])
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < WEIGHT_ABS, worst


@pytest.fixture(scope="module")
def two_worker_stan(toy, ray_local):
    """The toy STAN task on 2 gloo workers (4 videos each, global batch 8; 14 train videos:
    batches of 8 and 6) and on one worker with batches of 8."""
    import os

    from heads.train import train

    lines: list[str] = []
    one = train(stan_config(toy), catalog=toy_catalog(), log=lambda _: None)
    here = os.getcwd()
    os.chdir(toy)  # relative paths, as a user types them: the workers must see the same files
    try:
        two = train(stan_config(toy, batch_size=4, data_parallel=2, store="store",
                                runs_dir="runs"), catalog=toy_catalog(), log=lines.append)
    finally:
        os.chdir(here)
    two["run_dir"] = str(toy / two["run_dir"])
    return one, two, lines


@pytest.mark.integration
def test_two_workers_train_as_one_worker_with_the_same_global_batch(toy, two_worker_stan):
    one, two, lines = two_worker_stan
    assert_same_run(one, two)
    assert "data-parallel: 2 workers on CPUs (gloo)" in lines
    assert lines[-1] == f"run written to {Path(two['run_dir']).relative_to(toy)}"
    saved = torch.load(Path(two["run_dir"]) / "checkpoint_last.pt", weights_only=True)
    assert saved["resume"]["world_size"] == 2 and len(saved["resume"]["rng_ranks"]) == 2
    assert saved["config"]["batch_size"] == 4 and saved["config"]["data_parallel"] == 2


@pytest.mark.integration
def test_two_worker_evaluation_equals_one_workers_on_odd_splits(two_worker_stan):
    """val and test hold 5 videos each: worker 0 scores 4, worker 1 one; every video is scored
    exactly once and the metrics equal the one-worker run's."""
    one, two, _ = two_worker_stan
    assert one["num_videos"]["val"] == 5 and one["num_videos"]["test"] == 5
    for split in ("train", "val", "test"):
        assert two["metrics"][split] == one["metrics"][split], split
    frames = [pl.read_parquet(Path(r["run_dir"]) / "predictions.parquet") for r in (one, two)]
    for split in ("val", "test"):
        a, b = (f.filter(pl.col("split") == split) for f in frames)
        assert b["video_id"].to_list() == a["video_id"].to_list()  # once each, in order
        assert b["predicted"].to_list() == a["predicted"].to_list()
        assert np.allclose(np.stack(b["outputs"].to_list()), np.stack(a["outputs"].to_list()),
                           atol=1e-5)


@pytest.mark.integration
def test_only_worker_zero_writes_the_run(two_worker_stan):
    _, two, _ = two_worker_stan
    run_dir = Path(two["run_dir"])
    assert sorted(p.name for p in run_dir.glob("*.json")) == [
        "config.json", "environment.json", "metrics.json"]
    assert len(list((run_dir / "tensorboard").glob("events.*"))) == 1
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.integration
def test_a_killed_worker_fails_the_run_naming_it_and_resume_ends_equal(toy, two_worker_stan,
                                                                       monkeypatch):
    """SIGKILL of worker 1 at the first step of epoch 2: the run fails within a minute with one
    line naming worker 1; `heads train --resume` then continues from epoch 1's checkpoint on 2
    workers and ends where the uninterrupted 2-worker run ended; another worker count is
    refused."""
    from heads.parallel import DataParallelError
    from heads.train import resume_config, train

    _, uninterrupted, _ = two_worker_stan
    monkeypatch.setenv("LONGVID_FAULT", "train_step:rank1-epoch2-step0")
    config = stan_config(toy, batch_size=4, data_parallel=2, runs_dir=str(toy / "killed"))
    started = time.monotonic()
    with pytest.raises(DataParallelError, match=r"worker 1 died \(pid \d+") as err:
        train(config, catalog=toy_catalog(), log=lambda _: None)
    assert time.monotonic() - started < 90  # Ray Train's start (~15 s) and its health check
    assert "\n" not in str(err.value)
    monkeypatch.delenv("LONGVID_FAULT")
    (run_dir,) = (toy / "killed").iterdir()
    assert torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["epoch"] == 1
    with pytest.raises(ValueError, match="contradicts its data_parallel 2"):
        resume_config(run_dir, {"data_parallel": 3})
    resumed = train(resume_config(run_dir, {}), catalog=toy_catalog(), resume=run_dir,
                    log=lambda _: None)
    assert resumed["history"] == uninterrupted["history"]
    wa, wb = final_weights(resumed["run_dir"]), final_weights(uninterrupted["run_dir"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
@pytest.mark.integration
def test_with_max_failures_ray_train_restarts_the_workers_from_the_last_checkpoint(
        toy, two_worker_stan, monkeypatch, tmp_path):
    """--max-failures 1: worker 1 is SIGKILLed once (a marker file) at the first step of epoch
    2; Ray Train starts both workers again, they resume after epoch 1 in the same run
    directory and end where the uninterrupted run ended."""
    from heads.train import train

    _, uninterrupted, _ = two_worker_stan
    monkeypatch.setenv("LONGVID_FAULT", f"train_step:rank1-epoch2-step0:{tmp_path / 'once'}")
    config = stan_config(toy, batch_size=4, data_parallel=2, max_failures=1,
                         runs_dir=str(tmp_path / "runs"))
    restarted = train(config, catalog=toy_catalog(), log=lambda _: None)
    assert (tmp_path / "once").exists()  # the fault fired
    saved = json.loads((Path(restarted["run_dir"]) / "config.json").read_text())
    assert [r["after_epoch"] for r in saved["resumes"]] == [1]
    assert restarted["history"] == uninterrupted["history"]
    wa, wb = final_weights(restarted["run_dir"]), final_weights(uninterrupted["run_dir"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_checkpoint_of_another_worker_count_is_refused(toy, two_worker_stan, tmp_path):
    """Trainer.restore reads the worker count from the checkpoint (a run moved by hand)."""
    from heads.loop import Trainer

    _, two, _ = two_worker_stan
    last = torch.load(Path(two["run_dir"]) / "checkpoint_last.pt", weights_only=True)
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model, config=stan_config(toy), groups=[{"params": model.parameters()}],
                      steps_per_epoch=1, kind="classification", run_dir=tmp_path,
                      checkpoint_fields=dict)
    with pytest.raises(ValueError, match="written by a run of 2 data-parallel worker"):
        trainer.restore(last, last)


# ------------------------------------------------------------------ end to end, from pixels


@pytest.mark.integration
def test_end_to_end_on_two_workers_equals_one(demo_small, ray_local, tmp_path):
    """The stan_small preset from pixels on the small demo (ResNet-18 trained, its BatchNorm
    frozen as the preset has it; the 3D stream frozen): 2 workers x 1 video against 1 x 2.

    Not STAT: its token embedding trains BatchNorm from scratch, whose batch statistics are
    each worker's own unless --sync-batchnorm, which torch runs on GPUs only (checked below)."""
    from heads.finetune.recipe import finetune
    from test_finetune import tiny_config

    kwargs = dict(epochs=2, patience=0, lr=LR)
    one = finetune(tiny_config("stan_small", demo_small, tmp_path / "one", **kwargs),
                   log=lambda _: None)
    two = finetune(tiny_config("stan_small", demo_small, tmp_path / "two", batch_size=1,
                               data_parallel=2, **kwargs), log=lambda _: None)
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=LOSS_REL)
        assert b.get("val_loss") == pytest.approx(a.get("val_loss"), rel=LOSS_REL)
    assert one["selection"]["best_epoch"] == two["selection"]["best_epoch"]
    assert two["metrics"] == one["metrics"]
    states = [torch.load(Path(r["run_dir"]) / "checkpoint.pt", weights_only=True)
              for r in (one, two)]
    for key in ("model", "encoder_states"):
        a, b = (torch.utils._pytree.tree_leaves(s[key]) for s in states)
        assert max(float((x - y).abs().max()) for x, y in zip(a, b)) < WEIGHT_ABS, key


def test_sync_batchnorm_without_gpus_is_refused_before_ray_starts(demo_small, tmp_path):
    from heads.finetune.recipe import finetune
    from test_finetune import tiny_config

    config = tiny_config("stat", demo_small, tmp_path, data_parallel=2, device="cpu",
                         sync_batchnorm=True)
    with pytest.raises(ValueError, match="--sync-batchnorm needs CUDA GPUs"):
        finetune(config, log=lambda _: None)


# ------------------------------------------------------------------ devices and sweeps


def test_device_auto_picks_the_cpu_here_and_says_so(toy, tmp_path):
    from heads.train import train

    lines: list[str] = []
    train(stan_config(toy, epochs=1, device="auto", runs_dir=str(tmp_path)),
          catalog=toy_catalog(), log=lines.append)
    assert "device: cpu (auto: torch sees no CUDA GPU)" in lines
    assert stan_config(toy).device == "auto"  # the default


@pytest.mark.parametrize("flag", ["cuda", "cuda:1", "gpu"])
def test_a_gpu_device_without_a_gpu_is_one_line(flag, toy):
    from typer.testing import CliRunner

    from heads.cli import app

    result = CliRunner().invoke(app, ["train", "--task", "genre", "--device", flag,
                                      "--store", str(toy / "store")])
    assert result.exit_code == 2
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("error: --device") and ("cpu" in line)


@pytest.mark.integration
def test_a_gpu_sweep_on_a_cluster_without_gpus_fails_before_any_cell(toy, ray_local,
                                                                      tmp_path, monkeypatch):
    import catalogs
    from typer.testing import CliRunner

    from heads.cli import app

    monkeypatch.setattr(catalogs, "get_catalog", lambda *args, **kwargs: toy_catalog())
    result = CliRunner().invoke(app, [
        "sweep", "--heads", "mean", "--tasks", "genre", "--seeds", "1", "--dataset", DATASET,
        "--store", str(toy / "store"), "--runs-dir", str(tmp_path), "--gpus-per-run", "0.5",
        "--set", "features=[\"resnet18\"]"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: --gpus-per-run 0.5: the Ray cluster has 0 GPU(s); drop "
                      "--gpus-per-run to train on the CPUs, or join a cluster with GPUs "
                      "(--address / RAY_ADDRESS)"], result.output
    assert not list(tmp_path.glob("*/runs/*"))  # no cell ran


@pytest.mark.parametrize("kwargs,message", [
    ({"device": "cuda"}, "give each run a GPU share with --gpus-per-run"),
    ({"device": "cpu", "gpus": 0.5}, "drop one of them"),
    ({"gpus": 1.5}, "a fraction of one GPU"),
    ({"cpus": 0}, "--cpus-per-run must be positive"),
])
def test_sweep_resources_are_checked_before_ray_starts(kwargs, message):
    from heads.experiments import RunResources

    with pytest.raises(ValueError, match=message):
        RunResources(**kwargs)


def test_sweep_cells_fit_the_cluster_and_take_their_device():
    from heads.experiments import RunResources

    four_per_gpu = RunResources(cpus=2, gpus=0.25)
    assert four_per_gpu.cell_device == "cuda"
    assert four_per_gpu.check({"CPU": 32, "GPU": 2}) == 8  # 2 GPUs x 4, CPUs to spare
    assert four_per_gpu.check({"CPU": 6, "GPU": 2}) == 3  # CPU-bound
    assert RunResources().cell_device == "cpu"
    assert RunResources().check({"CPU": 2}) == 2

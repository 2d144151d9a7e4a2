"""``heads finetune``: end-to-end training from decoded frames on the small demo, at tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from heads.cli import app
from heads.finetune.build import build_model, init_head_from, load_checkpoint
from heads.finetune.clips import ClipBatch, StreamPixels, VideoClipDataset, collate
from heads.finetune.config import PRESETS, FinetuneConfig, resolve_config, resolve_device
from heads.finetune.models import BackboneEncoder, Conv3dStem
from heads.finetune.recipe import finetune, load_finetuned, param_groups, predict_clips
from heads.loop import Trainer
from heads.runtime import autocast_and_scaler
from pipeline.sampling import PlanConfig
from pipeline.scenes import SceneDetectConfig
from tests.conftest import write_video

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = "most_screen_time"
STAN_TINY = {"d_model": 32, "num_heads": 2, "ff_dim": 64, "dropout": 0.0}
HEAD_KWARGS = {
    "stan_small": STAN_TINY,
    "stan_large": STAN_TINY,
    "vtn": {"d_model": 32, "num_heads": 2, "ff_dim": 64, "window": 4, "max_positions": 64},
    # The paper's STAT (heads.models.stat) at tiny widths, one block per stage.
    "stat": {"dims": [8, 16, 32], "depths": [1, 1, 1], "num_heads": [1, 2, 2],
             "stem_channels": [4, 8]},
}
R2PLUS1D_PARAMS = 31_300_125  # torchvision r2plus1d_18 without its classifier


def tiny_config(preset: str, demo_small, runs_dir, **overrides) -> FinetuneConfig:
    """16 px crops, 2-frame clips, 4 frames per video for the uniform and full plans (training
    clips of 3), one epoch."""
    fields = dict(
        task=TASK, preset=preset, data_root=str(demo_small.root),
        catalog_options={"variant": "small"}, frame_size_px=16, frames_per_clip=2, num_frames=4,
        train_clip_frames=3,
        stem_dim=16, stem_patch_px=8, epochs=1, batch_size=2, lr=1e-3, num_workers=0,
        cache_decoded=True, runs_dir=str(runs_dir), head_kwargs=HEAD_KWARGS[preset],
        weights=("none",),
    )
    return FinetuneConfig(**{**fields, **overrides})


def synthetic_batch(model, lengths=(3, 2), size_px=16, frames_per_clip=2) -> ClipBatch:
    """Random uint8 windows for every stream of ``model`` (B = len(lengths) videos)."""
    gen = torch.Generator().manual_seed(0)
    frames = []
    for encoder in model.encoders:
        clip = getattr(encoder, "is_clip", False)
        shape = (sum(lengths),) + ((frames_per_clip,) if clip else ()) + (3, size_px, size_px)
        frames.append(torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen))
    return ClipBatch(frames, [torch.tensor(lengths)] * len(frames), torch.tensor([0, 2]),
                     torch.arange(len(lengths)), [])


def step_trainer(model, config, run_dir, autocast=None, scaler=None) -> Trainer:
    """The shared loop's trainer around ``model``, for single :meth:`Trainer.step` calls."""
    model.train()  # as the loop does at each epoch (frozen backbones keep BN in eval)
    return Trainer(model, config=config, groups=param_groups(model, config), steps_per_epoch=1,
                   kind="classification", run_dir=run_dir, checkpoint_fields=dict,
                   autocast=autocast, scaler=scaler)


@pytest.fixture(scope="module")
def preset_run(demo_small, tmp_path_factory):
    """``preset -> (config, result)`` of one tiny run per preset, made on first use."""
    runs = {}

    def run(preset: str):
        if preset not in runs:
            config = tiny_config(preset, demo_small, tmp_path_factory.mktemp(preset))
            runs[preset] = config, finetune(config, catalog=demo_small, log=lambda _: None)
        return runs[preset]

    return run


# STAN-Large back-propagates through R(2+1)D (the costliest of the four): `pytest -m slow`.
@pytest.mark.parametrize("preset", [
    pytest.param(p, marks=pytest.mark.slow) if p == "stan_large" else p for p in PRESETS
])
def test_preset_trains_from_pixels_on_the_demo(preset, preset_run):
    _, result = preset_run(preset)
    run_dir = Path(result["run_dir"])
    # The run directory of the shared loop (heads.loop), as for `heads train`.
    assert {p.name for p in run_dir.iterdir()} == {
        "config.json", "environment.json", "checkpoint.pt", "checkpoint_last.pt", "metrics.json",
        "predictions.parquet", "curves.png", "tensorboard"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_videos"] == {"train": 4, "val": 2, "test": 2}
    assert all(set(metrics["metrics"][s]) == {"top1"} for s in ("train", "val", "test"))
    assert metrics["failed"] == {}
    counts = metrics["parameters"]
    frozen = {"stan_small": R2PLUS1D_PARAMS}.get(preset, 0)
    assert counts["frozen"] == frozen
    assert counts["trainable"] + counts["frozen"] == sum(counts["per_part"].values())
    checkpoint = load_checkpoint(run_dir)
    trainable = [e["trainable"] for e in checkpoint["encoders"]]
    assert trainable == [name in PRESETS[preset].trainable for name in PRESETS[preset].encoders]
    assert sorted(checkpoint["encoder_states"]) == [str(i) for i, t in enumerate(trainable) if t]
    # The stat preset evaluates val and test on 5 × 1 views (STAT, Implementation Details).
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["test_views"] == ([5, 1] if preset == "stat" else [1, 1])


def test_run_files_record_the_command_and_mark_the_best_epoch(demo_small, tmp_path,
                                                              monkeypatch):
    """As `heads train`: config.json holds the command line, curves.png marks the selected epoch
    and the majority baseline; the stat preset trains with DeiT's label smoothing."""
    import sys

    import heads.runs

    plots, losses = [], []
    real_plot, real_fit = heads.runs.plot_curves, Trainer.fit

    def plot(*args, **kwargs):
        plots.append(kwargs)
        real_plot(*args, **kwargs)

    def fit(self, *args, **kwargs):
        losses.append(self.loss_fn)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(heads.runs, "plot_curves", plot)
    monkeypatch.setattr(Trainer, "fit", fit)
    argv = ["heads", "finetune", "--preset", "stat", "--epochs", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    config = tiny_config("stat", demo_small, tmp_path, epochs=2, test_views=(1, 1))
    result = finetune(config, catalog=demo_small, log=lambda _: None)
    saved = json.loads((Path(result["run_dir"]) / "config.json").read_text())
    assert saved["argv"] == argv
    assert (saved["config"]["weight_decay"], saved["config"]["warmup_epochs"],
            saved["config"]["label_smoothing"]) == (0.05, 5, 0.1)  # the preset's (DeiT)
    assert losses[0].label_smoothing == 0.1
    (kwargs,) = plots
    selection = result["selection"]
    assert kwargs["best_epoch"] == selection["best_epoch"] >= 1
    assert selection["metric"] == "val_top1"
    assert kwargs["baseline"] == {"val_top1": result["baseline"]["val"]["top1"]}


def test_checkpoint_rebuilds_the_model(preset_run, demo_small):
    config, result = preset_run("stan_small")
    model, checkpoint = load_finetuned(result["run_dir"])
    # The trained 2D backbone differs from its initialisation; its BN statistics do not (frozen
    # by default), and the frozen 3D backbone is rebuilt from its weights.
    fresh, _, _ = build_model(resolve_config(config), num_outputs=3, checkpointing=False)
    trained, initial = model.encoders[0].net.state_dict(), fresh.encoders[0].net.state_dict()
    assert not torch.equal(trained["conv1.weight"], initial["conv1.weight"])
    assert torch.equal(trained["bn1.running_mean"], initial["bn1.running_mean"])
    # The rebuilt model predicts what the run measured on the test split.
    resolved = resolve_config(config)
    _, streams, _ = build_model(resolved, num_outputs=3, checkpointing=False)
    test = demo_small.split("test")
    labels = dict(zip(demo_small.labels["video_id"], demo_small.labels[TASK]))
    classes = list(demo_small.task(TASK).classes)
    targets = np.array([classes.index(labels[v]) for v in test["video_id"]])
    dataset = VideoClipDataset(
        test["path"].to_list(), targets, streams=streams,
        plan=PlanConfig(name="scene", frames_per_clip=2), scenes=SceneDetectConfig(),
        train=False,
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate)
    outputs, indices, _ = predict_clips(model, loader, torch.device("cpu"), None)
    top1 = float((outputs.argmax(1) == targets[indices]).mean())
    assert top1 == pytest.approx(result["metrics"]["test"]["top1"])


@pytest.mark.parametrize("preset", ["stan_small", "stan_large"])
def test_frozen_parameters_stay_trainable_ones_change(preset, demo_small, tmp_path):
    """STAN §3: STAN-Small stops the gradient at the 3D stream, STAN-Large trains both."""
    config = resolve_config(tiny_config(preset, demo_small, tmp_path))
    model, _, _ = build_model(config, num_outputs=3, checkpointing=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = step_trainer(model, config, tmp_path)
    for _ in range(2):
        batch = synthetic_batch(model)
        trainer.step((batch.frames, batch.lengths), batch.targets)
    after = model.state_dict()
    spatial, temporal = model.encoders
    assert spatial.trainable and temporal.trainable == (preset == "stan_large")

    def changed(prefix: str, suffix: str = "weight") -> list[bool]:
        return [not torch.equal(before[k], after[k]) for k in before
                if k.startswith(prefix) and k.endswith(suffix)]

    assert all(changed("head.")) and all(changed("encoders.0.net.", "conv1.weight"))
    assert any(changed("encoders.0.net.layer4."))
    if preset == "stan_small":
        assert not any(changed("encoders.1.", "")), "a frozen tensor moved"
        assert all(p.grad is None for p in temporal.parameters())
    else:
        assert any(changed("encoders.1.net.layer4."))
    # BatchNorm statistics are kept (train_batchnorm=False) in every backbone.
    assert not any(changed("encoders.", "running_mean"))


def test_augmentation_is_one_draw_per_video(tmp_path):
    """Every frame of every stream of a video gets the same crop and flip; eval is the centre."""
    rng = np.random.default_rng(0)
    pattern = np.repeat(np.repeat(rng.integers(0, 256, (8, 12, 3)), 8, 0), 8, 1)  # (64, 96, 3)
    path = write_video(tmp_path / "static.mp4", np.repeat(pattern[None].astype(np.uint8), 30, 0))
    streams = [StreamPixels(1, 16, 18), StreamPixels(2, 8, 9)]
    args = dict(streams=streams, plan=PlanConfig(name="uniform", num_frames=3),
                scenes=SceneDetectConfig(detector="none"), seed=0)
    train = VideoClipDataset([str(path)], np.zeros(1, np.int64), train=True, **args)
    evaluation = VideoClipDataset([str(path)], np.zeros(1, np.int64), train=False, **args)
    rng_state = torch.random.get_rng_state()
    items = {}
    for epoch in range(1, 5):
        train.set_epoch(epoch)
        items[epoch] = train[0]
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the draw never leaks
    train.set_epoch(1)
    again = train[0]
    assert all(torch.equal(a, b) for a, b in zip(again.frames, items[1].frames))
    frames, clips = items[1].frames  # (3, 3, 16, 16), (3, 2, 3, 8, 8)
    assert frames.shape == (3, 3, 16, 16) and clips.shape == (3, 2, 3, 8, 8)
    diff = lambda a, b: (a.float() - b.float()).abs().mean().item()  # noqa: E731
    assert max(diff(frames[i], frames[0]) for i in range(3)) < 3
    assert max(diff(clips[i, j], clips[0, 0]) for i in range(3) for j in range(2)) < 3
    # The 8 px stream shows the same crop as the 16 px one.
    from torchvision.transforms.v2 import functional as TF

    small = TF.resize(frames[0], [8, 8], antialias=True)
    assert diff(small, clips[0, 0]) < 12
    draws = [items[e].frames[0][0] for e in items]
    assert any(diff(draws[0], d) > 20 for d in draws[1:]), "every epoch drew the same crop"
    centre = evaluation[0].frames[0]
    assert all(diff(centre[0], d) > 10 for d in draws)  # train crops are not the centre crop


def test_vtn_training_clips_pick_frames_of_a_random_clip(tmp_path):
    """VTN §4.1 end to end: each training fetch keeps N of the `full` plan's frames at even
    instants of a random clip (a new clip every epoch); evaluation keeps all of them."""
    frames = np.repeat(np.arange(100, dtype=np.uint8)[:, None, None, None] * 2, 64, 1)
    frames = np.repeat(np.repeat(frames, 96, 2), 3, 3)  # (100, 64, 96, 3): brightness = frame
    path = write_video(tmp_path / "ramp.mp4", frames, fps=25)  # 4 s
    args = dict(streams=[StreamPixels(1, 16, 18)], plan=PlanConfig(name="full",
                full_num_frames=20), scenes=SceneDetectConfig(detector="none"), seed=0)
    train = VideoClipDataset([str(path)], np.zeros(1, np.int64), train=True, clip_sec=1.2,
                             clip_frames=4, **args)
    evaluation = VideoClipDataset([str(path)], np.zeros(1, np.int64), train=False, clip_sec=0.0,
                                  **args)
    assert evaluation[0].frames[0].shape[0] == 20
    levels = []
    for epoch in range(6):
        train.set_epoch(epoch)
        clip = train[0].frames[0]  # (4, 3, 16, 16)
        assert clip.shape[0] == 4
        level = clip.float().mean(dim=(1, 2, 3)) / 2  # ≈ the frame index
        assert (level.diff() >= -1).all()  # in time order
        assert 0.9 * 25 <= (level[-1] - level[0]).item() <= 1.5 * 25  # about 1.2 s apart
        levels.append(round(level[0].item()))
    assert len(set(levels)) > 1  # a new clip every epoch


def test_stat_training_samples_a_random_frame_of_each_segment(tmp_path):
    """STAT, Implementation Details: one random frame per segment in training, the segment
    centres at test; the draw follows the seed, the epoch and the item."""
    from heads.finetune.config import FinetuneConfig, resolve_config

    frames = np.repeat(np.arange(100, dtype=np.uint8)[:, None, None, None] * 2, 64, 1)
    frames = np.repeat(np.repeat(frames, 96, 2), 3, 3)  # (100, 64, 96, 3): brightness = frame
    path = write_video(tmp_path / "ramp.mp4", frames, fps=25)  # 4 s
    args = dict(streams=[StreamPixels(1, 16, 18)], plan=PlanConfig(name="uniform", num_frames=4),
                scenes=SceneDetectConfig(detector="none"), seed=0)
    train = VideoClipDataset([str(path)], np.zeros(1, np.int64), train=True,
                             random_frames=True, **args)
    evaluation = VideoClipDataset([str(path)], np.zeros(1, np.int64), train=False, **args)

    def levels(item):  # ≈ the frame index of each of the 4 samples
        return (item.frames[0].float().mean(dim=(1, 2, 3)) / 2).round().tolist()

    centres = levels(evaluation[0])
    assert centres == pytest.approx([12.5, 37.5, 62.5, 87.5], abs=1.5)  # segments of 25 frames
    draws = []
    for epoch in range(5):
        train.set_epoch(epoch)
        draw = levels(train[0])
        assert all(25 * k - 1 <= v <= 25 * k + 25 for k, v in enumerate(draw))  # in its segment
        draws.append(draw)
    assert len({tuple(d) for d in draws}) == 5 and centres not in draws
    train.set_epoch(2)
    assert levels(train[0]) == draws[2]  # reproducible
    assert resolve_config(FinetuneConfig(task="t", preset="stat")).train_random_frames is True
    assert resolve_config(FinetuneConfig(task="t", preset="vtn")).train_random_frames is False
    with pytest.raises(ValueError, match="not scenes"):
        resolve_config(FinetuneConfig(task="t", preset="stan_small", train_random_frames=True))


def test_grad_checkpointing_gives_the_same_gradients():
    from pipeline.backbones import create_backbone

    frames = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([3, 2])
    grads = []
    for checkpointing in (False, True):
        encoder = BackboneEncoder(create_backbone("resnet18", weights="none"), trainable=True, chunk_windows=2,
                                  grad_checkpoint=checkpointing).train()
        tokens, mask = encoder(frames, lengths)  # (2, 3, 512), (2, 3)
        assert tokens.shape == (2, 3, 512) and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
        (tokens[mask] ** 2).mean().backward()
        grads.append([p.grad.clone() for p in encoder.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_and_checkpointing_paths_train(dtype, tmp_path):
    """The GPU code paths (autocast, fp16 gradient scaling, checkpointing) also run on CPU."""
    config = resolve_config(FinetuneConfig(task=TASK, preset="stat", frame_size_px=16,
                                           stem_dim=16, stem_patch_px=8,
                                           head_kwargs=HEAD_KWARGS["stat"]))
    model, _, _ = build_model(config, num_outputs=3, checkpointing=True)
    before = model.encoders[0].embedding.convs[0].weight.clone()
    autocast, scaler = autocast_and_scaler(torch.device("cpu"), dtype)
    trainer = step_trainer(model, config, tmp_path, autocast, scaler)
    batch = synthetic_batch(model, lengths=(4, 4))
    weight = model.encoders[0].embedding.convs[0].weight
    for _ in range(4):  # fp16: the scaler skips a step whose scaled gradients overflow
        loss = trainer.step((batch.frames, batch.lengths), batch.targets)
        if not torch.equal(before, weight):
            break
    assert np.isfinite(loss) and not torch.equal(before, weight)


def test_device_defaults():
    cpu = resolve_device(FinetuneConfig(task=TASK))
    assert cpu == (torch.device("cpu"), None, False)  # fp32, no checkpointing on CPU
    chosen = resolve_device(FinetuneConfig(task=TASK, precision="fp16", grad_checkpoint=True))
    assert chosen == (torch.device("cpu"), torch.float16, True)
    with pytest.raises(ValueError, match="--precision"):
        FinetuneConfig(task=TASK, precision="fp8")


def test_stem_embeds_tubelets():
    stem = Conv3dStem(dim=8, patch_px=4, tubelet_frames=2)
    frames = torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8)
    tokens, mask = stem(frames, torch.tensor([4, 3]))
    assert tokens.shape == (2, 2, 16, 8)  # T' = ceil(4 / 2), N = (16 / 4)², D
    assert mask.tolist() == [[True, True], [True, True]]
    tokens, mask = stem(frames[:5], torch.tensor([4, 1]))
    assert mask.tolist() == [[True, True], [True, False]]
    with pytest.raises(ValueError, match="multiple of the 4 px patch"):
        stem(torch.zeros(2, 3, 18, 18, dtype=torch.uint8), torch.tensor([2]))


@pytest.fixture(scope="module")
def cached_run(demo_small, tmp_path_factory):
    """A real `heads train` run (tiny STAN) on random 512-d scene features of the demo videos."""
    from heads.train import TrainConfig, train
    from pipeline.store import FeatureStore, fingerprint

    root = tmp_path_factory.mktemp("cached")
    store = FeatureStore(root / "store")
    rng = np.random.default_rng(0)
    for backbone in ("resnet18", "r2plus1d_18"):
        spec = {"dataset": "demo", "backbone": backbone, "plan": "scene", "weights": "none"}
        fs = store.create(f"demo-{backbone}-{fingerprint(spec)[:12]}", spec=spec,
                          token_kind="pooled", dim=512, dtype="float16")
        for video_id in demo_small.videos["video_id"]:
            fs.write_video(video_id, rng.normal(size=(4, 512)), start_sec=np.arange(4.0),
                           end_sec=np.arange(1.0, 5.0), scene_idx=np.arange(4))
    config = TrainConfig(task=TASK, head="stan", store=str(root / "store"),
                         runs_dir=str(root / "runs"), epochs=1, head_kwargs=STAN_TINY)
    return train(config, catalog=demo_small, log=lambda _: None)["run_dir"]


def test_init_from_carries_the_head_over(cached_run, demo_small, tmp_path):
    config = resolve_config(tiny_config("stan_small", demo_small, tmp_path, init_from=cached_run,
                                        head_kwargs={}))
    checkpoint = load_checkpoint(cached_run)
    kwargs = {k: v for k, v in checkpoint["head_args"].items() if k not in ("in_dim",
                                                                             "num_outputs")}
    model, _, _ = build_model(config, num_outputs=3, checkpointing=False, head_kwargs=kwargs)
    assert init_head_from(model, config, checkpoint)
    for key, value in checkpoint["model"].items():
        assert torch.equal(model.head.state_dict()[key], value), key
    assert torch.equal(model.feature_std_1, checkpoint["standardizer"]["std"][1])
    # End to end: the recipe takes the same path and says so.
    lines = []
    finetune(tiny_config("stan_small", demo_small, tmp_path, init_from=cached_run, head_kwargs={}),
             catalog=demo_small, log=lines.append)
    assert any("head weights from" in line and "standardisation" in line for line in lines)


@pytest.mark.parametrize("overrides, message", [
    ({"head_kwargs": {"d_model": 64, "num_heads": 2}}, "does not fit this head"),
    ({"encoders": ("resnet18", "resnet18")}, "this run's streams come from"),
    ({"preset": "vtn", "head_kwargs": {}}, "trained head 'stan'"),
])
def test_init_from_mismatch_fails_clearly(cached_run, demo_small, tmp_path, overrides, message):
    fields = {"preset": "stan_small", "head_kwargs": {}, **overrides}
    config = tiny_config(fields.pop("preset"), demo_small, tmp_path, init_from=cached_run,
                         **fields)
    with pytest.raises(ValueError, match=message):
        finetune(config, catalog=demo_small, log=lambda _: None)


def test_cli_finetune(demo_small, tmp_path):
    args = ["finetune", "--task", TASK, "--preset", "vtn", "--data-root", str(demo_small.root),
            "--variant", "small", "--frame-size-px", "16", "--num-frames", "4", "--epochs", "1",
            "--num-workers", "0", "--cache-decoded", "--runs-dir", str(tmp_path), "--weights", "none"]
    args += [f"--head-kwarg={k}={v}" for k, v in HEAD_KWARGS["vtn"].items()]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "parameters: trainable" in result.output and "baseline top1" in result.output
    bad = CliRunner().invoke(app, args + ["--trainable", "r2plus1d_18"])
    assert bad.exit_code == 2 and "not an encoder of this run" in bad.output
    bad = CliRunner().invoke(app, args + ["--num-workers", "2"])
    assert bad.exit_code == 2 and "--num-workers 0" in bad.output


def test_heads_train_end_to_end_hands_shared_flags_to_the_finetune_recipe(monkeypatch):
    import heads.finetune.recipe

    seen = []
    monkeypatch.setattr(heads.finetune.recipe, "finetune", lambda config, log, address: seen.append(config))
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--end-to-end", "--head", "longformer", "--task", "t",
                                 "--variant", "small", "--epochs", "3", "--lr", "0.001",
                                 "--head-kwarg", "num_layers=1"])
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert (config.preset, config.head, config.task, config.epochs, config.lr) == (
        "vtn", None, "t", 3, 0.001)
    assert config.catalog_options == {"variant": "small"}
    assert config.head_kwargs == {"num_layers": 1}
    result = runner.invoke(app, ["train", "--end-to-end", "--preset", "stan_large", "--task", "t"])
    assert result.exit_code == 0 and seen[-1].preset == "stan_large"
    # cached-feature flags are refused, not ignored; a head without a preset is named
    result = runner.invoke(app, ["train", "--end-to-end", "--head", "stan", "--task", "t",
                                 "--store", "s"])
    assert result.exit_code == 2 and "--store" in result.output
    result = runner.invoke(app, ["train", "--end-to-end", "--head", "mean", "--task", "t"])
    assert result.exit_code == 2 and "no preset for head 'mean'" in result.output

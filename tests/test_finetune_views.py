"""Multi-view testing of ``heads finetune`` (STAT, Implementation Details: 5 × 1 views at T = 16,
32, 3 × 3 at T = 64, averaged), and the presets' optimiser settings (STAT: DeiT's recipe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from heads.cli import app
from heads.finetune.cli import parse_views
from heads.finetune.clips import (
    StreamPixels,
    VideoClipDataset,
    collate,
    crop_box,
    decode_windows,
    view_offsets,
)
from heads.finetune.config import FINETUNE_DEFAULTS, FinetuneConfig, resolve_config
from heads.finetune.recipe import predict_clips
from heads.windows import average_windows
from pipeline.sampling import PlanConfig, sample_instants
from pipeline.scenes import SceneDetectConfig
from tests.conftest import write_video

pytestmark = pytest.mark.usefixtures("one_thread")

STREAM = StreamPixels(1, 16, 18)  # 16 px crops of 16/18 of the short side
PLAN = PlanConfig(name="uniform", num_frames=4)
SCENES = SceneDetectConfig(detector="none")


@pytest.fixture(scope="module")
def ramp_video(tmp_path_factory):
    """100 grey frames of 64 × 96 px at 25 fps (4 s) whose level is the frame index plus a
    left-to-right gradient: a crop's mean tells the instant (temporal view) and the position
    along the long side (spatial view)."""
    time = np.arange(100)[:, None, None]  # (T, 1, 1)
    across = np.linspace(0, 150, 96)[None, None, :]  # (1, 1, W)
    level = np.broadcast_to(time + across, (100, 64, 96)).astype(np.uint8)
    frames = np.repeat(level[..., None], 3, axis=3)  # (100, 64, 96, 3)
    return str(write_video(tmp_path_factory.mktemp("views") / "ramp.mp4", frames))


def dataset(path: str, views=(1, 1)) -> VideoClipDataset:
    return VideoClipDataset([path], np.zeros(1, np.int64), streams=[STREAM], plan=PLAN,
                            scenes=SCENES, train=False, views=views)


def test_offsets_shift_each_segment_sample():
    centres = sample_instants(0.0, 4.0, 4)
    assert np.array_equal(sample_instants(0.0, 4.0, 4, offset=0.5), centres)
    assert sample_instants(0.0, 4.0, 4, offset=0.1) == pytest.approx([0.1, 1.1, 2.1, 3.1])
    assert view_offsets(1) == (None,)  # one view: today's centres, bit for bit
    assert view_offsets(5) == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    with pytest.raises(ValueError, match="not both"):
        sample_instants(0.0, 1.0, 2, np.random.default_rng(0), offset=0.5)


def test_spatial_views_slide_the_centre_square_along_the_long_side():
    assert crop_box(64, 96, STREAM, train=False) == (3, 19, 57, 57)
    boxes = [crop_box(64, 96, STREAM, train=False, view=j, num_views=3) for j in range(3)]
    assert boxes == [(3, 0, 57, 57), (3, 19, 57, 57), (3, 39, 57, 57)]  # left, centre, right
    assert crop_box(96, 64, STREAM, train=False, view=2, num_views=3) == (39, 3, 57, 57)
    assert crop_box(64, 96, STREAM, train=False, view=0, num_views=1) == boxes[1]


def test_one_view_is_todays_evaluation_exactly(ramp_video):
    from torchvision.transforms.v2 import functional as TF

    # Today's evaluation written out: segment centres, the backbone's centre crop.
    windows = decode_windows(ramp_video, plan=PLAN, scenes=SCENES, counts={1}, short_side_px=18)
    raw = torch.from_numpy(np.stack([w.frames[1][0] for w in windows])).permute(0, 3, 1, 2)
    box = crop_box(*raw.shape[2:], STREAM, train=False)
    expected = TF.resized_crop(raw, *box, size=[16, 16], antialias=True)  # (W, 3, 16, 16)
    item = dataset(ramp_video)[0]
    assert item.view_windows == () and torch.equal(item.frames[0], expected)
    # The middle view of 3 × 3 (offset 1.5 / 3, the middle crop) is that same view.
    views = dataset(ramp_video, (3, 3))[0].frames[0].reshape(9, 4, 3, 16, 16)
    assert torch.equal(views[4], expected)


def test_views_are_distinct_and_collated_as_videos_of_one_index(ramp_video):
    item = dataset(ramp_video, (3, 3))[0]
    assert item.frames[0].shape == (9 * 4, 3, 16, 16) and item.view_windows == (4,) * 9
    level = item.frames[0].float().mean(dim=(1, 2, 3)).reshape(3, 3, 4)  # (K, S, W)
    # Later temporal views sample later frames (a third of a 25-frame segment ≈ 8 frames);
    # later spatial views crop further right (the gradient: +1.56 per column, 19-20 columns).
    assert ((level[1:] - level[:-1]).mean(dim=(1, 2)).numpy() == pytest.approx([8.3, 8.3], abs=2))
    assert ((level[:, 1:] - level[:, :-1]).mean(dim=(0, 2)).numpy() > 25).all()
    batch = collate([item, dataset(ramp_video)[0]])
    assert batch.indices.tolist() == [0] * 9 + [0]
    assert batch.lengths[0].tolist() == [4] * 10 and len(batch.targets) == 10


class MeanLevel(nn.Module):
    """A stand-in model: per video, logits (level / 50, -level / 50) of its windows' mean."""

    def forward(self, frames, lengths):
        level = torch.stack([f.float().mean() for f in frames[0].split(lengths[0].tolist())])
        return torch.stack([level, -level], dim=1) / 50  # (B, 2)


@pytest.mark.parametrize("kind", ["classification", "multilabel", "regression"])
def test_predictions_average_the_views(ramp_video, kind):
    model = MeanLevel()
    loader = torch.utils.data.DataLoader(dataset(ramp_video, (5, 1)), collate_fn=collate)
    outputs, indices, errors = predict_clips(model, loader, torch.device("cpu"), None,
                                             task_kind=kind)
    per_view = torch.cat([model(b.frames, b.lengths) for b in loader]).numpy()  # (5, 2)
    assert len(set(per_view[:, 0].round(4))) == 5  # five distinct views
    assert indices.tolist() == [0] and errors == []
    assert np.allclose(outputs[0], average_windows(per_view, kind))
    if kind == "classification":  # the softmax is what is averaged
        assert np.allclose(np.exp(outputs[0]), torch.softmax(torch.from_numpy(per_view), 1)
                           .mean(0).numpy())
    with pytest.raises(ValueError, match="task_kind"):
        predict_clips(model, loader, torch.device("cpu"), None)
    # One view: the model's output itself.
    single = torch.utils.data.DataLoader(dataset(ramp_video), collate_fn=collate)
    outputs, _, _ = predict_clips(model, single, torch.device("cpu"), None, task_kind=kind)
    batch = next(iter(single))
    assert np.array_equal(outputs, model(batch.frames, batch.lengths).numpy())


def test_presets_resolve_their_test_views():
    def views(**fields):
        return resolve_config(FinetuneConfig(task="t", **fields)).test_views

    assert views(preset="stat") == (5, 1)  # T = 16
    assert views(preset="stat", num_frames=32) == (5, 1)
    assert views(preset="stat", num_frames=64) == (3, 3)
    assert views(preset="stat", num_frames=64, test_views=(1, 1)) == (1, 1)  # the flag wins
    assert views(preset="vtn") == (1, 1) and views(preset="stan_small") == (1, 1)
    assert views(preset="stan_small", test_views=(1, 3)) == (1, 3)  # spatial views on scenes
    with pytest.raises(ValueError, match="not scenes"):
        views(preset="stan_small", test_views=(5, 1))
    with pytest.raises(ValueError, match="--test-views"):
        FinetuneConfig(task="t", test_views=(0, 1))


def test_test_views_flag():
    assert parse_views("5x1") == (5, 1) and parse_views("3×3") == (3, 3)
    assert parse_views(None) is None
    result = CliRunner().invoke(app, ["finetune", "--task", "t", "--test-views", "5"])
    assert result.exit_code == 2 and "TEMPORALxSPATIAL" in result.output


def test_stat_preset_takes_deits_optimiser_settings_unless_given():
    stat = resolve_config(FinetuneConfig(task="t", preset="stat", batch_size=4))
    assert stat.lr == pytest.approx(5e-4 * 4 / 512)  # DeiT: lr × batch size / 512
    # Data-parallel: the global batch counts (4 videos on each of 16 workers)
    wide = resolve_config(FinetuneConfig(task="t", preset="stat", batch_size=4,
                                         data_parallel=16))
    assert wide.lr == pytest.approx(5e-4 * 64 / 512)
    assert (stat.weight_decay, stat.warmup_epochs, stat.label_smoothing) == (0.05, 5, 0.1)
    given = resolve_config(FinetuneConfig(task="t", preset="stat", lr=1e-3, weight_decay=0.0,
                                          warmup_epochs=0, label_smoothing=0.0))
    assert (given.lr, given.weight_decay, given.warmup_epochs, given.label_smoothing) == (
        1e-3, 0.0, 0, 0.0)
    stan = resolve_config(FinetuneConfig(task="t", preset="stan_small"))
    assert {k: getattr(stan, k) for k in FINETUNE_DEFAULTS} == FINETUNE_DEFAULTS
    unresolved = FinetuneConfig(task="t", preset="stat")
    assert unresolved.lr is None  # left to the preset until resolve_config
    with pytest.raises(ValueError, match="--lr"):
        FinetuneConfig(task="t", lr=0.0)
    with pytest.raises(ValueError, match="--label-smoothing"):
        FinetuneConfig(task="t", label_smoothing=1.0)

"""VTN's protocol (Neimark et al. 2021, ../shared/papers/vtn.txt) in the ``longformer`` head,
the training clips, the SGD / steps optimisation and the papers' model sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from heads.config import TrainConfig
from heads.config_files import build_config
from heads.models import create_head
from heads.models.longformer import fixed_position_encoding
from heads.optim import build_optimizer, build_schedule
from heads.paper_sizes import PAPER_SIZES, backbone_parameters, paper_table
from heads.windows import RandomClipDataset, clip_streams, with_token_times

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"num_heads": 2, "num_layers": 1, "ff_dim": 16}


def frame_times(num_tokens: int, step_sec: float, start_sec: float = 0.0) -> torch.Tensor:
    """(1, T, 2) [start, end] of consecutive tokens of ``step_sec`` seconds."""
    start = start_sec + step_sec * torch.arange(num_tokens, dtype=torch.float32)
    return torch.stack([start, start + step_sec], dim=-1).unsqueeze(0)


def test_vtn_rows_of_table_3_are_within_two_percent():
    rows = {r["name"]: r for r in paper_table(tuple(p for p in PAPER_SIZES
                                                    if p.name.startswith("vtn")))}
    assert set(rows) == {"vtn_vit_b_1l", "vtn_vit_b_3l", "vtn_r50", "vtn_r101"}
    for row in rows.values():
        assert abs(row["ratio"] - 1) < 0.02, row
    # Pinned so that a drifting default shows here first (backbone + head, 400 classes).
    assert round(rows["vtn_vit_b_3l"]["ours_m"], 1) == 113.5
    assert round(rows["vtn_r101"]["ours_m"], 1) == 186.6


def test_heads_list_paper_prints_every_row():
    from heads.cli import app

    result = CliRunner().invoke(app, ["list", "--paper"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == len(PAPER_SIZES)
    assert lines[1].split()[:4] == ["vtn_vit_b_3l", "paper", "114.0M", "ours"]
    assert "119 M" in result.output  # STAM's official-code count is named


def test_backbone_counts_are_torchvision_without_classifier():
    assert backbone_parameters("resnet50") == 23_508_032
    with pytest.raises(KeyError, match="unknown paper backbone"):
        backbone_parameters("alexnet")


def test_width_is_the_backbones_without_a_projection():
    model = create_head("longformer", in_dim=512, num_outputs=5)
    assert isinstance(model.proj, nn.Identity)
    assert model.cls_token.shape[-1] == 512
    assert model.layers[0].ff[0].out_features == 2048  # 4 × width (not stated for 512)
    assert model.layers[0].attn.num_heads == 8  # 512 / 64: 12 does not divide 512
    r50 = create_head("longformer", in_dim=2048, num_outputs=5, num_layers=1)
    assert r50.layers[0].ff[0].out_features == 4096  # VTN §4.1: 2048 / 4096
    projected = create_head("longformer", in_dim=512, num_outputs=5, d_model=64, num_heads=4)
    assert projected.proj.out_features == 64


def test_official_and_paper_initialisation():
    torch.manual_seed(0)
    official = create_head("longformer", in_dim=768, num_outputs=400)
    paper = create_head("longformer", in_dim=768, num_outputs=400, variant="paper")
    for model in (official, paper):
        q = model.layers[0].attn.qkv
        assert q.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert (q.bias == 0).all()
        assert model.embed_norm.eps == 1e-12 and model.layers[0].norm1.eps == 1e-12
        assert model.mlp_head[3].p == 0.5  # official MODEL.DROPOUT_RATE
    # Official: the [CLS] is torch.randn, the MLP head PyTorch's default (uniform ±1/sqrt(768)).
    assert official.cls_token.std().item() == pytest.approx(1.0, rel=0.15)
    bound = 1 / 768**0.5
    assert official.mlp_head[1].weight.abs().max().item() <= bound
    assert official.mlp_head[1].weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    # Paper §4.1: the Longformer and the MLP head all from N(0, 0.02).
    assert paper.cls_token.std().item() == pytest.approx(0.02, rel=0.2)
    assert paper.mlp_head[1].weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert official.token_type is not None and paper.token_type is None


def test_positions_are_frame_indices_mod_286_with_cls_and_padding_slots():
    model = create_head("longformer", in_dim=8, num_outputs=2, **TINY)
    mask = torch.tensor([[True, True, True, False]])
    times = torch.tensor([[[0.0, 0.08], [1.0, 1.04], [20.0, 20.04], [0.0, 0.0]]])
    ids = model.position_ids(mask, times)
    # mid times 0.04, 1.02, 20.02 s at 25 frames/s: frames 1, 25, 500 → 500 mod 286 = 214.
    assert ids.tolist() == [[1, 25, 214, 287]]
    tokens = create_head("longformer", in_dim=8, num_outputs=2, positions="token_index", **TINY)
    assert tokens.position_ids(mask, None).tolist() == [[0, 1, 2, 287]]


def test_a_clip_keeps_its_place_in_the_video():
    """Learned positions come from the frame's time, so the same frames at another time of
    the video give another output, and a padded batch gives the same outputs."""
    torch.manual_seed(0)
    model = create_head("longformer", in_dim=8, num_outputs=3, **TINY).eval()
    x = torch.randn(1, 6, 8)
    mask = torch.ones(1, 6, dtype=torch.bool)
    with torch.no_grad():
        early = model(x, mask, frame_times(6, 0.2), mask)
        late = model(x, mask, frame_times(6, 0.2, start_sec=3.0), mask)
        padded_x = torch.cat([x, torch.full((1, 3, 8), float("nan"))], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], dim=1)
        padded_t = torch.cat([frame_times(6, 0.2), torch.zeros(1, 3, 2)], dim=1)
        padded = model(padded_x, padded_mask, padded_t, padded_mask)
    assert not torch.allclose(early, late)
    torch.testing.assert_close(padded, early, atol=1e-6, rtol=0)


def test_no_position_embedding_ignores_order_under_full_attention():
    """VTN Tab. 2b's shuffle test: frames shuffled, then positions added in place."""
    torch.manual_seed(0)
    x = torch.randn(1, 7, 8)
    mask = torch.ones(1, 7, dtype=torch.bool)
    times = frame_times(7, 0.5)
    perm = torch.randperm(7)
    outputs = {}
    for kind in ("none", "learned", "fixed"):
        model = create_head("longformer", in_dim=8, num_outputs=3, window=None,
                            position_embedding=kind, **TINY).eval()
        with torch.no_grad():  # larger weights: attention at init is ~uniform, which is
            for param in model.parameters():  # invariant to the pairing by linearity
                param.normal_(std=0.5)
            outputs[kind] = (model(x, mask, times, mask),
                             model(x[:, perm], mask, times, mask))
    torch.testing.assert_close(*outputs["none"], atol=1e-6, rtol=0)
    assert not torch.allclose(*outputs["learned"], atol=1e-4)
    assert not torch.allclose(*outputs["fixed"], atol=1e-4)


def test_fixed_encoding_is_detr_sine_on_the_temporal_axis():
    pe = fixed_position_encoding(torch.tensor([0, 3, 250]), 6)
    expected = torch.tensor([[np.sin(p / 10000 ** (2 * (c // 2) / 6)) if c % 2 == 0
                              else np.cos(p / 10000 ** (2 * (c // 2) / 6)) for c in range(6)]
                             for p in (0, 3, 250)], dtype=torch.float32)
    torch.testing.assert_close(pe, expected)


def test_clip_streams_take_n_tokens_at_even_instants():
    times = np.stack([np.arange(20) * 0.5, np.arange(20) * 0.5 + 0.5], axis=1)  # 0.5 s tokens
    tokens = np.arange(20, dtype=np.float32)[:, None]
    (clip,) = clip_streams([tokens], [times], 2.0, 7.12, 16)
    instants = np.linspace(2.0, 7.12, 16)
    np.testing.assert_array_equal(clip[:, 0], np.floor(instants / 0.5))
    assert len(clip) == 16 and len(np.unique(clip)) < 16  # coarse tokens repeat


def test_random_clip_dataset_draws_a_clip_inside_the_video():
    times = [[np.stack([np.arange(40) * 0.5, np.arange(40) * 0.5 + 0.5], axis=1)]]  # 20 s
    tokens = [[np.arange(40, dtype=np.float32)[:, None]]]
    data = RandomClipDataset(tokens, times, np.zeros(1, dtype=np.int64), clip_sec=5.12,
                             num_frames=16, seed=3)
    starts = []
    for _ in range(50):
        (clip,), _ = data[0]
        assert clip.shape == (16, 1)
        span = (clip[-1, 0] - clip[0, 0]).item() * 0.5  # token starts: within a token of 5.12
        assert 5.12 - 0.5 < span < 5.12 + 0.5
        starts.append(clip[0, 0].item())
    assert min(starts) >= 0 and max(starts) <= 2 * (20 - 5.12) and len(set(starts)) > 10
    again = RandomClipDataset(tokens, times, np.zeros(1, dtype=np.int64), clip_sec=5.12,
                              num_frames=16, seed=3)
    assert again[0][0][0][0, 0].item() == starts[0]  # same seed, same clips


def test_token_times_ride_as_one_more_stream():
    times = [[np.array([[0.0, 1.0], [1.0, 2.0]])]]
    tokens, new_times = with_token_times([[np.ones((2, 4), np.float32)]], times)
    assert len(tokens[0]) == 2 and tokens[0][1].dtype == np.float32
    np.testing.assert_array_equal(tokens[0][1], times[0][0])
    assert len(new_times[0]) == 2


def test_sgd_and_the_steps_schedule_of_vit_b_vtn():
    param = nn.Parameter(torch.zeros(2, 2))
    optimizer = build_optimizer("sgd", [{"params": [param], "lr": 1e-3}], lr=1e-3,
                                momentum=0.9, nesterov=True)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.9 and optimizer.param_groups[0]["nesterov"]
    schedule = build_schedule("steps", optimizer, warmup_steps=0, total_steps=250,
                              steps_per_epoch=10, milestones=(13, 24), gamma=0.1)
    lrs = []
    for _ in range(250):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[129] == pytest.approx(1e-3) and lrs[130] == pytest.approx(1e-4)
    assert lrs[239] == pytest.approx(1e-4) and lrs[240] == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="needs lr_milestones"):
        build_schedule("steps", optimizer, warmup_steps=0, total_steps=10)


def test_longformer_config_is_the_r50_vtn_protocol_and_clips_exclude_windows():
    config = build_config({"task": "t", "head": "longformer"})
    assert (config.optimizer, config.momentum, config.nesterov, config.lr) == ("sgd", 0.9,
                                                                                True, 1e-3)
    assert (config.schedule, config.warmup_epochs, config.epochs, config.batch_size) == (
        "warmup_cosine", 0, 40, 32)
    assert (config.plan, config.window_sec, config.train_clip_sec, config.train_clip_frames) \
        == ("full", 0.0, 5.12, 16)
    with pytest.raises(ValueError, match="two training protocols"):
        TrainConfig(task="t", head="longformer", train_clip_sec=5.12, window_sec=60.0)
    with pytest.raises(ValueError, match="--optimizer must be adamw or sgd"):
        TrainConfig(task="t", optimizer="lamb")


def test_vit_b_protocol_file_sets_the_steps_schedule(tmp_path):
    from heads.config_files import CONFIG_DIR

    path = CONFIG_DIR / "protocols" / "vtn_vit_b.toml"
    config = build_config({"task": "t", "head": "longformer"}, config_file=str(path))
    assert (config.schedule, config.lr_milestones, config.epochs, config.batch_size) == (
        "steps", (13, 24), 25, 16)
    assert config.features == ("vit_b16",) and config.optimizer == "sgd"

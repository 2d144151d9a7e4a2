"""The lstm, temporal_transformer and stat_cached heads, STAN's fusion variants, patch-token data,
and ``heads.train`` end to end with these heads on tiny synthetic stores."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import heads.data
import heads.train
from catalogs.base import Catalog, Task
from heads.data import (
    FeatureDataset,
    Standardizer,
    collate,
    head_token_kinds,
    resolve_feature_sets,
)
from heads.models import create_head
from heads.models.stan import CollaborativeGating, distillation_loss, sinusoidal_encoding
from heads.models.stat_cached import CachedShrinkingAttention
from heads.train import TrainConfig, train
from pipeline.store import FeatureStore, fingerprint

STAT_SMALL = {"d_model": 16, "num_heads": 2, "num_layers": 2, "t_o": 3,
              "short_term_pool": 2, "max_frames": 64, "max_patches": 16, "dropout": 0.0}
STAN_SMALL = {"d_model": 16, "num_heads": 2, "ff_dim": 32, "dropout": 0.0}


# Tiny models run on one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def lengths_mask(lengths, num_tokens: int) -> torch.Tensor:
    return torch.arange(num_tokens)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


# ------------------------------------------------------------------------------------ lstm


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_reads_the_last_real_token(bidirectional):
    torch.manual_seed(0)
    model = create_head("lstm", in_dim=5, num_outputs=3, hidden_dim=8,
                        bidirectional=bidirectional, dropout=0.0).eval()
    x = torch.randn(2, 6, 5)
    mask = lengths_mask([6, 3], 6)
    with torch.no_grad():
        out = model(x, mask)
        # Reference: the unpadded video through nn.LSTM; final states of each direction.
        _, (h_n, _) = model.lstm(x[1:, :3])  # (directions, 1, hidden)
        expected = model.classifier(h_n.transpose(0, 1).reshape(1, -1))
        torch.testing.assert_close(out[1:], expected, atol=1e-6, rtol=0)
        # Padding in the middle of a sequence is skipped too.
        holes = torch.tensor([[True, False, True, False, True, False]])
        gapped = model(x[1:2, [0, 3, 1, 4, 2, 5]], holes)
        torch.testing.assert_close(gapped, expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------ temporal_transformer


def test_temporal_transformer_defaults_and_cls_attention():
    model = create_head("temporal_transformer", in_dim=768, num_outputs=10)
    assert len(model.encoder.layers) == 6
    assert model.encoder.layers[0].self_attn.num_heads == 8
    assert model.classifier.in_features == 768
    # STAM's TAggregate: nn.TransformerEncoderLayer(768, nhead=8) with PyTorch's defaults
    # (feed-forward 2048, ReLU, post-norm) × 6 + a final LayerNorm; ViT-B's 768-d frame
    # embeddings enter unprojected.
    layer = model.encoder.layers[0]
    assert not layer.norm_first and layer.linear1.out_features == 2048
    assert layer.activation is torch.nn.functional.relu
    assert isinstance(model.proj, torch.nn.Identity)
    per_layer = (4 * 768 * 768 + 4 * 768) + (2 * 768 * 2048 + 2048 + 768) + 2 * 2 * 768
    assert per_layer == 5_513_984
    assert sum(p.numel() for p in model.encoder.parameters()) == 6 * per_layer + 2 * 768

    torch.manual_seed(0)
    small = create_head("temporal_transformer", in_dim=6, num_outputs=3, d_model=16,
                        num_heads=2, num_layers=2, max_positions=16).eval()
    x = torch.randn(2, 7, 6)
    mask = lengths_mask([7, 3], 7)
    weights = small.cls_attention(x, mask)
    assert weights.shape == (2, 7)
    assert (weights[1, 3:] == 0).all() and (weights[mask] > 0).all()
    assert (weights.sum(dim=1) < 1).all()
    torch.testing.assert_close(small.cls_attention(x[1:, :3], mask[1:, :3]), weights[1:, :3])
    with pytest.raises(ValueError, match="max_positions=17"):
        small(torch.randn(1, 16, 6), torch.ones(1, 16, dtype=torch.bool))


def test_temporal_transformer_paper_variant_and_official_init():
    """STAM §3: the temporal layers use "the same equations ... (7) through (9)": pre-LN, GELU
    MLP (width not stated: 4 · d_model); the official code's init: Linear weights
    truncated-normal std 0.02, biases 0."""
    torch.manual_seed(0)
    paper = create_head("temporal_transformer", in_dim=768, num_outputs=10, variant="paper")
    layer = paper.encoder.layers[0]
    assert layer.norm_first and layer.linear1.out_features == 3072
    assert layer.activation is torch.nn.functional.gelu
    official = create_head("temporal_transformer", in_dim=768, num_outputs=10)
    for model in (paper, official):
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linears) == 6 * 3 + 1  # per layer out_proj, linear1, linear2; classifier
        for linear in linears:
            # trunc_normal_(std=.02) truncates at ±2 (absolute, as timm's): a normal of std 0.02
            assert linear.weight.std().item() == pytest.approx(0.02, abs=0.001)
            assert (linear.bias == 0).all()
    with pytest.raises(ValueError, match="unknown variant 'post'; valid: official, paper"):
        create_head("temporal_transformer", in_dim=8, num_outputs=2, variant="post")


def test_mean_head_with_a_single_linear_is_stams_baseline():
    """STAM's MeanAggregate: the mean of the frame embeddings, then the one classifier Linear."""
    model = create_head("mean", in_dim=768, num_outputs=400, hidden_dim=None)
    assert isinstance(model.mlp, torch.nn.Linear)
    assert sum(p.numel() for p in model.parameters()) == 768 * 400 + 400
    x, mask = torch.randn(2, 5, 768), lengths_mask([5, 2], 5)
    expected = model.mlp(torch.stack([x[0].mean(0), x[1, :2].mean(0)]))
    torch.testing.assert_close(model(x, mask), expected)


def test_stam_trains_30_epochs():
    from heads.config_files import head_file_values

    assert head_file_values("temporal_transformer")["epochs"] == 30  # STAM §4 Training


# ----------------------------------------------------------------------------- stat_cached


def patch_inputs(lengths, num_patches=5, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), num_patches, dim, generator=generator)
    return x, lengths_mask(lengths, max(lengths))  # (B, T, N, D), (B, T)


@pytest.mark.parametrize("fill", [0.0, 1e4, math.nan])
def test_stat_patch_padding_and_batching(fill):
    torch.manual_seed(0)
    model = create_head("stat_cached", in_dim=6, num_outputs=4, **STAT_SMALL).eval()
    x, mask = patch_inputs([5, 2, 1])
    padded_x = torch.cat([x, torch.full((3, 4, 5, 6), fill)], dim=1)  # (B, T + 4, N, D)
    padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        out = model(x, mask)
        assert out.shape == (3, 4)
        torch.testing.assert_close(model(padded_x, padded_mask), out, atol=1e-5, rtol=0)
        for b, length in enumerate([5, 2, 1]):
            alone = model(x[b : b + 1, :length], mask[b : b + 1, :length])
            torch.testing.assert_close(alone, out[b : b + 1], atol=1e-5, rtol=0)


def test_stat_gradients_and_pooled_input():
    torch.manual_seed(0)
    model = create_head("stat_cached", in_dim=6, num_outputs=2, **STAT_SMALL).train()
    x, mask = patch_inputs([4, 3])
    model(x, mask).square().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    model.eval()
    pooled = x[:, :, 0]  # (B, T, D): read as one patch per frame
    with torch.no_grad():
        torch.testing.assert_close(model(pooled, mask), model(pooled.unsqueeze(2), mask))


def test_stat_attention_shrinks_with_temporal_distance():
    # Frame 0 sees frame 1's patches (short-term, t_o = 3) but of frame 3 only its class token.
    torch.manual_seed(0)
    attn = CachedShrinkingAttention(d_model=8, num_heads=2, t_o=3, short_term_pool=2,
                                    dropout=0.0).eval()
    x = torch.randn(1, 4, 1 + 4, 8)  # (B, T, 1 + N, d), N = a 2 × 2 grid
    mask = torch.ones(1, 4, dtype=torch.bool)
    layout = (0, 2, 2)
    with torch.no_grad():
        out = attn(x, mask, layout)
        far_patch, near_patch, far_cls = x.clone(), x.clone(), x.clone()
        far_patch[0, 3, 2] += 5.0
        near_patch[0, 1, 2] += 5.0
        far_cls[0, 3, 0] += 5.0
        torch.testing.assert_close(attn(far_patch, mask, layout)[0, 0], out[0, 0])
        assert not torch.allclose(attn(near_patch, mask, layout)[0, 0], out[0, 0])
        assert not torch.allclose(attn(far_cls, mask, layout)[0, 0], out[0, 0])


def test_stat_short_term_tokens_are_2d_pooled_neighbours():
    attn = CachedShrinkingAttention(d_model=4, num_heads=1, t_o=3, short_term_pool=2,
                                    dropout=0.0)
    # (B, T, 1 + 16, d): a leading backbone CLS, then a 4 × 4 grid, row-major.
    tokens = torch.arange(2 * 3 * 17 * 4, dtype=torch.float32).view(2, 3, 17, 4)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    pooled, real = attn._short_term(tokens, mask, (1, 4, 4))
    assert pooled.shape == (2, 3, 2 * 4, 4)  # t_o − 1 = 2 neighbours × 2 × 2 pooled tokens
    grid = tokens[0, 0, 1:].view(4, 4, 4)  # frame 0's grid, the CLS left out
    # Frame 1's neighbours: frame 0 then frame 2; the first pooled token is a 2 × 2 square.
    torch.testing.assert_close(pooled[0, 1, 0], grid[:2, :2].reshape(4, 4).mean(0))
    torch.testing.assert_close(pooled[0, 1, 3], grid[2:, 2:].reshape(4, 4).mean(0))
    assert real[0, 0].tolist() == [False] * 4 + [True] * 4  # no frame before frame 0
    assert real[1, 1].tolist() == [True] * 4 + [False] * 4  # frame 2 of video 1 is padding


# ------------------------------------------------------------------------- STAN variants


def test_collaborative_gating_formula():
    torch.manual_seed(0)
    gating = CollaborativeGating(4, hidden_dim=6)
    e_s, e_t = torch.randn(3, 4), torch.randn(3, 4)
    gated_s, gated_t = gating([e_s, e_t])
    torch.testing.assert_close(
        gated_s, e_s * torch.sigmoid(gating.h(gating.g(torch.cat([e_s, e_t], -1))))
    )
    torch.testing.assert_close(
        gated_t, e_t * torch.sigmoid(gating.h(gating.g(torch.cat([e_t, e_s], -1))))
    )


def stan_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x_s = torch.randn(2, 5, 12, generator=generator)  # (B, T_s, D_s)
    x_t = torch.randn(2, 4, 20, generator=generator)  # (B, T_t, D_t)
    return x_s, lengths_mask([5, 2], 5), x_t, lengths_mask([4, 3], 4)


def test_stan_gated_fuses_gated_stream_embeddings():
    torch.manual_seed(0)
    model = create_head("stan_gated", in_dim=[12, 20], num_outputs=3, **STAN_SMALL).eval()
    assert model.fusion == "gated" and model.aux_loss is None
    x_s, m_s, x_t, m_t = stan_inputs()
    with torch.no_grad():
        pe = sinusoidal_encoding(6, 16)
        q_s, q_t = model.q(model.spatial(x_s, m_s, pe)), model.q(model.temporal(x_t, m_t, pe))
        gated_s, gated_t = model.gating([q_s, q_t])
        expected = model.classifier(model.fusion_norm(gated_s + gated_t))
        torch.testing.assert_close(model(x_s, m_s, x_t, m_t), expected, atol=1e-6, rtol=0)
    plain = create_head("stan_gated", in_dim=[12, 20], num_outputs=3, fusion="sum", **STAN_SMALL)
    assert plain.fusion == "sum" and not hasattr(plain, "gating")


def test_stan_distill_sets_aux_loss_that_teaches_only_the_student():
    torch.manual_seed(0)
    model = create_head("stan_distill", in_dim=[12, 20], num_outputs=3, **STAN_SMALL).train()
    inputs = stan_inputs()
    model(*inputs)
    assert isinstance(model.aux_loss, torch.Tensor) and model.aux_loss.ndim == 0
    assert model.aux_loss.item() > 0
    model.aux_loss.backward()
    # The teacher is detached: the temporal stream learns nothing from the distillation loss.
    assert all(p.grad is None for p in model.temporal.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.spatial.parameters())
    model.eval()
    with torch.no_grad():
        model(*inputs)
    assert model.aux_loss is None
    assert create_head("stan_distill", in_dim=8, num_outputs=1, **STAN_SMALL).distill_loss == "mse"


@pytest.mark.parametrize(
    "kind, expected", [("classification", "kl"), ("multilabel", "bce"), ("regression", "mse")]
)
def test_create_head_gives_stan_the_task_kind(kind, expected):
    num_outputs = 1 if kind == "regression" else 4
    model = create_head("stan_distill", in_dim=8, num_outputs=num_outputs, task_kind=kind,
                        **STAN_SMALL)
    assert model.distill_loss == expected
    # An explicit --head-kwarg wins over the task's kind.
    explicit = create_head("stan_distill", in_dim=8, num_outputs=4, task_kind="multilabel",
                           distill_loss="kl", **STAN_SMALL)
    assert explicit.distill_loss == "kl"


def test_heads_without_uses_task_kind_never_see_it():
    # `mean` takes no task_kind argument: passing one to it would raise TypeError.
    model = create_head("mean", in_dim=8, num_outputs=2, task_kind="multilabel")
    assert not hasattr(model, "distill_loss")
    with pytest.raises(ValueError, match="task_kind must be one of"):
        create_head("stan", in_dim=8, num_outputs=2, task_kind="ranking", **STAN_SMALL)


def test_distillation_loss_kinds():
    student, teacher = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.5]])
    for kind in ("kl", "bce", "mse"):
        assert distillation_loss(teacher, teacher, temperature=2.0, kind=kind).abs() < 1e-6
        assert distillation_loss(student, teacher, temperature=2.0, kind=kind) > 0
    p_t, p_s = (torch.softmax(t / 2.0, -1) for t in (teacher, student))
    kl = (p_t * (p_t / p_s).log()).sum() * 4.0
    torch.testing.assert_close(distillation_loss(student, teacher, temperature=2.0, kind="kl"), kl)
    with pytest.raises(ValueError, match="kl, bce or mse"):
        distillation_loss(student, teacher, temperature=1.0, kind="l1")


# ----------------------------------------------------------------------- patch-token data


def test_collate_pads_patch_tokens_along_time_only():
    videos = [[np.ones((3, 5, 4), np.float16)], [np.full((1, 5, 4), 2.0, np.float16)]]
    dataset = FeatureDataset(videos, np.array([0, 1]))
    (x, mask), _ = collate([dataset[0], dataset[1]])
    assert x.shape == (2, 3, 5, 4) and x.dtype == torch.float32
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert x[1, 1:].abs().sum() == 0 and (x[1, 0] == 2).all()
    odd = FeatureDataset([[np.ones((2, 6, 4), np.float16)]], np.array([0]))
    with pytest.raises(ValueError, match="different per-token shapes"):
        collate([dataset[0], odd[0]])


def test_standardizer_on_patch_tokens(monkeypatch):
    rng = np.random.default_rng(0)
    videos = [[(rng.normal(size=(t, 5, 3)) * [1, 10, 100] + [0, 5, -5]).astype(np.float16)]
              for t in (4, 1, 7, 0)]
    all_rows = np.concatenate([v[0].reshape(-1, 3) for v in videos]).astype(np.float64)
    monkeypatch.setattr(heads.data, "_FIT_CHUNK_ROWS", 6)  # exercise the chunked merge
    standardizer = Standardizer.fit(videos)
    np.testing.assert_allclose(standardizer.mean[0], all_rows.mean(0), rtol=1e-6)
    np.testing.assert_allclose(standardizer.std[0], all_rows.std(0), rtol=1e-6)
    (scaled,) = standardizer.apply(videos[0])
    assert scaled.shape == (4, 5, 3) and scaled.dtype == np.float16
    expected = (videos[0][0].astype(np.float32) - standardizer.mean[0]) / standardizer.std[0]
    np.testing.assert_allclose(scaled, expected, atol=2e-3, rtol=1e-3)


def test_patch_feature_sets_resolve_for_patch_heads(tmp_path):
    store = FeatureStore(tmp_path)
    spec = {"dataset": "toy", "backbone": "vit_b16", "plan": "uniform", "weights": "none"}
    store.create("toy-vit", spec=spec, token_kind="patch", dim=4, dtype="float16")
    assert "patch" in head_token_kinds("stat_cached") and head_token_kinds("lstm") == ("pooled",)
    (fs,) = resolve_feature_sets(store, "toy", ["vit_b16"], "uniform",
                                 token_kinds=head_token_kinds("stat_cached"))
    assert fs.attrs["token_kind"] == "patch"
    with pytest.raises(ValueError, match="'patch' tokens; this head takes pooled"):
        resolve_feature_sets(store, "toy", ["vit_b16"], "uniform")


# --------------------------------------------------------------------- train end to end

DIM, NUM_PATCHES = 8, 3
CLASSES, TAGS = ("a", "b", "c"), ("x", "y")
TASK_BY_KIND = {"classification": "genre", "multilabel": "tags", "regression": "score"}
SPLITS = ["train"] * 8 + ["val"] * 2 + ["test"] * 2


def tiny_catalog() -> Catalog:
    ids = [f"tiny/v{i:02d}" for i in range(len(SPLITS))]
    labels = pl.DataFrame(
        {
            "video_id": ids,
            "genre": [CLASSES[i % 3] for i in range(len(ids))],
            "tags": [[TAGS[i % 2]] + (["y"] if i % 3 == 0 else []) for i in range(len(ids))],
            "score": [float(i % 4) for i in range(len(ids))],
        }
    )
    return Catalog(
        name="tiny", root=Path("."),
        videos=pl.DataFrame({"video_id": ids, "path": [f"/nowhere/{v}.mp4" for v in ids],
                             "split": SPLITS}),
        tasks={"genre": Task("genre", "classification", CLASSES),
               "tags": Task("tags", "multilabel", TAGS), "score": Task("score", "regression")},
        labels=labels,
    )


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """Pooled (`resnet18`, `r2plus1d_18`) and patch (`vit_b16`) feature sets of the tiny
    catalog."""
    root = tmp_path_factory.mktemp("tiny_store")
    store, rng = FeatureStore(root), np.random.default_rng(0)
    sets = {}
    for backbone, kind in (("resnet18", "pooled"), ("r2plus1d_18", "pooled"),
                           ("vit_b16", "patch")):
        spec = {"dataset": "tiny", "backbone": backbone, "plan": "scene", "weights": "none"}
        sets[backbone] = store.create(f"tiny-{backbone}-{fingerprint(spec)[:12]}", spec=spec,
                                      token_kind=kind, dim=DIM, dtype="float16")
    for i, video_id in enumerate(tiny_catalog().videos["video_id"]):
        num_tokens = int(rng.integers(2, 6))
        times = {"start_sec": np.arange(num_tokens) * 2.0,
                 "end_sec": np.arange(1, num_tokens + 1) * 2.0}
        patches = rng.normal(size=(num_tokens, NUM_PATCHES, DIM)) + i % 3  # (T, N, D)
        sets["vit_b16"].write_video(video_id, patches, **times)
        sets["resnet18"].write_video(video_id, patches.mean(axis=1), **times)  # (T, D)
        sets["r2plus1d_18"].write_video(video_id, patches.max(axis=1), **times)  # (T, D)
    return root


@pytest.fixture
def patch_aware_train(monkeypatch):
    """Lets ``heads.train`` resolve patch feature sets: it passes no ``token_kinds`` (pooled
    only) yet; once it passes ``head_token_kinds(head)`` itself, this changes nothing."""
    original = heads.train.resolve_feature_sets

    def resolve(*args, **kwargs):
        kwargs.setdefault("token_kinds", ("pooled", "patch"))
        return original(*args, **kwargs)

    monkeypatch.setattr(heads.train, "resolve_feature_sets", resolve)


SMALL_TRAIN = {
    "lstm": {"hidden_dim": 16},
    "temporal_transformer": {"d_model": 16, "num_heads": 2, "num_layers": 2, "max_positions": 16},
    "longformer": {"d_model": 16, "num_heads": 2, "num_layers": 2, "ff_dim": 32, "window": 2,
                   "max_positions": 16},
    "stat_cached": {**STAT_SMALL, "num_aggregation_layers": 1},
}


@pytest.mark.parametrize("kind", list(TASK_BY_KIND))
@pytest.mark.parametrize(
    "head, features",
    [("stat_cached", "vit_b16"), ("lstm", "resnet18"), ("temporal_transformer", "resnet18"),
     ("longformer", "resnet18")],
)
def test_train_end_to_end(tiny_store, tmp_path, patch_aware_train, head, features, kind):
    config = TrainConfig(
        dataset="tiny", task=TASK_BY_KIND[kind], head=head, features=(features,), plan="scene",
        store=str(tiny_store), runs_dir=str(tmp_path / "runs"), epochs=2, batch_size=4,
        warmup_epochs=1, head_kwargs=SMALL_TRAIN[head],
    )
    result = train(config, catalog=tiny_catalog(), log=lambda _: None)
    assert result["num_videos"] == {"train": 8, "val": 2, "test": 2}
    assert len(result["history"]) == 2
    for split in ("train", "val", "test"):
        values = result["metrics"][split].values()
        assert values and all(np.isfinite(v) for v in values)
    assert (Path(result["run_dir"]) / "checkpoint.pt").exists()


def test_train_longformer_on_vtn_clips_with_token_times(tiny_store, tmp_path, monkeypatch):
    """VTN §4.1 on cached features: training sees N-token random clips with their times,
    evaluation the whole video; SGD with the steps schedule runs."""
    from heads.models.longformer import LongformerHead

    seen = []
    forward = LongformerHead.forward

    def record(self, x, mask, times=None, times_mask=None):
        seen.append((self.training, x.shape[1], None if times is None else times.shape))
        return forward(self, x, mask, times, times_mask)

    monkeypatch.setattr(LongformerHead, "forward", record)
    config = TrainConfig(
        dataset="tiny", task="genre", head="longformer", features=("resnet18",), plan="scene",
        store=str(tiny_store), runs_dir=str(tmp_path / "runs"), epochs=2, batch_size=4,
        warmup_epochs=0, train_clip_sec=3.0, train_clip_frames=7, optimizer="sgd",
        nesterov=True, schedule="steps", lr_milestones=(1,), lr=1e-2,
        head_kwargs={"num_heads": 2, "num_layers": 1, "ff_dim": 16},
    )
    result = train(config, catalog=tiny_catalog(), log=lambda _: None)
    assert all(np.isfinite(v) for v in result["metrics"]["test"].values())
    train_calls = [s for s in seen if s[0]]
    assert train_calls and all(t == 7 and shape[1:] == (7, 2) for _, t, shape in train_calls)
    eval_lengths = {t for training, t, _ in seen if not training}
    assert max(eval_lengths) == 5  # whole videos (2 to 5 tokens), not clips
    assert all(shape is not None for _, _, shape in seen)


def test_train_stan_distill_adds_its_aux_loss(tiny_store, tmp_path):
    losses = []
    for weight in (0.0, 5.0):
        config = TrainConfig(
            dataset="tiny", task="genre", head="stan_distill",
            features=("resnet18", "r2plus1d_18"), store=str(tiny_store),
            runs_dir=str(tmp_path / "runs"), epochs=1, batch_size=4, warmup_epochs=1,
            head_kwargs={**STAN_SMALL, "distill_weight": weight},
        )
        result = train(config, catalog=tiny_catalog(), log=lambda _: None)
        assert set(result["metrics"]["test"]) == {"top1"}
        losses.append(result["history"][0]["train_loss"])
    # Same seed, same data: only the weighted distillation term differs.
    assert np.isfinite(losses).all() and losses[1] != losses[0]

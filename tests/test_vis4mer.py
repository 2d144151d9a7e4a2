"""``vis4mer`` and ``lst``: the shared multi-scale decoder on patch (B, T, N, D) and frame
(B, T, D) tokens, masked pooling, padding invariance, and attention against a dense reference."""

from __future__ import annotations

import math

import pytest
import torch

from heads.models import create_head
from heads.models.lst import MaskedSelfAttention
from heads.models.s4 import S4D
from heads.models.multiscale import (
    DecoderBlock,
    PaperDecoderBlock,
    flatten_tokens,
    grid_pool,
    masked_pool,
)
from heads.models.vis4mer import S4Layer

HEADS = ("vis4mer", "lst")
SMALL = {"vis4mer": {"d_model": 32, "state_dim": 8, "dropout": 0.1},
         "lst": {"d_model": 32, "num_heads": 4, "dropout": 0.1}}
DIM = 24


# Tiny models run on one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str, num_outputs: int = 3, **kwargs):
    torch.manual_seed(0)
    return create_head(name, in_dim=DIM, num_outputs=num_outputs, **{**SMALL[name], **kwargs})


def frames(lengths, num_patches: int | None, *, seed: int = 0):
    """x (B, T, N, D) or (B, T, D) and mask (B, T) for videos of ``lengths`` frames."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    shape = (len(lengths), int(lengths.max())) + ((num_patches,) if num_patches else ()) + (DIM,)
    x = torch.randn(shape, generator=generator)
    mask = torch.arange(shape[1]) < lengths[:, None]  # (B, T)
    return x, mask


def append_padded_frames(x, mask, num_extra: int, fill: float | None):
    """The same batch with ``num_extra`` padded frames; ``fill=None`` fills them with noise."""
    extra_shape = (x.shape[0], num_extra, *x.shape[2:])
    extra = torch.randn(extra_shape) * 100 if fill is None else torch.full(extra_shape, fill)
    return (torch.cat([x, extra], dim=1),  # (B, T + E, ...)
            torch.cat([mask, torch.zeros(x.shape[0], num_extra, dtype=torch.bool)], dim=1))


# ------------------------------------------------------------------------------- pieces


def test_flatten_tokens_is_frame_major():
    x = torch.arange(3 * 2 * 1.0).reshape(1, 3, 2, 1).expand(2, -1, -1, -1)  # (B, T, N, 1)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    flat, flat_mask = flatten_tokens(x, mask)
    assert flat.shape == (2, 6, 1)
    torch.testing.assert_close(flat[0, :, 0], torch.arange(6.0))
    assert flat_mask.tolist() == [[True] * 4 + [False] * 2, [True] * 2 + [False] * 4]
    pooled, pooled_mask = flatten_tokens(x[:, :, 0], mask)  # (B, T, D): N = 1, unchanged
    assert pooled.shape == (2, 3, 1) and torch.equal(pooled_mask, mask)
    with pytest.raises(ValueError, match="does not match"):
        flatten_tokens(x, mask[:, :2])


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_masked_pool_uses_real_tokens_only(kind):
    x = torch.tensor([[[1.0], [3.0], [5.0], [100.0], [7.0]]])  # (1, 5, 1)
    mask = torch.tensor([[True, True, True, False, True]])
    pooled, pooled_mask = masked_pool(x, mask, kind)
    expected = [2.0, 5.0, 7.0] if kind == "avg" else [3.0, 5.0, 7.0]
    torch.testing.assert_close(pooled[0, :, 0], torch.tensor(expected))
    assert pooled_mask.tolist() == [[True, True, True]]
    empty, empty_mask = masked_pool(x, torch.zeros_like(mask), kind)
    assert (empty == 0).all() and not empty_mask.any()
    with pytest.raises(ValueError, match="valid pools: avg, max"):
        masked_pool(x, mask, "sum")


def test_decoder_block_follows_the_official_order():
    # y = GELU(Linear(Pool(x + Mixer(LN(x))))), channels halved (ViS4mer §3, official code).
    torch.manual_seed(0)
    mixer = S4Layer(dim=8, dropout=0.0, state_dim=4)
    block = DecoderBlock(dim=8, mixer=mixer, pool="avg", dropout=0.0).eval()
    x = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    # The deep S4 layer: SSM → GELU → position-wise Linear (S4 §3.4).
    s4_out = mixer.out(torch.nn.functional.gelu(mixer.s4(block.norm(x))))
    pool = lambda t: t.reshape(2, 3, 2, -1).mean(2)  # noqa: E731  (B, L/2, H)
    linear = block.mlp[0]
    expected = torch.nn.functional.gelu(linear(pool(x + s4_out)))
    out, out_mask = block(x, mask)
    assert out.shape == (2, 3, 4) and out_mask.all()
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_vis4mer_parameter_count_at_default_size():
    # Per block of width H: LayerNorm 2H; S4D 194H (dt H, A 2·32H, B 64H, C 64H, D H);
    # the S4 layer's output Linear H² + H; the halving Linear H²/2 + H/2. Classifier 128·K + K.
    model = create_head("vis4mer", in_dim=1024, num_outputs=10)
    expected = sum(2 * h + 194 * h + h * h + h + h * h // 2 + h // 2 for h in (1024, 512, 256))
    expected += 128 * 10 + 10
    assert expected == 2_419_594
    assert sum(p.numel() for p in model.parameters()) == expected


def test_masked_attention_matches_a_dense_reference():
    torch.manual_seed(0)
    attention = MaskedSelfAttention(dim=8, num_heads=2, dropout=0.0)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    q, k, v = attention.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)  # (B, heads, L, 4)
    scores = q @ k.transpose(-1, -2) / 2.0  # (B, heads, L, L); sqrt(head dim 4) = 2
    scores = scores.masked_fill(~mask[:, None, None, :], -math.inf)
    dense = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 8)  # (B, L, H)
    torch.testing.assert_close(attention(x, mask), attention.out(dense), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------- whole heads


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("num_patches", [None, 5])
@pytest.mark.parametrize("num_outputs", [1, 4])
def test_output_shape(name, num_patches, num_outputs):
    model = make(name, num_outputs=num_outputs).eval()
    with torch.no_grad():
        out = model(*frames([4, 2, 3], num_patches))
    assert out.shape == (3, num_outputs) and torch.isfinite(out).all()


@pytest.mark.parametrize("name, kwargs", [
    ("vis4mer", {}), ("vis4mer", {"pool": "max", "bidirectional": True, "s4_init": "lin"}),
    ("lst", {}), ("lst", {"pool": "max", "positional_encoding": False}),
])
@pytest.mark.parametrize("num_patches", [None, 3, 7])
@pytest.mark.parametrize("fill", [None, math.nan])
def test_padded_frames_never_change_the_output(name, kwargs, num_patches, fill):
    model = make(name, **kwargs).eval()
    x, mask = frames([5, 3, 1], num_patches)
    with torch.no_grad():
        reference = model(x, mask)
        padded = model(*append_padded_frames(x, mask, num_extra=4, fill=fill))
        torch.testing.assert_close(padded, reference, atol=1e-5, rtol=0)
        for b, length in enumerate([5, 3, 1]):  # each video alone, without any padding
            alone = model(x[b : b + 1, :length], mask[b : b + 1, :length])
            torch.testing.assert_close(alone, reference[b : b + 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("num_patches", [None, 4])
def test_gradients_reach_every_parameter(name, num_patches):
    model = make(name).train()
    model(*frames([6, 3], num_patches)).square().sum().backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {param_name}"
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient for {param_name}"


def test_the_input_projection_exists_only_when_widths_differ():
    assert isinstance(make("vis4mer").input_proj, torch.nn.Linear)
    same = create_head("vis4mer", in_dim=32, num_outputs=2, d_model=32, state_dim=4)
    assert isinstance(same.input_proj, torch.nn.Identity)
    kept = create_head("vis4mer", in_dim=16, num_outputs=2, d_model=None, state_dim=4)
    assert isinstance(kept.input_proj, torch.nn.Identity) and kept.d_model == 16


def test_vis4mer_defaults_match_the_paper():
    model = create_head("vis4mer", in_dim=1024, num_outputs=10)
    assert model.d_model == 1024 and isinstance(model.input_proj, torch.nn.Identity)
    assert [b.norm.normalized_shape[0] for b in model.blocks] == [1024, 512, 256]
    assert model.classifier.in_features == 128
    s4 = model.blocks[0].mixer.s4
    assert isinstance(s4, S4D) and s4.state_dim == 64 and not s4.bidirectional
    assert all(b.pool == "avg" and b.dropout.p == 0.2 for b in model.blocks)
    assert all(b.mixer.dropout.p == 0.2 for b in model.blocks)
    assert s4.a_imag._optim == {"lr": 1e-3, "weight_decay": 0.0}


def test_lst_shares_the_decoder_with_attention_mixers():
    model = create_head("lst", in_dim=64, num_outputs=3, d_model=64, num_heads=4)
    assert all(isinstance(b.mixer, MaskedSelfAttention) for b in model.blocks)
    assert [b.norm.normalized_shape[0] for b in model.blocks] == [64, 32, 16]


@pytest.mark.parametrize("name, kwargs, match", [
    ("vis4mer", {"d_model": 36}, "divisible by 2\\*\\*num_blocks"),
    ("vis4mer", {"pool": "sum"}, "valid pools"),
    ("lst", {"d_model": 48, "num_heads": 5}, "not divisible by num_heads 5"),
])
def test_bad_arguments_are_named(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_head(name, in_dim=DIM, num_outputs=2, **kwargs)


@pytest.mark.parametrize("name", ["vis4mer", "lst", "stat_cached"])
def test_patch_heads_accept_patch_feature_sets(name):
    from heads.data import head_token_kinds

    assert head_token_kinds(name)[0] == "patch" and "pooled" in head_token_kinds(name)


def test_heads_list_prints_parameter_counts_at_the_papers_sizes():
    from typer.testing import CliRunner

    from heads.cli import app

    result = CliRunner().invoke(app, ["list", "--in-dim", "1024", "--num-outputs", "10"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[-1] for line in result.output.splitlines()[1:]}
    # ViS4mer at D = 1024 (ViT-L/16 tokens, no input projection), K = 10 (LVU director).
    assert rows["vis4mer"] == "2,419,594"


class Counting(torch.nn.Module):
    """A mixer that records the sequence length it sees (and passes its input through)."""

    def __init__(self, seen: list):
        super().__init__()
        self.seen = seen

    def forward(self, x, mask):
        self.seen.append((x.shape[1], int(mask[0].sum())))
        return x


def token_counts(variant: str, num_patches: int) -> list:
    from heads.models.multiscale import MultiScaleDecoder

    seen: list = []
    model = MultiScaleDecoder(name="probe", in_dim=8, num_outputs=2,
                              mixer_factory=lambda dim: Counting(seen), d_model=8, num_blocks=3,
                              pool=None, dropout=0.0, variant=variant).eval()
    x, mask = torch.randn(1, 60, num_patches, 8), torch.ones(1, 60, dtype=torch.bool)
    with torch.no_grad():
        model(x, mask)
    return seen


def test_official_variant_token_counts():
    """60 s × 197 ViT tokens, AvgPool1d(2) with its floor: 11,820 → 5,910 → 2,955 (→ 1,477)."""
    assert [real for _, real in token_counts("official", 197)] == [11_820, 5_910, 2_955]
    x = torch.arange(7.0).reshape(1, 7, 1)
    pooled, mask = masked_pool(x, torch.ones(1, 7, dtype=torch.bool), "avg", odd="drop")
    assert int(mask.sum()) == 3 and pooled[0, :3, 0].tolist() == [0.5, 2.5, 4.5]
    avgpool = torch.nn.functional.avg_pool1d(torch.arange(2955.0)[None, None], 2)
    assert avgpool.shape[-1] == 1_477


def test_paper_variant_token_counts():
    """Eq. 4 on 60 × 14 × 14 = 11,760 patch tokens (CLS dropped), 1 × 2 × 2 max pooling with
    spatial padding 1 per frame: 14 → 8 → 5 (→ 3)."""
    assert token_counts("paper", 197) == [(11_760, 11_760), (3_840, 3_840), (1_500, 1_500)]
    assert token_counts("paper", 196)[0] == (11_760, 11_760)
    grid = torch.randn(1, 2, 14, 14, 4)
    assert grid_pool(grid, "max").shape == (1, 2, 8, 8, 4)
    # Border cells pool a 1-token corner: the padding never wins a max.
    assert torch.equal(grid_pool(grid, "max")[0, :, 0, 0], grid[0, :, 0, 0])
    with pytest.raises(ValueError, match="neither G² nor CLS"):
        token_counts("paper", 7)


def test_paper_block_follows_eq_4():
    # x_out = MLP(Pool(S4(LN x))) + Linear(Pool x): its own skip Linear (ViS4mer §4.2, Eq. 4).
    torch.manual_seed(0)
    mixer = S4Layer(dim=8, dropout=0.0, state_dim=4)
    block = PaperDecoderBlock(dim=8, mixer=mixer, pool="max").eval()
    x = torch.randn(2, 3, 4, 4, 8)  # (B, T, G, G, H)
    mask = torch.ones(2, 3, dtype=torch.bool)
    flat = x.reshape(2, 48, 8)
    s4_out = mixer.out(torch.nn.functional.gelu(mixer.s4(block.norm(flat)))).reshape(x.shape)

    def pool(t):  # per frame 2 × 2 max with padding 1: 4 × 4 → 3 × 3
        frames = t.reshape(6, 4, 4, 8).permute(0, 3, 1, 2)
        out = torch.nn.functional.max_pool2d(frames, 2, 2, padding=1)
        return out.permute(0, 2, 3, 1).reshape(2, 3, 3, 3, 8)

    expected = torch.nn.functional.gelu(block.mlp[0](pool(s4_out))) + block.skip(pool(x))
    out, out_mask = block(x, mask)
    assert out.shape == (2, 3, 3, 3, 4) and torch.equal(out_mask, mask)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert block.skip is not block.mlp[0]


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("num_patches", [None, 4, 5])
def test_paper_variant_ignores_padded_frames(name, num_patches):
    model = make(name, variant="paper").eval()
    assert all(isinstance(b, PaperDecoderBlock) and b.pool == "max" for b in model.blocks)
    x, mask = frames([5, 3, 1], num_patches)
    with torch.no_grad():
        reference = model(x, mask)
        padded = model(*append_padded_frames(x, mask, num_extra=4, fill=math.nan))
        torch.testing.assert_close(padded, reference, atol=1e-5, rtol=0)
        for b, length in enumerate([5, 3, 1]):
            alone = model(x[b : b + 1, :length], mask[b : b + 1, :length])
            torch.testing.assert_close(alone, reference[b : b + 1], atol=1e-5, rtol=0)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown variant 'eq4'; valid: official, paper"):
        create_head("vis4mer", in_dim=DIM, num_outputs=2, variant="eq4")


@pytest.mark.parametrize("frame_tokens, per_60_s", [(196, 11_760), (49, 2_940), (25, 1_500),
                                                     (1, 60)])
def test_token_count_ablation_matches_the_papers_rows(frame_tokens, per_60_s):
    """ViS4mer §5.2 (Fig. 3, Tab. 3): per-frame spatial max pooling to 11,760, 2,940, 1,500
    tokens per 60 frames of 197 ViT tokens, and 60 = the frame-level CLS tokens."""
    from heads.models.multiscale import reduce_frame_tokens

    x = torch.randn(1, 60, 197, 4)
    reduced = reduce_frame_tokens(x, frame_tokens)
    assert reduced[0].numel() // 4 == per_60_s
    if frame_tokens == 1:
        assert torch.equal(reduced, x[:, :, 0])  # the CLS tokens
    if frame_tokens == 25:  # stride 3 in ceil mode: the last row/column pools 14 - 12 = 2 cells
        grid = x[0, 0, 1:].reshape(14, 14, 4)
        assert torch.equal(reduced[0, 0, 24], grid[12:, 12:].amax(dim=(0, 1)))
    seen = []
    from heads.models.multiscale import MultiScaleDecoder

    model = MultiScaleDecoder(name="probe", in_dim=4, num_outputs=2, d_model=4, num_blocks=1,
                              mixer_factory=lambda dim: Counting(seen), pool=None, dropout=0.0,
                              frame_tokens=frame_tokens)
    model(x, torch.ones(1, 60, dtype=torch.bool))
    assert seen[0][0] == per_60_s


def test_token_counts_without_a_stride_are_refused():
    from heads.models.multiscale import reduce_frame_tokens

    with pytest.raises(ValueError, match="no pooling stride"):
        reduce_frame_tokens(torch.randn(1, 2, 197, 4), 36)
    with pytest.raises(ValueError, match="CLS token; these tokens have none"):
        reduce_frame_tokens(torch.randn(1, 2, 196, 4), 1)

"""Head models: the interface every registered head follows, and STAN / mean numerics."""

from __future__ import annotations

import math

import pytest
import torch

from heads.models import create_head, get_head_class, list_heads, num_streams_for, register_head
from heads.models.mean import masked_mean
from heads.models.stan import ContextGating, sinusoidal_encoding

# Small widths keep every head fast on CPU; a head not listed here runs at its defaults.
STAN_SMALL = {"d_model": 32, "num_heads": 4, "ff_dim": 64}
SMALL_KWARGS = {"stan": STAN_SMALL, "stan_gated": STAN_SMALL, "stan_distill": STAN_SMALL,
                "mean": {"hidden_dim": 32}}
STREAM_DIMS = (12, 20, 8)


# Tiny models run on one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def make_head(name: str, num_outputs: int = 3, num_streams: int | None = None, **kwargs):
    num_streams = num_streams or len(get_head_class(name).streams)
    in_dim = list(STREAM_DIMS[:num_streams])
    torch.manual_seed(0)
    return create_head(
        name, in_dim=in_dim, num_outputs=num_outputs, **{**SMALL_KWARGS.get(name, {}), **kwargs}
    )


def make_inputs(in_dims, lengths_per_stream, *, seed: int = 0) -> list[torch.Tensor]:
    """``[x_0, mask_0, ...]``; stream i has videos of lengths ``lengths_per_stream[i]``."""
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for dim, lengths in zip(in_dims, lengths_per_stream):
        lengths = torch.tensor(lengths)
        x = torch.randn(len(lengths), int(lengths.max()), dim, generator=generator)  # (B, T, D)
        mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
        inputs += [x, mask]
    return inputs


def pad_more(inputs: list[torch.Tensor], num_extra: int, fill: float) -> list[torch.Tensor]:
    """The same batch with ``num_extra`` more padded positions per stream, holding ``fill``."""
    out = []
    for x, mask in zip(inputs[0::2], inputs[1::2]):
        batch, _, dim = x.shape
        out += [
            torch.cat([x, torch.full((batch, num_extra, dim), fill)], dim=1),  # (B, T + E, D)
            torch.cat([mask, torch.zeros(batch, num_extra, dtype=torch.bool)], dim=1),  # (B, T + E)
        ]
    return out


def model_inputs(model, lengths=((5, 3, 1), (4, 4, 2), (2, 6, 3))) -> list[torch.Tensor]:
    inputs = make_inputs(model_dims(model), lengths[: len(model_dims(model))])
    if getattr(model, "uses_token_times", False):  # the first stream's token times, 0.5 s each
        mask = inputs[1]
        start = 0.5 * torch.arange(mask.shape[1], dtype=torch.float32).expand(mask.shape)
        times = torch.stack([start, start + 0.5], dim=-1)  # (B, T, 2)
        inputs += [torch.where(mask.unsqueeze(-1), times, 0.0), mask.clone()]
    return inputs


def model_dims(model) -> list[int]:
    return list(STREAM_DIMS[: len(model.streams)])


# ------------------------------------------------------------------------------------ registry


def test_registry_lists_the_paper_heads():
    assert {"mean", "stan"} <= set(list_heads())
    assert list_heads("stan*") == ["stan", "stan_distill", "stan_gated"]


def test_unknown_head_lists_valid_names():
    with pytest.raises(KeyError, match="valid heads: .*mean.*stan"):
        create_head("nope", in_dim=8, num_outputs=2)


def test_registering_a_name_twice_is_an_error():
    class Other(torch.nn.Module):
        streams = ("tokens",)

    with pytest.raises(ValueError, match="registered twice"):
        register_head("mean")(Other)


def test_stream_count_is_checked():
    with pytest.raises(ValueError, match="takes 2 feature set"):
        num_streams_for("stan", 1)
    assert num_streams_for("mean", 3) == 3
    with pytest.raises(ValueError, match="2 stream"):
        create_head("stan", in_dim=[8, 8, 8], num_outputs=2)


# --------------------------------------------------------------------- interface, every head


@pytest.mark.parametrize("name", list_heads())
@pytest.mark.parametrize("num_outputs", [1, 4])
def test_output_shape(name, num_outputs):
    model = make_head(name, num_outputs=num_outputs).eval()
    with torch.no_grad():
        out = model(*model_inputs(model))
    assert out.shape == (3, num_outputs)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_heads())
def test_gradients_reach_every_parameter(name):
    model = make_head(name).train()
    loss = model(*model_inputs(model)).square().sum()
    aux_loss = getattr(model, "aux_loss", None)  # the trainer adds it (heads.loop.Trainer.step)
    (loss + aux_loss if isinstance(aux_loss, torch.Tensor) else loss).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {param_name}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", list_heads())
@pytest.mark.parametrize("fill", [0.0, 1e4, math.nan])
def test_padding_never_changes_the_output(name, fill):
    model = make_head(name).eval()
    inputs = model_inputs(model)
    with torch.no_grad():
        reference = model(*inputs)
        padded = model(*pad_more(inputs, num_extra=7, fill=fill))
    torch.testing.assert_close(padded, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list_heads())
def test_batched_equals_one_video_at_a_time(name):
    # Dense reference: each video alone, without any padding.
    model = make_head(name).eval()
    inputs = model_inputs(model)
    with torch.no_grad():
        batched = model(*inputs)
        for b in range(batched.shape[0]):
            alone = []
            for x, mask in zip(inputs[0::2], inputs[1::2]):
                length = int(mask[b].sum())
                alone += [x[b : b + 1, :length], mask[b : b + 1, :length]]  # (1, T_b, D), (1, T_b)
            torch.testing.assert_close(model(*alone), batched[b : b + 1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list_heads())
def test_video_without_tokens_gives_finite_output(name):
    model = make_head(name).eval()
    inputs = model_inputs(model)
    for mask in inputs[1::2]:
        mask[0] = False
    with torch.no_grad():
        assert torch.isfinite(model(*inputs)).all()


# ------------------------------------------------------------------------------------ mean


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor([[2.0, 3.0]]))


def test_mean_head_concatenates_stream_means():
    model = make_head("mean", num_streams=2).eval()
    assert model.streams == ("tokens_0", "tokens_1")
    inputs = make_inputs(STREAM_DIMS[:2], [(3, 2), (1, 4)])
    pooled = torch.cat([masked_mean(inputs[0], inputs[1]), masked_mean(inputs[2], inputs[3])], -1)
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs), model.mlp(pooled))


# ------------------------------------------------------------------------------------ STAN


def test_sinusoidal_encoding_golden_values():
    # Vaswani et al. 2017 §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...).
    pe = sinusoidal_encoding(3, 4)
    expected = torch.tensor(
        [
            [0.0, 1.0, 0.0, 1.0],
            [0.8414709848, 0.5403023059, 0.0099998333, 0.9999500004],
            [0.9092974268, -0.4161468365, 0.0199986667, 0.9998000067],
        ]
    )
    torch.testing.assert_close(pe, expected, atol=1e-7, rtol=0)
    assert sinusoidal_encoding(5, 7).shape == (5, 7)


def test_context_gating_formula():
    torch.manual_seed(0)
    gating = ContextGating(6)
    x = torch.randn(4, 6)
    expected = x * torch.sigmoid(x @ gating.gate.weight.T + gating.gate.bias)
    torch.testing.assert_close(gating(x), expected)


def test_stan_fusion_follows_the_paper():
    # z = LayerNorm(q(z_s) + λ q(z_t)) with a shared q, then the classifier (STAN §3).
    model = make_head("stan", fusion_weight=0.6).eval()
    x_s, m_s, x_t, m_t = model_inputs(model)
    with torch.no_grad():
        pe = sinusoidal_encoding(x_s.shape[1] + 1, model.d_model)
        z_s, z_t = model.spatial(x_s, m_s, pe), model.temporal(x_t, m_t, pe)
        expected = model.classifier(model.fusion_norm(model.q(z_s) + 0.6 * model.q(z_t)))
        torch.testing.assert_close(model(x_s, m_s, x_t, m_t), expected, atol=1e-6, rtol=0)


def test_stan_fusion_weight_zero_ignores_the_temporal_stream():
    inputs = make_inputs(STREAM_DIMS[:2], [(4, 2), (3, 5)])
    other_temporal = make_inputs(STREAM_DIMS[:2], [(4, 2), (2, 6)], seed=1)[2:]
    with torch.no_grad():
        blind = make_head("stan", fusion_weight=0.0).eval()
        torch.testing.assert_close(blind(*inputs[:2], *other_temporal), blind(*inputs))
        fused = make_head("stan").eval()  # default λ = 0.6: the temporal stream matters
        assert not torch.allclose(fused(*inputs[:2], *other_temporal), fused(*inputs))


def test_stan_defaults_match_the_paper():
    # λ = 0.6 (Eq. 5), 2 layers (Fig. 2), post-LN (§3); widths fit Tab. 4 (test_stan_paper.py).
    model = create_head("stan", in_dim=512, num_outputs=3)
    assert model.fusion_weight == 0.6
    assert model.d_model == 768
    for stream in (model.spatial, model.temporal):
        assert len(stream.encoder.layers) == 2
        layer = stream.encoder.layers[0]
        assert layer.self_attn.num_heads == 12 and not layer.norm_first
        assert layer.linear1.out_features == 3072
    gates = [m for m in model.classifier if isinstance(m, ContextGating)]
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and len(gates) == 2

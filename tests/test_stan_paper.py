"""STAN against its paper (Fish et al., BMVC 2022, /work/shared/papers/stan.txt): post-LN
encoder blocks (§3), the widths that give STAN-Small's trainable count (§3, Tab. 4), DeiT-style
token distillation (§4 "as described in [49]"; Tab. 1/4) next to logit distillation, the scene
detector closest to §3's cuts, and padding invariance for every variant."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from heads.models import create_head
from heads.models.stan import STAN, distillation_loss, sinusoidal_encoding

TINY = {"d_model": 16, "num_heads": 2, "ff_dim": 32, "dropout": 0.0}
RESNET18_TRUNK = 11_176_512  # torchvision resnet18 without its fc (what STAN-Small trains)
R2PLUS1D_18_TRUNK = 31_300_125  # torchvision r2plus1d_18 without its fc
MMX_GENRES = 20  # MMX-Trailer-20: "20 genres" (STAN §4)

pytestmark = pytest.mark.usefixtures("one_thread")


def lengths_mask(lengths, num_tokens: int) -> torch.Tensor:
    return torch.arange(num_tokens)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


def stan_inputs(seed: int = 0, temporal_lengths=(4, 3)):
    generator = torch.Generator().manual_seed(seed)
    x_s = torch.randn(2, 5, 12, generator=generator)  # (B, T_s, D_s)
    x_t = torch.randn(2, 4, 20, generator=generator)  # (B, T_t, D_t)
    return x_s, lengths_mask([5, 2], 5), x_t, lengths_mask(list(temporal_lengths), 4)


def tiny(name: str = "stan", num_outputs: int = 3, **kwargs) -> STAN:
    torch.manual_seed(0)
    return create_head(name, in_dim=[12, 20], num_outputs=num_outputs, **{**TINY, **kwargs})


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------- encoder blocks (STAN §3)


def hand_attention(layer, x, ignore):
    """Multi-head self-attention (Vaswani et al. §3.2.2) written out; returns the output and
    the weights averaged over heads, (B, S, S)."""
    batch, seq, dim = x.shape
    heads = layer.self_attn.num_heads
    qkv = x @ layer.self_attn.in_proj_weight.T + layer.self_attn.in_proj_bias  # (B, S, 3D)
    q, k, v = (t.reshape(batch, seq, heads, dim // heads).transpose(1, 2)
               for t in qkv.chunk(3, dim=-1))  # (B, h, S, d_k) each
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)  # (B, h, S, S)
    weights = scores.masked_fill(ignore[:, None, None, :], -math.inf).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, seq, dim)  # (B, S, D)
    return layer.self_attn.out_proj(out), weights.mean(1)


def hand_encoder(stream, x, mask, pe, norm: str):
    """The stream encoder written out: post-LN ``LN(x + SA(x))``, ``LN(x + FFN(x))`` (STAN §3,
    Vaswani et al. §3.1) or pre-LN ``x + SA(LN x)``, ``x + FFN(LN x)`` and a final LN. Returns
    the CLS output (B, D) and the last layer's CLS attention on the scenes (B, T)."""
    tokens = stream.proj(torch.where(mask[..., None], x, 0.0))  # (B, T, D)
    cls = stream.cls_token.expand(len(x), -1, -1) + pe[:1]  # (B, 1, D)
    h = torch.cat([cls, tokens + pe[1 : x.shape[1] + 1]], dim=1)  # (B, 1 + T, D)
    ignore = ~torch.cat([torch.ones(len(x), 1, dtype=torch.bool), mask], dim=1)

    def ln(module, t):
        return F.layer_norm(t, t.shape[-1:], module.weight, module.bias, module.eps)

    for layer in stream.encoder.layers:
        ffn = lambda t: layer.linear2(torch.relu(layer.linear1(t)))  # noqa: E731
        if norm == "post":
            a, weights = hand_attention(layer, h, ignore)
            h = ln(layer.norm1, h + a)
            h = ln(layer.norm2, h + ffn(h))
        else:
            a, weights = hand_attention(layer, ln(layer.norm1, h), ignore)
            h = h + a
            h = h + ffn(ln(layer.norm2, h))
    if norm == "pre":
        h = ln(stream.encoder.norm, h)
    return h[:, 0], weights[:, 0, 1:]


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_stream_encoder_equals_the_hand_written_block(norm):
    model = tiny(norm=norm).eval()
    x_s, m_s, _, _ = stan_inputs()
    pe = sinusoidal_encoding(6, 16)
    with torch.no_grad():
        cls, attention = hand_encoder(model.spatial, x_s, m_s, pe, norm)
        torch.testing.assert_close(model.spatial(x_s, m_s, pe), cls, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.spatial.cls_attention(x_s, m_s, pe), attention,
                                   atol=1e-6, rtol=0)


def test_post_ln_is_the_default_and_pre_ln_an_option():
    post, pre = tiny(), tiny(norm="pre")
    for stream in (post.spatial, post.temporal):
        assert all(not layer.norm_first for layer in stream.encoder.layers)
        assert stream.encoder.norm is None  # post-LN output is already normalised
    for stream in (pre.spatial, pre.temporal):
        assert all(layer.norm_first for layer in stream.encoder.layers)
        assert isinstance(stream.encoder.norm, torch.nn.LayerNorm)
    with pytest.raises(ValueError, match="norm must be post or pre"):
        tiny(norm="sandwich")
    with pytest.raises(ValueError, match="activation must be relu or gelu"):
        tiny(activation="swish")


# ------------------------------------------------------------------ sizes (STAN §3, Tab. 4)


def test_default_widths_give_stan_small_trainable_count():
    # ResNet18 + R(2+1)D-18 scene features (512-d each), MMX-Trailer-20's 20 genres.
    model = create_head("stan", in_dim=(512, 512), num_outputs=MMX_GENRES)
    layer = model.spatial.encoder.layers[0]
    assert (model.d_model, layer.self_attn.num_heads, layer.linear1.out_features) == (768, 12, 3072)
    assert len(model.spatial.encoder.layers) == 2 and layer.activation is F.relu
    # Golden value, by hand: per stream proj 393,984 + CLS 768 + 2 layers × 7,087,872; shared q
    # 1,181,184, fusion LN 1,536, classifier 4 × 590,592 + 768 · 20 + 20.
    stream = 512 * 768 + 768 + 768 + 2 * (4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768
                                          + 4 * 768)
    expected = 2 * stream + 2 * (768 * 768 + 768) + 2 * 768 + 4 * (768 * 768 + 768) + 768 * 20 + 20
    assert count(model) == expected == 32_701_460
    # STAN-Small trains the head and ResNet18 (§3): 43.88 M against the paper's 45 M.
    assert count(model) + RESNET18_TRUNK == 43_877_972
    assert (count(model) + RESNET18_TRUNK) / 45e6 == pytest.approx(0.975, abs=1e-3)
    # STAN-Large also trains R(2+1)D-18: 75.18 M against the paper's 92.5 M (see stan.py).
    assert count(model) + RESNET18_TRUNK + R2PLUS1D_18_TRUNK == 75_178_097


def test_backbone_trunks_and_the_paper_table():
    from heads.paper_sizes import PAPER_SIZES, backbone_parameters

    assert backbone_parameters("resnet18") == RESNET18_TRUNK  # torchvision, fc removed
    assert backbone_parameters("r2plus1d_18") == R2PLUS1D_18_TRUNK
    rows = {row.name: row.count() for row in PAPER_SIZES if row.name.startswith("stan")}
    assert rows == {"stan_small": 43_877_972, "stan_large": 75_178_097}  # `heads list --paper`


def test_variant_trainable_counts():
    gated = create_head("stan_gated", in_dim=(512, 512), num_outputs=MMX_GENRES)
    token = create_head("stan_distill", in_dim=(512, 512), num_outputs=MMX_GENRES)
    logit = create_head("stan_distill", in_dim=(512, 512), num_outputs=MMX_GENRES,
                        distillation="logit")
    base = 32_701_460
    # Collaborative gating: g (2D → D → D) and h (D → D → D).
    assert count(gated) == base + (2 * 768 * 768 + 768) + (768 * 768 + 768) + 2 * (768 * 768 + 768)
    # Token distillation: the distillation token and its own classifier (DeiT's head_dist).
    assert count(token) == base + 768 + 4 * (768 * 768 + 768) + 768 * 20 + 20 == 35_079_976
    assert count(logit) == base


# -------------------------------------------------- distillation (STAN §4 "[49]"; Tab. 1/4)


def heads_by_hand(model, inputs):
    """(class-token logits, distillation-token logits, teacher logits) of ``model``."""
    x_s, m_s, x_t, m_t = inputs
    pe = sinusoidal_encoding(6, model.d_model)
    z_cls, z_dist = model.spatial.tokens(x_s, m_s, pe).unbind(1)  # (B, D) each
    z_t = model.temporal(x_t, m_t, pe)  # (B, D)
    y_cls = model.classifier(model.fusion_norm(model.q(z_cls)))
    y_dist = model.classifier_dist(model.fusion_norm(model.q(z_dist)))
    y_t = model.classifier(model.fusion_norm(model.q(z_t)))
    return y_cls, y_dist, y_t


def test_token_distillation_is_the_default():
    model = tiny("stan_distill")
    assert model.distillation == "token" and model.distill_targets == "hard"
    assert model.spatial.dist_token is not None and model.temporal.dist_token is None
    assert tiny("stan").spatial.dist_token is None


def test_token_distillation_eval_predicts_from_the_students_two_tokens():
    model = tiny("stan_distill").eval()
    inputs = stan_inputs()
    with torch.no_grad():
        y_cls, y_dist, _ = heads_by_hand(model, inputs)
        out = model(*inputs)
        torch.testing.assert_close(out, (y_cls + y_dist) / 2, atol=1e-6, rtol=0)
        # The teacher is not used at test time (DeiT): other temporal tokens, same output.
        other = stan_inputs(seed=1, temporal_lengths=(2, 4))
        torch.testing.assert_close(model(*inputs[:2], *other[2:]), out)
    assert model.aux_loss is None


def test_token_distillation_training_output_and_hard_loss():
    model = tiny("stan_distill", distill_weight=0.7).train()
    inputs = stan_inputs()
    out = model(*inputs)
    y_cls, y_dist, y_t = heads_by_hand(model, inputs)
    # Training: the label loss sees the class token and the teacher; the distillation token
    # learns the teacher's hard decision (DeiT §4 hard-label distillation).
    torch.testing.assert_close(out, (y_cls + y_t) / 2, atol=1e-6, rtol=0)
    expected = 0.7 * F.cross_entropy(y_dist, y_t.argmax(-1))
    torch.testing.assert_close(model.aux_loss, expected, atol=1e-6, rtol=0)
    model.aux_loss.backward()
    assert all(p.grad is None for p in model.temporal.parameters())  # the teacher is detached
    assert model.spatial.dist_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.classifier_dist.parameters())


def test_token_distillation_soft_and_multilabel_targets():
    inputs = stan_inputs()
    soft = tiny("stan_distill", distill_targets="soft", distill_temperature=3.0).train()
    soft(*inputs)
    _, y_dist, y_t = heads_by_hand(soft, inputs)
    kl = distillation_loss(y_dist, y_t.detach(), temperature=3.0, kind="kl")
    torch.testing.assert_close(soft.aux_loss, kl, atol=1e-6, rtol=0)
    multi = tiny("stan_distill", task_kind="multilabel").train()
    multi(*inputs)
    _, y_dist, y_t = heads_by_hand(multi, inputs)
    bce = F.binary_cross_entropy_with_logits(y_dist, (y_t > 0).float())
    torch.testing.assert_close(multi.aux_loss, bce, atol=1e-6, rtol=0)


def test_hard_distillation_loss_kinds():
    student, teacher = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, -0.5]])
    hard = dict(temperature=5.0, hard=True)
    torch.testing.assert_close(distillation_loss(student, teacher, kind="kl", **hard),
                               F.cross_entropy(student, torch.tensor([1])))
    torch.testing.assert_close(distillation_loss(student, teacher, kind="bce", **hard),
                               F.binary_cross_entropy_with_logits(student,
                                                                  torch.tensor([[0.0, 1.0, 0.0]])))
    torch.testing.assert_close(distillation_loss(student, teacher, kind="mse", **hard),
                               F.mse_loss(student, teacher))


def test_logit_distillation_option_keeps_the_former_behaviour():
    model = tiny("stan_distill", distillation="logit").train()
    assert model.spatial.dist_token is None and not hasattr(model, "classifier_dist")
    assert model.distill_targets == "soft"
    inputs = stan_inputs()
    out = model(*inputs)
    x_s, m_s, x_t, m_t = inputs
    pe = sinusoidal_encoding(6, 16)
    q_s, q_t = model.q(model.spatial(x_s, m_s, pe)), model.q(model.temporal(x_t, m_t, pe))
    torch.testing.assert_close(out, model.classifier(model.fusion_norm(q_s + 0.6 * q_t)),
                               atol=1e-6, rtol=0)
    student = model.classifier(model.fusion_norm(q_s))
    teacher = model.classifier(model.fusion_norm(q_t)).detach()
    torch.testing.assert_close(
        model.aux_loss, distillation_loss(student, teacher, temperature=2.0, kind="kl"),
        atol=1e-6, rtol=0)


def test_distillation_arguments_are_checked():
    with pytest.raises(ValueError, match="distillation must be token or logit"):
        tiny("stan_distill", distillation="feature")
    with pytest.raises(ValueError, match="only with fusion='distill'"):
        tiny("stan", distillation="token")
    with pytest.raises(ValueError, match="distill_targets must be hard or soft"):
        tiny("stan_distill", distill_targets="medium")


# ------------------------------------------------------------- padding, every STAN variant

VARIANTS = [
    ("stan", {}), ("stan", {"norm": "pre"}), ("stan", {"activation": "gelu"}),
    ("stan_gated", {}), ("stan_distill", {}), ("stan_distill", {"distillation": "logit"}),
    ("stan_distill", {"norm": "pre", "distill_targets": "soft"}),
]


def pad_more(inputs, num_extra: int, fill: float):
    out = []
    for x, mask in zip(inputs[0::2], inputs[1::2]):
        batch, _, dim = x.shape
        out += [torch.cat([x, torch.full((batch, num_extra, dim), fill)], dim=1),
                torch.cat([mask, torch.zeros(batch, num_extra, dtype=torch.bool)], dim=1)]
    return out


@pytest.mark.parametrize("name, kwargs", VARIANTS)
@pytest.mark.parametrize("fill", [0.0, 1e4, math.nan])
def test_padding_never_changes_outputs_or_aux_loss(name, kwargs, fill):
    model = tiny(name, **kwargs)
    inputs = stan_inputs()
    padded = pad_more(inputs, num_extra=6, fill=fill)
    with torch.no_grad():
        for training in (False, True):  # dropout 0: training outputs are deterministic too
            model.train(training)
            reference, aux = model(*inputs), model.aux_loss
            torch.testing.assert_close(model(*padded), reference, atol=1e-5, rtol=0)
            if aux is not None:
                torch.testing.assert_close(model.aux_loss, aux, atol=1e-5, rtol=0)
        attention = model.eval().cls_attention(*inputs)
        for got, want in zip(model.cls_attention(*padded), attention):
            torch.testing.assert_close(got[:, : want.shape[1]], want, atol=1e-6, rtol=0)
            assert (got[:, want.shape[1]:] == 0).all()


# ------------------------------------------------------------------- scene cuts (STAN §3)


def segment(detector: str, colours) -> list[int]:
    from pipeline.decode import Frame
    from pipeline.scenes import SceneDetectConfig, SceneSegmenter
    from tests.conftest import block_frames

    segmenter = SceneSegmenter(SceneDetectConfig(detector), fps=25)
    cuts = []
    for i, rgb in enumerate(block_frames(colours, 20)):
        cuts += segmenter.push(Frame(i, i / 25, rgb[..., ::-1].copy()))  # BGR, as decoded
    return cuts + segmenter.finish()


def test_adaptive_luma_cuts_on_brightness_changes_only():
    """STAN §3 cuts on brightness changes against a running average: ``adaptive_luma``
    (AdaptiveDetector, luma_only) finds grey-level cuts and ignores a hue change at the same
    brightness, which the default ``content`` detector cuts on."""
    from pipeline.scene_detectors import FastAdaptiveDetector
    from pipeline.scenes import SceneDetectConfig, SceneSegmenter

    detector = SceneSegmenter(SceneDetectConfig("adaptive_luma"), 25)._detector
    assert isinstance(detector, FastAdaptiveDetector)
    assert tuple(detector._weights) == (0.0, 0.0, 1.0, 0.0)  # PySceneDetect's LUMA_ONLY_WEIGHTS
    greys = [(30, 30, 30), (120, 120, 120), (210, 210, 210)]
    assert segment("adaptive_luma", greys) == [20, 40]
    same_value = [(200, 30, 30), (30, 30, 200)]  # hue differs; HSV value 200 in both
    assert segment("adaptive_luma", same_value) == []
    assert segment("content", same_value) == [20]
    # The default stays `content`: the detector is fingerprinted with every feature set.
    assert SceneDetectConfig().detector == "content"

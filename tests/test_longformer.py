"""The ``longformer`` head: banded attention against a dense band-plus-global reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from heads.models import create_head
from heads.models.longformer import LongformerSelfAttention, sliding_window_attention

SMALL = {"d_model": 16, "num_heads": 2, "ff_dim": 32, "num_layers": 2, "window": 4,
         "max_positions": 128, "positions": "token_index"}


# Tiny models run on one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def band_mask(key_mask: torch.Tensor, window: int, *, num_global: int) -> torch.Tensor:
    """Dense (B, T, G + T) mask of what each token may attend to: ``num_global`` always-visible
    keys, then the real keys within ``window // 2`` positions (Longformer §3.1)."""
    batch, num_tokens = key_mask.shape
    pos = torch.arange(num_tokens)
    band = (pos[:, None] - pos[None, :]).abs() <= window // 2  # (T, T)
    allowed = band & key_mask[:, None, :]  # (B, T, T)
    return torch.cat([torch.ones(batch, num_tokens, num_global, dtype=torch.bool), allowed], -1)


def lengths_mask(lengths, num_tokens: int) -> torch.Tensor:
    return torch.arange(num_tokens)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


@pytest.mark.parametrize("window", [2, 8, 32])
@pytest.mark.parametrize("num_tokens", [1, 7, 37, 100])
def test_banded_equals_dense_band_plus_global(window, num_tokens):
    generator = torch.Generator().manual_seed(num_tokens * 100 + window)
    batch, heads, dim = 3, 2, 4
    q, k, v = (torch.randn(batch, heads, num_tokens, dim, generator=generator,
                           dtype=torch.float64) for _ in range(3))
    g_k, g_v = (torch.randn(batch, heads, 1, dim, generator=generator, dtype=torch.float64)
                for _ in range(2))
    mask = lengths_mask([num_tokens, max(1, num_tokens // 2), 1], num_tokens)

    out = sliding_window_attention(q, k, v, key_mask=mask, window=window, global_k=g_k,
                                   global_v=g_v)
    dense_mask = band_mask(mask, window, num_global=1)[:, None]  # (B, 1, T, 1 + T)
    reference = F.scaled_dot_product_attention(
        q, torch.cat([g_k, k], 2), torch.cat([g_v, v], 2), attn_mask=dense_mask
    )
    real_queries = mask[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real_queries], reference[real_queries], atol=1e-12, rtol=0)
    assert torch.isfinite(out).all()  # padded queries too: they attend to themselves


def test_banded_without_global_keys_and_its_gradients():
    generator = torch.Generator().manual_seed(1)
    num_tokens, window = 23, 6
    q, k, v = (torch.randn(2, 2, num_tokens, 3, generator=generator, dtype=torch.float64,
                           requires_grad=True) for _ in range(3))
    mask = lengths_mask([23, 11], num_tokens)
    allowed = band_mask(mask, window, num_global=0) | torch.eye(num_tokens, dtype=torch.bool)

    out = sliding_window_attention(q, k, v, key_mask=mask, window=window)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    torch.testing.assert_close(out, reference, atol=1e-12, rtol=0)
    weights = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((reference * weights).sum(), (q, k, v))
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, atol=1e-12, rtol=0)


def test_layer_attention_equals_dense_longformer_reference():
    # Tokens: local projections over [CLS, band]; CLS: global projections over everything.
    torch.manual_seed(0)
    attn = LongformerSelfAttention(d_model=8, num_heads=2, window=4, dropout=0.0).double().eval()
    num_tokens = 13
    h = torch.randn(2, 1 + num_tokens, 8, dtype=torch.float64)
    mask = lengths_mask([13, 6], num_tokens)

    def split(x):  # (B, L, 8) -> (B, 2, L, 4)
        return x.view(2, -1, 2, 4).transpose(1, 2)

    q, k, v = (split(t) for t in attn.qkv(h).chunk(3, dim=-1))
    q_g = split(attn.q_global(h))
    k_g, v_g = (split(t) for t in attn.kv_global(h).chunk(2, dim=-1))
    tokens = F.scaled_dot_product_attention(
        q[:, :, 1:], k, v, attn_mask=band_mask(mask, 4, num_global=1)[:, None]
    )  # (B, H, T, 4)
    real = F.pad(mask, (1, 0), value=True)[:, None, None, :]  # (B, 1, 1, 1 + T)
    cls = F.scaled_dot_product_attention(q_g[:, :, :1], k_g, v_g, attn_mask=real)
    expected = attn.out(torch.cat([cls, tokens], 2).transpose(1, 2).reshape(2, -1, 8))
    with torch.no_grad():
        out = attn(h, mask)
    keep = F.pad(mask, (1, 0), value=True)  # real rows: CLS and real tokens
    torch.testing.assert_close(out[keep], expected[keep].detach(), atol=1e-12, rtol=0)


def test_window_covering_the_video_equals_full_attention():
    torch.manual_seed(0)
    banded = create_head("longformer", in_dim=6, num_outputs=3, **{**SMALL, "window": 64}).eval()
    dense = create_head("longformer", in_dim=6, num_outputs=3, **{**SMALL, "window": None}).eval()
    dense.load_state_dict(banded.state_dict())
    x = torch.randn(2, 20, 6)
    mask = lengths_mask([20, 9], 20)
    with torch.no_grad():
        torch.testing.assert_close(banded(x, mask), dense(x, mask), atol=1e-5, rtol=0)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_is_linear_in_the_number_of_tokens():
    num_tokens, window = 2048, 32
    q, k, v = (torch.randn(1, 1, num_tokens, 4) for _ in range(3))
    g_k, g_v = torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 4)
    mask = torch.ones(1, num_tokens, dtype=torch.bool)
    with LargestTensor() as probe:
        sliding_window_attention(q, k, v, key_mask=mask, window=window, global_k=g_k, global_v=g_v)
    # Blocks of w/2 queries see 1 + 3w/2 keys: ~T · 1.5 w scores, never T² (4.2 M here).
    assert probe.largest <= num_tokens * (1 + 3 * window // 2)
    assert probe.largest < num_tokens**2 / 20


def test_padding_and_batching_leave_outputs_unchanged():
    torch.manual_seed(0)
    model = create_head("longformer", in_dim=6, num_outputs=3, **SMALL).eval()
    x = torch.randn(2, 11, 6)
    mask = lengths_mask([11, 5], 11)
    padded_x = torch.cat([x, torch.full((2, 9, 6), float("nan"))], dim=1)  # T = 20: 5 blocks
    padded_mask = torch.cat([mask, torch.zeros(2, 9, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        out = model(x, mask)
        torch.testing.assert_close(model(padded_x, padded_mask), out, atol=1e-6, rtol=0)
        torch.testing.assert_close(model(x[1:, :5], mask[1:, :5]), out[1:], atol=1e-6, rtol=0)


def test_cls_attention_weights():
    torch.manual_seed(0)
    model = create_head("longformer", in_dim=6, num_outputs=3, **SMALL).eval()
    x = torch.randn(2, 9, 6)
    mask = lengths_mask([9, 4], 9)
    weights = model.cls_attention(x, mask)
    assert weights.shape == (2, 9)
    assert (weights[1, 4:] == 0).all() and (weights[mask] > 0).all()
    assert (weights.sum(dim=1) < 1).all()  # the rest is the CLS's weight on itself
    torch.testing.assert_close(model.cls_attention(x[1:, :4], mask[1:, :4]), weights[1:, :4])


def test_defaults_follow_vtn_and_bad_arguments_are_named():
    model = create_head("longformer", in_dim=768, num_outputs=400)
    assert len(model.layers) == 3
    attn = model.layers[0].attn
    assert attn.window == 18 and attn.num_heads == 12  # official ATTENTION_WINDOW, 12 heads
    assert create_head("longformer", in_dim=768, num_outputs=2, variant="paper").window == 32
    head = [type(m).__name__ for m in model.mlp_head]
    assert head == ["LayerNorm", "Linear", "GELU", "Dropout", "Linear"]
    with pytest.raises(ValueError, match="window must be even"):
        create_head("longformer", in_dim=8, num_outputs=2, **{**SMALL, "window": 5})
    small = create_head("longformer", in_dim=6, num_outputs=2, **{**SMALL, "max_positions": 8})
    with pytest.raises(ValueError, match="max_positions=9"):
        small(torch.randn(1, 7, 6), torch.ones(1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="position_embedding must be one of"):
        create_head("longformer", in_dim=8, num_outputs=2, position_embedding="rope")
    framed = create_head("longformer", in_dim=8, num_outputs=2, num_heads=2)
    with pytest.raises(ValueError, match="needs the token times"):
        framed(torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool))

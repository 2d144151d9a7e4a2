"""LST: ViS4mer's Long Sequence Transformer baseline — its decoder with self-attention for S4.

Source: M. M. Islam, G. Bertasius, "Long Movie Clip Classification with State-Space Video
Models", ECCV 2022 (arXiv:2204.01692), §4; Tab. 3 compares its speed and memory with
ViS4mer's. The multi-scale decoder is shared with ``vis4mer``
(:class:`heads.models.multiscale.MultiScaleDecoder`); only the sequence mixer differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from heads.models import register_head
from heads.models.multiscale import MultiScaleDecoder


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention over real tokens (Vaswani et al., NeurIPS 2017, §3.2).

    ``torch.nn.functional.scaled_dot_product_attention`` does the attention, so PyTorch picks
    its best kernel for the device (flash / memory-efficient attention where they apply). Keys at
    padded positions are masked out through ``attn_mask``; when a batch has no padding no mask is
    passed, which keeps the fused kernels available. Outputs at padded queries are finite but
    meaningless: the decoder pools over real tokens only.

    Args:
        dim: H, model width.
        num_heads: Attention heads; must divide ``dim``.
        dropout: Dropout on the attention weights (training only).

    Forward:
        ``forward(x, mask)``: x (B, L, H), mask (B, L) bool (True = real) → (B, L, H).

    Raises:
        ValueError: ``num_heads`` does not divide ``dim``.
    """

    def __init__(self, *, dim: int, num_heads: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"lst: block width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, head_dim)  # (B, L, 3, nh, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (3, B, nh, L, hd) -> 3 × (B, nh, L, hd)
        attn_mask = None
        if not bool(mask.all()):
            # A video without any real token would have every key masked (softmax of all -inf =
            # NaN); let it attend everywhere instead: its output is ignored downstream anyway.
            keys = mask | ~mask.any(dim=1, keepdim=True)  # (B, L)
            attn_mask = keys[:, None, None, :]  # (B, 1, 1, L): broadcast over heads and queries
        y = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, L, hd)
        y = y.transpose(1, 2).reshape(batch, length, dim)  # (B, L, nh, hd) -> (B, L, H)
        return self.out(y)


@register_head("lst")
class LongSequenceTransformer(MultiScaleDecoder):
    """ViS4mer's Long Sequence Transformer (Islam & Bertasius, ECCV 2022, §4): the multi-scale
    decoder of ``vis4mer`` with each S4 layer replaced by multi-head self-attention.

    Same defaults as ``vis4mer`` where they apply (d_model 1024, 3 blocks, average pooling,
    dropout 0.2). The paper does not give the number of heads or the positional encoding of its
    baseline: 8 heads (divides every block width, 1024/512/256) and a sinusoidal encoding of the
    token index before the first block (attention is otherwise blind to token order) are this
    implementation's choices, both overridable.

    Args:
        in_dim: D of the tokens.
        num_outputs: K classes, or 1 for regression.
        d_model: Width of the first block (input projected to it when D differs); None = D.
        num_blocks: Decoder blocks.
        num_heads: Attention heads in every block.
        attn_dropout: Dropout on the attention weights.
        positional_encoding: Add the sinusoidal encoding of the token index.
        pool: ``avg`` or ``max``; None = the variant's (official ``avg``, paper ``max``).
        dropout: Dropout on the attention's output (before the residual sum).
        frame_tokens: Tokens per frame before the decoder, ViS4mer §5.2's ablation (196, 49,
            25, or 1 = CLS only: 11,760, 2,940, 1,500, 60 tokens per 60 s); None = as stored.
        variant: ``official`` or ``paper`` decoder, as ``vis4mer``'s.

    Forward:
        ``forward(x, mask)``: x (B, T, N, D) or (B, T, D), mask (B, T) bool; returns (B, K).
    """

    def __init__(
        self,
        *,
        in_dim: int | Sequence[int],
        num_outputs: int,
        d_model: int | None = 1024,
        num_blocks: int = 3,
        num_heads: int = 8,
        attn_dropout: float = 0.0,
        positional_encoding: bool = True,
        pool: str | None = None,
        dropout: float = 0.2,
        variant: str = "official",
        frame_tokens: int | None = None,
    ):
        def attention(dim: int) -> nn.Module:
            return MaskedSelfAttention(dim=dim, num_heads=num_heads, dropout=attn_dropout)

        super().__init__(
            name="lst", in_dim=in_dim, num_outputs=num_outputs, mixer_factory=attention,
            d_model=d_model, num_blocks=num_blocks, pool=pool, dropout=dropout,
            positional_encoding=positional_encoding, variant=variant,
            frame_tokens=frame_tokens,
        )

"""The ``temporal_transformer`` head: STAM's temporal transformer over per-frame embeddings.

Source: G. Sharir, A. Noy, L. Zelnik-Manor, "An Image is Worth 16x16 Words, What is a Video
Worth?", 2021 (arXiv:2103.13915), §3: a ViT embeds each sampled frame (its CLS output); a
temporal transformer (6 layers, 8 heads, width 768, learned positional embedding, a prepended
CLS token) aggregates the frames, and a linear layer classifies the temporal CLS output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from heads.models import register_head, stream_dims


@register_head("temporal_transformer")
class TemporalTransformer(nn.Module):
    """STAM temporal aggregation (Sharir et al. 2021 §3).

    Frame embeddings (B, T, D) → Linear to d_model → prepend a learned CLS token → add a learned
    positional embedding (CLS at position 0) → ``num_layers`` ViT-style pre-norm encoder layers
    (GELU MLP of width ``ff_dim``) → final LayerNorm → CLS output → Linear to K.

    Not stated in the paper and chosen here: feed-forward width 4·d_model (ViT's ratio),
    dropout 0.1, ``max_positions`` 1024 (STAM samples 16–64 frames; longer inputs need a
    larger table).

    Args:
        in_dim: Frame feature dim D.
        num_outputs: K classes, or 1 for regression.
        d_model: Transformer width.
        num_heads: Attention heads per layer.
        num_layers: Encoder layers.
        ff_dim: Feed-forward width; defaults to 4 · d_model.
        max_positions: Largest T + 1 the positional embedding covers.
        dropout: Dropout in the encoder layers and on the embedded sequence.

    Forward:
        ``forward(x, mask)`` with x (B, T, D) and mask (B, T) bool, True at real frames; returns
        (B, K). Raises ValueError when T + 1 exceeds ``max_positions``.
    """

    streams: tuple[str, ...] = ("tokens",)

    def __init__(
        self,
        *,
        in_dim: int | Sequence[int],
        num_outputs: int,
        d_model: int = 768,
        num_heads: int = 8,
        num_layers: int = 6,
        ff_dim: int | None = None,
        max_positions: int = 1024,
        dropout: float = 0.1,
    ):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(
                f"temporal_transformer: d_model {d_model} is not divisible by num_heads "
                f"{num_heads}"
            )
        (dim,) = stream_dims("temporal_transformer", in_dim, 1)
        self.max_positions = max_positions
        self.proj = nn.Linear(dim, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embedding = nn.Parameter(torch.zeros(max_positions, d_model))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ff_dim or 4 * d_model, dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )
        # Nested tensors do not apply to pre-norm layers; the final norm closes the pre-norm stack.
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.classifier = nn.Linear(d_model, num_outputs)

    def _embed(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded sequence (B, 1+T, d_model) and the key padding mask (B, 1+T), True = ignore."""
        batch, num_tokens = mask.shape
        if num_tokens + 1 > self.max_positions:
            raise ValueError(
                f"temporal_transformer: {num_tokens} frames + CLS exceed max_positions "
                f"{self.max_positions}; pass --head-kwarg max_positions={num_tokens + 1} or more"
            )
        # Zero padding first: NaN/inf padding would survive as 0 * NaN in the attention values.
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        seq = torch.cat([self.cls_token.expand(batch, -1, -1), self.proj(x)], dim=1)  # (B, 1+T, d)
        seq = self.dropout(seq + self.pos_embedding[: num_tokens + 1])
        cls_real = torch.ones(batch, 1, dtype=torch.bool, device=mask.device)
        return seq, ~torch.cat([cls_real, mask], dim=1)  # (B, 1+T, d), (B, 1+T)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seq, ignore = self._embed(x, mask)
        out = self.encoder(seq, src_key_padding_mask=ignore)  # (B, 1+T, d_model)
        return self.classifier(out[:, 0])  # (B, K)

    @torch.no_grad()
    def cls_attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention of the CLS on each frame in the last layer, averaged over heads.

        Runs the layers before the last one, then the last layer's (pre-normed) self-attention
        with ``need_weights``; call on a model in eval mode (no dropout).

        Args:
            x: (B, T, D) frames.
            mask: (B, T) bool, True at real frames.

        Returns:
            (B, T) weights, 0 at padding; with the CLS's weight on itself they sum to 1.
        """
        seq, ignore = self._embed(x, mask)
        for layer in self.encoder.layers[:-1]:
            seq = layer(seq, src_key_padding_mask=ignore)  # (B, 1+T, d_model)
        last = self.encoder.layers[-1]
        h = last.norm1(seq)
        _, weights = last.self_attn(
            h[:, :1], h, h, key_padding_mask=ignore, need_weights=True, average_attn_weights=True
        )  # (B, 1, 1+T)
        return weights[:, 0, 1:]  # (B, T)

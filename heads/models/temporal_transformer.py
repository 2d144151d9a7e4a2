"""The ``temporal_transformer`` head: STAM's temporal transformer over per-frame embeddings.

Source: G. Sharir, A. Noy, L. Zelnik-Manor, "An Image is Worth 16x16 Words, What is a Video
Worth?", 2021 (arXiv:2103.13915), ``../shared/papers/stam.txt``, §3: a ViT-B/16 embeds each
sampled frame (its CLS output, 768-d, Eq. 10); a temporal transformer (6 layers, 8 heads,
learned positional embedding, a prepended CLS token) aggregates the frames with "the same
equations of the attention block eqn. (7) through (9)" (pre-LN attention and a 2-layer GELU
MLP), the top CLS goes through a LayerNorm (Eq. 11) and a linear layer classifies it.

The official repository (Alibaba-MIIL/STAM, ``src/models/temporal_aggregation.py``,
``TAggregate``; read, not copied) builds the layers differently:
``torch.nn.TransformerEncoderLayer(d_model=768, nhead=8)`` with PyTorch's defaults — post-LN,
ReLU, feed-forward 2048, dropout 0.1 — × 6 and a final LayerNorm. Both are offered
(``variant``): ``official`` (default: the code behind the reported numbers) and ``paper``
(pre-LN, GELU; the MLP width is not stated: 4 × d_model, ViT-B's 3072). Both use the official
initialisation (the paper states none): CLS, position embedding (``clip_length + 1`` rows in
the code) and every Linear weight truncated-normal with std 0.02, Linear biases 0; no dropout
on the embedded sequence; frame embeddings enter without a projection. Training (§4
"Training"): 30 epochs, learning-rate warm-up and a cosine schedule (heads/configs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from heads.models import register_head, stream_dims


@register_head("temporal_transformer")
class TemporalTransformer(nn.Module):
    """STAM temporal aggregation (Sharir et al. 2021 §3; layer settings of the official code).

    Frame embeddings (B, T, D) → Linear to d_model (only when D differs: STAM feeds ViT-B's
    768-d CLS outputs directly) → prepend a learned CLS token → add a learned positional
    embedding (CLS at position 0) → ``num_layers`` encoder layers (post-norm, ReLU MLP of width
    ``ff_dim``, as ``torch.nn.TransformerEncoderLayer``'s defaults that STAM uses) → final
    LayerNorm → CLS output → Linear to K.

    Chosen here, not in STAM: ``max_positions`` 1024 (STAM's table has ``clip_length + 1`` rows
    for its 16–64 frames; longer inputs need a larger table).

    Args:
        in_dim: Frame feature dim D.
        num_outputs: K classes, or 1 for regression.
        d_model: Transformer width.
        num_heads: Attention heads per layer.
        num_layers: Encoder layers.
        ff_dim: Feed-forward width; None = the variant's (official 2048, paper 4 · d_model).
        max_positions: Largest T + 1 the positional embedding covers.
        dropout: Dropout in the encoder layers (attention weights and both residual branches).
        embed_dropout: Dropout on the embedded sequence (0 in STAM).
        activation: ``relu`` or ``gelu``; None = the variant's (official relu, paper gelu).
        norm_first: Pre-norm layers; None = the variant's (official post-norm, paper pre-norm).
        variant: ``official`` (STAM's code) or ``paper`` (Eq. 7–9), see the module docstring.

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
        embed_dropout: float = 0.0,
        activation: str | None = None,
        norm_first: bool | None = None,
        variant: str = "official",
    ):
        super().__init__()
        variants = {"official": (2048, "relu", False), "paper": (4 * d_model, "gelu", True)}
        if variant not in variants:
            raise ValueError(f"temporal_transformer: unknown variant {variant!r}; valid: "
                             f"{', '.join(variants)}")
        defaults = variants[variant]
        ff_dim = defaults[0] if ff_dim is None else ff_dim
        activation = defaults[1] if activation is None else activation
        norm_first = defaults[2] if norm_first is None else norm_first
        if d_model % num_heads:
            raise ValueError(
                f"temporal_transformer: d_model {d_model} is not divisible by num_heads "
                f"{num_heads}"
            )
        if activation not in ("relu", "gelu"):
            raise ValueError(
                f"temporal_transformer: activation must be relu or gelu, got {activation!r}"
            )
        (dim,) = stream_dims("temporal_transformer", in_dim, 1)
        self.max_positions = max_positions
        self.proj = nn.Linear(dim, d_model) if dim != d_model else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embedding = nn.Parameter(torch.zeros(max_positions, d_model))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        self.dropout = nn.Dropout(embed_dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ff_dim, dropout, activation=activation, batch_first=True,
            norm_first=norm_first,
        )
        # A final LayerNorm as in STAM; nested tensors off so that padded batches and single
        # videos take the same code path (and so compute the same numbers).
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.classifier = nn.Linear(d_model, num_outputs)
        for module in self.modules():  # the official _init_weights (attention out_proj included)
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

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

        Runs the layers before the last one, then the last layer's self-attention with
        ``need_weights``; call on a model in eval mode (no dropout).

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
        h = last.norm1(seq) if last.norm_first else seq  # the last attention's input
        _, weights = last.self_attn(
            h[:, :1], h, h, key_padding_mask=ignore, need_weights=True, average_attn_weights=True
        )  # (B, 1, 1+T)
        return weights[:, 0, 1:]  # (B, T)

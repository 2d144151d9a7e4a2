"""The ``longformer`` head: VTN's temporal encoder, Longformer attention over frame embeddings.

Sources:
- VTN: D. Neimark, O. Bar, M. Zohar, D. Asselmann, "Video Transformer Network", ICCVW 2021
  (arXiv:2102.00719), §3: per-frame embeddings + learned position embeddings + a CLS token →
  a 3-layer Longformer → the CLS output → MLP head (LN → Linear → GELU → Dropout → Linear).
- Longformer: I. Beltagy, M. E. Peters, A. Cohan, "Longformer: The Long-Document Transformer",
  2020 (arXiv:2004.05150), §3.1: sliding-window attention of window w (w/2 keys on each side),
  plus *global* attention on chosen tokens (here the CLS): the global token attends to every
  token and every token attends to it, with separate projections Q_g, K_g, V_g for the global
  token's own attention.

What was checked where: VTN's full text could not be consulted here (the ``pages`` corpus
returned abstracts only). The temporal encoder's settings were read from copies of the official
implementation's ``VTNLongformerModel`` (from bomri/SlowFast, found in the ``code`` corpus; read,
not copied): a HuggingFace ``LongformerModel`` with width 768 (ViT-B), 12 heads, 3 layers,
intermediate size 3072, attention and hidden dropout 0.1, ``max_position_embeddings`` 2·60·60,
``sliding_chunks`` attention with global attention on the CLS; then the MLP head
``LayerNorm → Linear(768, MLP_DIM) → GELU → Dropout → Linear``. Not seen, so chosen here: the
MLP width (``mlp_dim`` = d_model) and the window (32 total as this project's design asks; a
config of a derived project carries VTN's ``ATTENTION_WINDOW: [18, 18, 18]``, i.e. w = 18). The
official code puts the CLS at its own position slot and adds a token-type embedding to it; a
learned CLS at position 0 is the same function class.

Window convention: ``window`` is Longformer's w, the *total* window: a token attends to the
w/2 tokens on each side, itself, and the CLS (w + 2 keys). The default ``window=32`` therefore
means 16 frames on each side.

Memory is O(T·w): queries are cut into blocks of w/2 and each block attends to its own and its
two neighbouring key blocks (3·w/2 keys) through ``scaled_dot_product_attention`` over batched
blocks; no T × T matrix is ever formed. ``flex_attention`` was considered: on CPU in eager mode
it "materializes the full scores matrix" (PyTorch's own warning, checked with torch 2.15), and
``torch.compile(flex_attention)`` needs a C++ toolchain, ~30 s of compilation and a recompile
per new sequence length, so the blocked SDPA path is used everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from heads.models import register_head, stream_dims


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor,
    window: int,
    global_k: torch.Tensor | None = None,
    global_v: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Banded (sliding-window) attention plus attention to a few global keys, in O(T·w) memory.

    Query i attends to the keys j with ``|i - j| <= window // 2`` and ``key_mask[j]``, and to
    every global key (Longformer §3.1, "sliding window" + "global attention", as seen from the
    non-global tokens). A query whose allowed key set would be empty (a padded query with no
    global key) attends to itself only, so no row of the softmax is empty.

    Args:
        q: (B, H, T, d) queries.
        k: (B, H, T, d) keys.
        v: (B, H, T, d) values.
        key_mask: (B, T) bool, True at real tokens.
        window: Longformer's total window w (even, >= 2): w/2 keys on each side.
        global_k: (B, H, G, d) keys every query attends to (e.g. the CLS), or None.
        global_v: (B, H, G, d) their values.
        dropout_p: Attention dropout probability.

    Returns:
        (B, H, T, d) attention outputs.

    Raises:
        ValueError: ``window`` is odd or below 2.
    """
    if window < 2 or window % 2:
        raise ValueError(f"sliding_window_attention: window must be even and >= 2, got {window}")
    batch, heads, num_tokens, head_dim = q.shape
    half = window // 2  # block size c: queries of block j see key blocks j-1, j, j+1
    num_blocks = max(1, math.ceil(num_tokens / half))
    pad_end = num_blocks * half - num_tokens
    q_blocks = F.pad(q, (0, 0, 0, pad_end))  # (B, H, T_pad, d), T_pad = nb · c
    q_blocks = q_blocks.view(batch, heads, num_blocks, half, head_dim)  # (B, H, nb, c, d)
    # One block of zero keys before and after, so that every query block has three key blocks.
    k_padded = F.pad(k, (0, 0, half, pad_end + half))  # (B, H, T_pad + 2c, d)
    v_padded = F.pad(v, (0, 0, half, pad_end + half))  # (B, H, T_pad + 2c, d)
    k_blocks = k_padded.unfold(2, 3 * half, half).transpose(-1, -2)  # (B, H, nb, 3c, d)
    v_blocks = v_padded.unfold(2, 3 * half, half).transpose(-1, -2)  # (B, H, nb, 3c, d)
    real = F.pad(key_mask, (half, pad_end + half), value=False)  # (B, T_pad + 2c)
    real_blocks = real.unfold(1, 3 * half, half)  # (B, nb, 3c)

    # Query a of a block sits at key offset a + c of its 3c keys; the band is |a + c - b| <= c.
    offset = torch.arange(3 * half, device=q.device) - torch.arange(half, device=q.device)[:, None]
    band = (offset >= 0) & (offset <= 2 * half)  # (c, 3c)
    diagonal = offset == half  # (c, 3c): the query's own position
    allowed = band & (real_blocks.unsqueeze(2) | diagonal)  # (B, nb, c, 3c)
    if global_k is not None:
        num_global = global_k.shape[2]
        k_blocks = torch.cat(
            [global_k.unsqueeze(2).expand(-1, -1, num_blocks, -1, -1), k_blocks], dim=3
        )  # (B, H, nb, G + 3c, d)
        v_blocks = torch.cat(
            [global_v.unsqueeze(2).expand(-1, -1, num_blocks, -1, -1), v_blocks], dim=3
        )  # (B, H, nb, G + 3c, d)
        sees_global = allowed.new_ones(batch, num_blocks, half, num_global)  # (B, nb, c, G)
        allowed = torch.cat([sees_global, allowed], dim=-1)  # (B, nb, c, G + 3c)
        # A real query's own key is real, so `diagonal` only ever adds a padded query's own key.
    out = F.scaled_dot_product_attention(
        q_blocks, k_blocks, v_blocks, attn_mask=allowed.unsqueeze(1), dropout_p=dropout_p
    )  # (B, H, nb, c, d)
    out = out.reshape(batch, heads, num_blocks * half, head_dim)  # (B, H, T_pad, d)
    return out[:, :, :num_tokens]


class LongformerSelfAttention(nn.Module):
    """Longformer self-attention with one global token at index 0 (Beltagy et al. 2020 §3.1).

    Tokens 1..T use sliding-window attention (projections Q_s, K_s, V_s) plus attention to the
    global token's K_s/V_s; the global token attends to all tokens with its own projections
    Q_g, K_g, V_g. ``window=None`` gives full (dense) attention among all tokens instead, the
    same-size dense reference of ``bench/heads_longformer_vs_dense.py``.

    Args:
        d_model: Width.
        num_heads: Attention heads.
        window: Total sliding window w (w/2 per side), or None for dense attention.
        dropout: Attention-probability dropout.
    """

    def __init__(self, *, d_model: int, num_heads: int, window: int | None, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)  # Q_s, K_s, V_s
        # Q_g is only needed for the global token itself, K_g and V_g for every token.
        self.q_global = nn.Linear(d_model, d_model)
        self.kv_global = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """(B, L, parts · d_model) → ``parts`` tensors (B, H, L, d_head)."""
        batch, length, width = x.shape
        head_dim = width // (parts * self.num_heads)
        x = x.view(batch, length, parts, self.num_heads, head_dim)  # (B, L, parts, H, d_head)
        return x.permute(2, 0, 3, 1, 4).unbind(0)  # parts × (B, H, L, d_head)

    def _global_scores(self, h: torch.Tensor, mask: torch.Tensor):
        """The global token's query (B, H, 1, d), K_g and V_g (B, H, 1+T, d), mask (B,1,1,1+T)."""
        (q_g,) = self._heads(self.q_global(h[:, :1]), 1)  # (B, H, 1, d_head)
        k_g, v_g = self._heads(self.kv_global(h), 2)  # (B, H, 1+T, d_head) each
        real = F.pad(mask, (1, 0), value=True)  # (B, 1+T): the global token itself is real
        return q_g, k_g, v_g, real[:, None, None, :]

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1+T, d_model) with the global token at 0, mask (B, T) → (B, 1+T, d_model)."""
        batch, length, width = h.shape
        dropout_p = self.dropout if self.training else 0.0
        q, k, v = self._heads(self.qkv(h), 3)  # (B, H, 1+T, d_head) each
        if self.window is None:
            real = F.pad(mask, (1, 0), value=True)[:, None, None, :]  # (B, 1, 1, 1+T)
            # No mask lets SDPA pick its fused kernel; it changes nothing when all keys are real.
            attn_mask = None if bool(mask.all()) else real
            tokens = F.scaled_dot_product_attention(
                q[:, :, 1:], k, v, attn_mask=attn_mask, dropout_p=dropout_p
            )  # (B, H, T, d_head)
        else:
            tokens = sliding_window_attention(
                q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], key_mask=mask, window=self.window,
                global_k=k[:, :, :1], global_v=v[:, :, :1], dropout_p=dropout_p,
            )  # (B, H, T, d_head)
        q_g, k_g, v_g, real = self._global_scores(h, mask)
        cls = F.scaled_dot_product_attention(
            q_g, k_g, v_g, attn_mask=real, dropout_p=dropout_p
        )  # (B, H, 1, d_head)
        out = torch.cat([cls, tokens], dim=2)  # (B, H, 1+T, d_head)
        return self.out(out.transpose(1, 2).reshape(batch, length, width))  # (B, 1+T, d_model)

    def global_attention_weights(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax weights of the global token over [itself, tokens], (B, H, 1+T); 0 at padding."""
        q_g, k_g, _, real = self._global_scores(h, mask)
        scores = q_g @ k_g.transpose(-1, -2) / math.sqrt(q_g.shape[-1])  # (B, H, 1, 1+T)
        scores = scores.masked_fill(~real, float("-inf"))
        return scores.softmax(dim=-1)[:, :, 0]  # (B, H, 1+T)


class LongformerLayer(nn.Module):
    """Post-norm encoder layer as in Longformer/RoBERTa: x = LN(x + Attn(x)); x = LN(x + FFN(x)).

    Args:
        d_model: Width.
        num_heads: Attention heads.
        ff_dim: Feed-forward width.
        window: Total sliding window, or None for dense attention.
        dropout: Dropout on attention probabilities and on both residual branches.
    """

    def __init__(self, *, d_model: int, num_heads: int, ff_dim: int, window: int | None,
                 dropout: float):
        super().__init__()
        self.attn = LongformerSelfAttention(
            d_model=d_model, num_heads=num_heads, window=window, dropout=dropout
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), nn.GELU(), nn.Linear(ff_dim, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(h + self.dropout(self.attn(h, mask)))
        return self.norm2(h + self.dropout(self.ff(h)))


@register_head("longformer")
class LongformerHead(nn.Module):
    """VTN's temporal encoder and classifier (Neimark et al. 2021 §3, Fig. 1).

    Frame embeddings (B, T, D) → Linear to d_model → prepend a learned CLS token → add learned
    position embeddings (CLS at position 0) → LayerNorm → Dropout (Longformer's embedding block)
    → ``num_layers`` Longformer layers with sliding-window attention (window w = ``window``
    total, w/2 per side) and global attention on the CLS → the CLS output → MLP head
    LN → Linear → GELU → Dropout → Linear.

    Defaults follow VTN and its ViT-B backbone: width 768, 12 heads, 3 layers, feed-forward
    3072, window 32, dropout 0.1. ``max_positions`` bounds T + 1 (VTN's Longformer allows
    2·60·60 = 7200 positions: an hour at 2 frames/s).

    Args:
        in_dim: Frame feature dim D.
        num_outputs: K classes, or 1 for regression.
        d_model: Width.
        num_heads: Attention heads.
        num_layers: Longformer layers.
        ff_dim: Feed-forward width.
        window: Total sliding window w (even; w/2 frames each side), or None for full attention.
        max_positions: Largest T + 1 the learned position embeddings cover.
        mlp_dim: Hidden width of the MLP head; defaults to d_model.
        dropout: Dropout in embeddings, attention, residual branches and the MLP head.

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
        num_heads: int = 12,
        num_layers: int = 3,
        ff_dim: int = 3072,
        window: int | None = 32,
        max_positions: int = 7200,
        mlp_dim: int | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(
                f"longformer: d_model {d_model} is not divisible by num_heads {num_heads}"
            )
        if window is not None and (window < 2 or window % 2):
            raise ValueError(f"longformer: window must be even and >= 2 (or None), got {window}")
        (dim,) = stream_dims("longformer", in_dim, 1)
        self.max_positions = max_positions
        self.proj = nn.Linear(dim, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embedding = nn.Parameter(torch.zeros(max_positions, d_model))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embedding, std=0.02)
        self.embed_norm = nn.LayerNorm(d_model)
        self.embed_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            LongformerLayer(
                d_model=d_model, num_heads=num_heads, ff_dim=ff_dim, window=window,
                dropout=dropout,
            )
            for _ in range(num_layers)
        )
        mlp_dim = mlp_dim or d_model
        self.mlp_head = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, num_outputs),
        )

    def embed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) frames → (B, 1+T, d_model) embedded sequence with the CLS at index 0."""
        batch, num_tokens = mask.shape
        if num_tokens + 1 > self.max_positions:
            raise ValueError(
                f"longformer: {num_tokens} frames + CLS exceed max_positions "
                f"{self.max_positions}; pass --head-kwarg max_positions={num_tokens + 1} or more"
            )
        # Zero padding first: NaN/inf padding would survive as 0 * NaN in the attention values.
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        seq = torch.cat([self.cls_token.expand(batch, -1, -1), self.proj(x)], dim=1)  # (B, 1+T, d)
        seq = seq + self.pos_embedding[: num_tokens + 1]
        return self.embed_dropout(self.embed_norm(seq))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(x, mask)  # (B, 1+T, d_model)
        for layer in self.layers:
            h = layer(h, mask)
        return self.mlp_head(h[:, 0])  # (B, K)

    @torch.no_grad()
    def cls_attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention of the CLS on each frame in the last layer, averaged over heads.

        Args:
            x: (B, T, D) frames.
            mask: (B, T) bool, True at real frames.

        Returns:
            (B, T) weights, 0 at padding; with the CLS's weight on itself they sum to 1.
        """
        h = self.embed(x, mask)
        for layer in self.layers[:-1]:
            h = layer(h, mask)
        weights = self.layers[-1].attn.global_attention_weights(h, mask)  # (B, H, 1+T)
        return weights.mean(dim=1)[:, 1:]  # (B, T)

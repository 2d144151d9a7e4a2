"""The ``stat_cached`` head: STAT's shrinking temporal attention over stored patch tokens.

Source: B. Li, P. Xiong, C. Han, T. Guo, "Shrinking Temporal Attention in Transformers for
Video Action Recognition", AAAI 2022 (``../shared/papers/stat.txt``). The paper's model, trained
from pixels, is :class:`heads.models.stat.STAT` (``heads finetune --preset stat``); this head
borrows its attention for ``heads train`` on cached features. How it differs from STAT:

- input: frozen backbone patch tokens (B, T, N, D), e.g. ViT-B/16's CLS + 14 × 14 patches of
  each sampled frame, projected to ``d_model``, instead of STAT's 3D-convolution token
  embedding trained from pixels (n_t = T / 2, H / 8 × W / 8 tokens);
- one width, no stages: ``num_layers`` blocks at ``d_model`` (STAT: 15 blocks in three stages,
  192 → 384 → 768, pooled 2× per side between stages);
- current attention: the query frame's tokens unpooled (STAT pools K and V with a convolution
  P_CA in every block);
- short-term keys: the t_o − 1 neighbour frames' patch grids 2-D average-pooled to
  ⌈h / p⌉ × ⌈w / p⌉ (adaptive pooling, p = ``short_term_pool``; STAT pools its already pooled
  K_CA), class tokens outside the grid; frames beyond the video's ends are masked out
  (STAT's default ``border="mask"`` too);
- long-term keys: the class tokens of the other real frames (the query frame's own is among its
  current keys), as STAT's;
- temporal aggregation: a pre-norm transformer (``num_aggregation_layers``) over the frames'
  class tokens with a video token, then LayerNorm → Linear, as STAT's.

Conventions shared with STAT: ``t_o`` is the short-term window *including* the query frame
(odd: 3, 5, 7; frames i − ⌊t_o/2⌋ … i + ⌊t_o/2⌋ without i), and short-term pooling is 2-D on
the patch grid. The grid of N tokens per frame: ``grid=(h, w)`` with any N − h·w leading
tokens (a backbone's CLS) kept out of the pooling; by default a square grid (N = s²), a
leading CLS + a square grid (N = 1 + s²), else one row of N tokens. Pooled (B, T, D) input is
read as one patch per frame (N = 1), so the head also runs on pooled feature sets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from heads.models import register_head, stream_dims
from heads.models.stat_blocks import neighbour_frames


def patch_grid(num_tokens: int, grid: Sequence[int] | None = None) -> tuple[int, int, int]:
    """``(num_prefix, h, w)``: N tokens per frame as prefix tokens + an h × w grid.

    Without ``grid``: a square grid (N = s²), a leading CLS + a square grid (N = 1 + s²), else
    one row of N tokens (1 × N).

    Raises:
        ValueError: ``grid`` does not fit N.
    """
    if grid is not None:
        h, w = (int(v) for v in grid)
        if h * w > num_tokens or h < 1 or w < 1:
            raise ValueError(f"stat_cached: grid {h}×{w} does not fit {num_tokens} tokens per "
                             "frame; pass --head-kwarg grid=[h, w]")
        return num_tokens - h * w, h, w
    for prefix in (0, 1):
        side = math.isqrt(max(num_tokens - prefix, 0))
        if side > 0 and side * side == num_tokens - prefix:
            return prefix, side, side
    return 0, 1, num_tokens  # no grid to read: one row, pooled along the token axis


class CachedShrinkingAttention(nn.Module):
    """One attention over current tokens, 2-D-pooled short-term neighbours and long-term CLS.

    Args:
        d_model: Width.
        num_heads: Attention heads.
        t_o: Short-term window in frames including the query frame (odd; 1 = none).
        short_term_pool: p, the pooling factor per side of the neighbours' patch grids.
        dropout: Attention-probability dropout.

    Forward:
        ``forward(x, frame_mask, layout)`` with x (B, T, 1 + N, d) (index 0 of each frame is
        its class token, then N backbone tokens), frame_mask (B, T) bool and layout
        ``(num_prefix, h, w)`` of the N tokens (:func:`patch_grid`); returns (B, T, 1 + N, d).
    """

    def __init__(self, *, d_model: int, num_heads: int, t_o: int, short_term_pool: int,
                 dropout: float):
        super().__init__()
        self.num_heads, self.t_o, self.pool, self.dropout = num_heads, t_o, short_term_pool, dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _short_term(self, kv: torch.Tensor, frame_mask: torch.Tensor, layout):
        """Pooled neighbour tokens (B, T, (t_o − 1)·M, C) and their mask (B, T, (t_o − 1)·M).

        Args:
            kv: (B, T, N, C) backbone tokens of every frame (class tokens excluded).
            frame_mask: (B, T) bool, True at real frames.
            layout: ``(num_prefix, h, w)`` of the N tokens.
        """
        prefix, h, w = layout
        batch, frames, _, width = kv.shape
        grid = kv[:, :, prefix:].reshape(batch * frames, h, w, width)  # (BT, h, w, C)
        size = (-(-h // self.pool), -(-w // self.pool))  # ⌈h / p⌉ × ⌈w / p⌉
        pooled = F.adaptive_avg_pool2d(grid.permute(0, 3, 1, 2), size)  # (BT, C, h', w')
        pooled = pooled.flatten(2).transpose(1, 2)  # (BT, M, C)
        pooled = pooled.reshape(batch, frames, -1, width)  # (B, T, M, C)
        index, inside = neighbour_frames(frames, self.t_o, device=kv.device)  # (T, t_o − 1)
        neighbours = pooled[:, index].flatten(2, 3)  # (B, T, (t_o − 1)·M, C)
        real = inside & frame_mask[:, index]  # (B, T, t_o − 1)
        return neighbours, real.repeat_interleave(pooled.shape[2], dim=2)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor, layout) -> torch.Tensor:
        batch, frames, per_frame, width = x.shape
        heads, head_dim = self.num_heads, width // self.num_heads
        # Pooling and copying commute with the (affine) projection: take them from projected keys.
        kv = self.kv(x)  # (B, T, 1+N, 2d): keys and values side by side
        keys = [kv]  # current: the frame's own class token and tokens
        real = [frame_mask.new_ones(batch, frames, per_frame)]  # padded frames too: finite rows
        if self.t_o > 1:
            neighbours, neighbours_real = self._short_term(kv[:, :, 1:], frame_mask, layout)
            keys.append(neighbours)
            real.append(neighbours_real)
        cls = kv[:, :, 0]  # (B, T, 2d); long-term: every other real frame's class token
        keys.append(cls.unsqueeze(1).expand(batch, frames, frames, 2 * width))  # (B, T, T, 2d)
        other = ~torch.eye(frames, dtype=torch.bool, device=x.device)  # (T, T)
        real.append(other.unsqueeze(0) & frame_mask.unsqueeze(1))  # (B, T, T)
        kv = torch.cat(keys, dim=2)  # (B, T, L, 2d)
        real = torch.cat(real, dim=2)  # (B, T, L)

        q = self.q(x).view(batch, frames, per_frame, heads, head_dim)  # (B, T, 1+N, H, d_head)
        q = q.transpose(2, 3)  # (B, T, H, 1+N, d_head)
        kv = kv.view(batch, frames, -1, 2, heads, head_dim)  # (B, T, L, 2, H, d_head)
        k, v = kv.permute(3, 0, 1, 4, 2, 5)  # 2 × (B, T, H, L, d_head)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=real[:, :, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, T, H, 1+N, d_head)
        out = out.transpose(2, 3).reshape(batch, frames, per_frame, width)  # (B, T, 1+N, d)
        return self.out(out)


class CachedSTABlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x)) (STAT's Eq. 9–10)."""

    def __init__(self, *, d_model: int, num_heads: int, ff_dim: int, t_o: int,
                 short_term_pool: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = CachedShrinkingAttention(d_model=d_model, num_heads=num_heads, t_o=t_o,
                                             short_term_pool=short_term_pool, dropout=dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor, layout) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), frame_mask, layout))
        return x + self.dropout(self.mlp(self.norm2(x)))


@register_head("stat_cached")
class STATCached(nn.Module):
    """STAT's shrinking temporal attention as a head over cached patch tokens (see the module
    docstring for how it differs from the paper's :class:`heads.models.stat.STAT`).

    Patch tokens (B, T, N, D) → Linear to d_model → a learned class token per frame → learned
    spatial (token index) and temporal (frame index) embeddings → ``num_layers`` blocks → the
    frames' class tokens → video token + ``num_aggregation_layers`` transformer layers →
    LayerNorm → Linear.

    Args:
        in_dim: Patch feature dim D.
        num_outputs: K classes, or 1 for regression.
        d_model: Width.
        num_heads: Attention heads.
        num_layers: Shrinking-attention blocks.
        ff_dim: MLP width; defaults to 4 · d_model.
        t_o: Short-term window including the query frame (odd: 3, 5, 7; 1 = no short-term).
        short_term_pool: p: neighbour grids are average-pooled to ⌈h / p⌉ × ⌈w / p⌉.
        grid: (h, w) of the patch grid; None = inferred (:func:`patch_grid`).
        num_aggregation_layers: Layers of the temporal aggregation transformer.
        max_frames: Largest T the temporal embedding covers.
        max_patches: Largest N the spatial embedding covers.
        dropout: Dropout in attention, MLPs and on the embedded tokens.

    Forward:
        ``forward(x, mask)`` with x (B, T, N, D) patch tokens (or (B, T, D), read as N = 1) and
        mask (B, T) bool, True at real frames; returns (B, K). Raises ValueError when T or N
        exceed ``max_frames`` / ``max_patches`` or N does not fit ``grid``.
    """

    streams: tuple[str, ...] = ("patches",)
    token_kinds: tuple[str, ...] = ("patch", "pooled")

    def __init__(
        self,
        *,
        in_dim: int | Sequence[int],
        num_outputs: int,
        d_model: int = 768,
        num_heads: int = 12,
        num_layers: int = 4,
        ff_dim: int | None = None,
        t_o: int = 3,
        short_term_pool: int = 2,
        grid: Sequence[int] | None = None,
        num_aggregation_layers: int = 1,
        max_frames: int = 1024,
        max_patches: int = 1024,
        dropout: float = 0.1,
    ):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"stat_cached: d_model {d_model} is not divisible by num_heads "
                             f"{num_heads}")
        if t_o < 1 or t_o % 2 == 0:
            raise ValueError(f"stat_cached: t_o is the short-term window including the query "
                             f"frame and must be odd (3, 5, 7; 1 = none), got {t_o}")
        if short_term_pool < 1:
            raise ValueError(f"stat_cached: short_term_pool must be >= 1, got {short_term_pool}")
        (dim,) = stream_dims("stat_cached", in_dim, 1)
        self.max_frames, self.max_patches = max_frames, max_patches
        self.grid = None if grid is None else tuple(grid)
        ff_dim = ff_dim or 4 * d_model
        self.proj = nn.Linear(dim, d_model)
        self.frame_cls = nn.Parameter(torch.zeros(1, 1, 1, d_model))
        self.spatial_embedding = nn.Parameter(torch.zeros(max_patches + 1, d_model))
        self.temporal_embedding = nn.Parameter(torch.zeros(max_frames, d_model))
        self.video_cls = nn.Parameter(torch.zeros(1, 1, d_model))
        for param in (self.frame_cls, self.spatial_embedding, self.temporal_embedding,
                      self.video_cls):
            nn.init.trunc_normal_(param, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            CachedSTABlock(d_model=d_model, num_heads=num_heads, ff_dim=ff_dim, t_o=t_o,
                           short_term_pool=short_term_pool, dropout=dropout)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ff_dim, dropout, activation="gelu", batch_first=True,
            norm_first=True,
        )
        self.aggregation = nn.TransformerEncoder(
            layer, num_aggregation_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.classifier = nn.Linear(d_model, num_outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(2)  # pooled (B, T, D) → one patch per frame (B, T, 1, D)
        batch, frames, num_patches, _ = x.shape
        if frames > self.max_frames or num_patches > self.max_patches:
            raise ValueError(
                f"stat_cached: input has {frames} frames of {num_patches} patches, the "
                f"embeddings cover {self.max_frames} frames of {self.max_patches} patches; "
                "raise --head-kwarg max_frames / max_patches"
            )
        layout = patch_grid(num_patches, self.grid)
        # Zero padded frames first: NaN/inf padding would survive as 0 * NaN in attention values.
        real = mask[:, :, None, None]  # (B, T, 1, 1)
        x = torch.where(real, x, torch.zeros((), dtype=x.dtype, device=x.device))
        tokens = self.proj(x)  # (B, T, N, d)
        cls = self.frame_cls.expand(batch, frames, 1, -1)  # (B, T, 1, d)
        tokens = torch.cat([cls, tokens], dim=2)  # (B, T, 1+N, d)
        tokens = tokens + self.spatial_embedding[: num_patches + 1]  # broadcast over (B, T)
        tokens = tokens + self.temporal_embedding[:frames, None, :]  # (T, 1, d) over (B, ·, 1+N)
        tokens = self.dropout(tokens)
        for block in self.blocks:
            tokens = block(tokens, mask, layout)
        frame_cls = self.norm(tokens[:, :, 0])  # (B, T, d)
        seq = torch.cat([self.video_cls.expand(batch, -1, -1), frame_cls], dim=1)  # (B, 1+T, d)
        cls_real = torch.ones(batch, 1, dtype=torch.bool, device=mask.device)
        ignore = ~torch.cat([cls_real, mask], dim=1)  # (B, 1+T), True = ignore
        out = self.aggregation(seq, src_key_padding_mask=ignore)  # (B, 1+T, d)
        return self.classifier(out[:, 0])  # (B, K)

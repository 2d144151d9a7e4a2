"""The ``stat`` head: shrinking temporal attention over per-frame patch tokens.

Source: B. Li, P. Xiong, C. Han, T. Guo, "Shrinking Temporal Attention in Transformers for
Video Action Recognition", AAAI 2022 (doi:10.1609/aaai.v36i2.20013). The idea: the farther a
frame is in time from the query, the coarser the query looks at it: *current* attention over
the patches of the query's own frame (spatial semantics), *short-term* attention over the
neighbouring frames (motion), *long-term* attention over every frame's class token (global
aggregation), composed in one block; a temporal aggregation of the frames' class tokens
classifies the video.

The paper's full text is now in ``../shared/papers/stat.txt``; this head was written before it
was available and is *not* the paper's model (issue 18 rebuilds STAT from that text: its stages,
its 2-D short-term pooling and t_o = 3, 5, 7). Until then, what follows describes this head as
it is, from the abstract's sentences: everything beyond them is this repository's assumption.

Note on the short-term tokens: the abstract says queries meet short-term tokens "in a
fine-grained manner" and "shrink to a coarse attention in neighborhood for long-term tokens";
read literally, the short-term neighbours would be full patches (``short_term_pool=1``) and the
coarse tokens the long-term class tokens. This project's design asks for a *pooled* window t_o,
so the default pools (``short_term_pool=4``); pass ``short_term_pool=1`` for the literal reading.

What the head does where the text is silent:
- STAT is a backbone trained from pixels; here it is a *head* over frozen backbone patch tokens
  (B, T, N, D), e.g. ViT's 196 patches + CLS, projected to ``d_model``.
- Short-term tokens: the abstract says queries meet short-term tokens "in a fine-grained manner"
  and "shrink to a coarse attention in neighborhood" further away; the design of this repository
  asks for the t_o neighbouring frames' patches *pooled*. The head average-pools each
  neighbouring frame's patches in contiguous groups of ``short_term_pool`` along the patch axis
  (adaptive pooling, so any N works; for row-major ViT patches a group is a horizontal run).
  ``short_term_pool=1`` keeps them fine-grained. ``short_term_window`` (t_o) counts neighbours
  in total, t_o/2 before and t_o/2 after; frames beyond the video's ends are masked out.
- Long-term tokens: each frame owns a learned class token; every token of frame t attends to the
  class tokens of all *other* real frames (its own is already among the current keys).
- All three key sets share one softmax (one attention, one set of projections), pre-norm block
  with a GELU MLP like ViT.
- Temporal aggregation: a pre-norm transformer (``num_aggregation_layers``) over the frames'
  class tokens with a video CLS token; its output → LayerNorm → Linear.
- Sizes (width 768, 12 heads: ViT-B; 4 blocks; t_o = 2; pool 4; 1 aggregation layer) are our
  choices, not verified against the paper's tables; the paper reports no parameter count we
  could read.

Pooled (B, T, D) input is accepted as one patch per frame (N = 1), so the head also runs on
pooled feature sets (and in the registry-wide interface tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from heads.models import register_head, stream_dims


class ShrinkingTemporalAttention(nn.Module):
    """One attention over current patches, pooled short-term neighbours and long-term CLS tokens.

    Args:
        d_model: Width.
        num_heads: Attention heads.
        short_term_window: t_o, neighbouring frames in total (even): t_o/2 on each side.
        short_term_pool: Neighbour patches averaged per short-term token.
        dropout: Attention-probability dropout.

    Forward:
        ``forward(x, frame_mask)`` with x (B, T, 1+N, d) — index 0 of each frame is its class
        token — and frame_mask (B, T) bool; returns (B, T, 1+N, d).
    """

    def __init__(self, *, d_model: int, num_heads: int, short_term_window: int,
                 short_term_pool: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.radius = short_term_window // 2
        self.pool = short_term_pool
        self.dropout = dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _short_term(self, patches: torch.Tensor, frame_mask: torch.Tensor):
        """Pooled neighbour tokens (B, T, t_o·M, C) and their mask (B, T, t_o·M).

        Args:
            patches: (B, T, N, C) per-frame patch features (keys and values side by side).
            frame_mask: (B, T) bool, True at real frames.
        """
        batch, frames, num_patches, width = patches.shape
        num_pooled = -(-num_patches // self.pool)  # M = ceil(N / pool)
        flat = patches.reshape(batch * frames, num_patches, width).transpose(1, 2)  # (BT, C, N)
        pooled = F.adaptive_avg_pool1d(flat, num_pooled)  # (BT, C, M)
        pooled = pooled.transpose(1, 2).reshape(batch, frames, num_pooled, width)  # (B, T, M, C)
        r = self.radius
        # Zero frames beyond both ends, then one window of 2r + 1 frames per frame t.
        padded = F.pad(pooled, (0, 0, 0, 0, r, r))  # (B, T + 2r, M, C)
        windows = padded.unfold(1, 2 * r + 1, 1)  # (B, T, M, C, 2r+1)
        windows = windows.permute(0, 1, 4, 2, 3)  # (B, T, 2r+1, M, C)
        keep = [i for i in range(2 * r + 1) if i != r]  # the frame itself is the current key set
        neighbours = windows[:, :, keep]  # (B, T, 2r, M, C)
        neighbours = neighbours.reshape(batch, frames, 2 * r * num_pooled, width)  # (B, T, 2rM, C)
        real = F.pad(frame_mask, (r, r), value=False)  # (B, T + 2r)
        real = real.unfold(1, 2 * r + 1, 1)[:, :, keep]  # (B, T, 2r)
        real = real.repeat_interleave(num_pooled, dim=2)  # (B, T, 2r · M)
        return neighbours, real

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        batch, frames, per_frame, width = x.shape
        heads, head_dim = self.num_heads, width // self.num_heads
        # Project every token once: pooling and copying commute with the (affine) projection,
        # so pooled neighbours and repeated class tokens are taken from the projected keys.
        kv = self.kv(x)  # (B, T, 1+N, 2d): keys and values side by side
        keys = [kv]  # current: the frame's own class token and patches
        real = [frame_mask.new_ones(batch, frames, per_frame)]  # (B, T, 1+N); padded frames too,
        # so that their (discarded) rows stay finite.
        if self.radius > 0:
            neighbours, neighbours_real = self._short_term(kv[:, :, 1:], frame_mask)
            keys.append(neighbours)
            real.append(neighbours_real)
        # Long-term: every other real frame's class token.
        cls = kv[:, :, 0]  # (B, T, 2d)
        keys.append(cls.unsqueeze(1).expand(batch, frames, frames, 2 * width))  # (B, T, T, 2d)
        other = ~torch.eye(frames, dtype=torch.bool, device=x.device)  # (T, T)
        real.append(other.unsqueeze(0) & frame_mask.unsqueeze(1))  # (B, T, T)
        kv = torch.cat(keys, dim=2)  # (B, T, L, 2d), L = 1+N + t_o·M + T
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


class STATBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x)) (the ViT layout STAT builds on)."""

    def __init__(self, *, d_model: int, num_heads: int, ff_dim: int, short_term_window: int,
                 short_term_pool: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = ShrinkingTemporalAttention(
            d_model=d_model, num_heads=num_heads, short_term_window=short_term_window,
            short_term_pool=short_term_pool, dropout=dropout,
        )
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), frame_mask))
        return x + self.dropout(self.mlp(self.norm2(x)))


@register_head("stat")
class STAT(nn.Module):
    """Shrinking Temporal Attention Transformer as a head over patch tokens (Li et al. 2022).

    Patch tokens (B, T, N, D) → Linear to d_model → prepend a learned class token to every frame
    → add a learned spatial (patch index) and temporal (frame index) embedding → ``num_layers``
    shrinking-temporal-attention blocks → the frames' class tokens (B, T, d) → temporal
    aggregation: video CLS + ``num_aggregation_layers`` transformer layers → LayerNorm → Linear.
    See the module docstring for what was chosen where the paper was not available.

    Args:
        in_dim: Patch feature dim D.
        num_outputs: K classes, or 1 for regression.
        d_model: Width.
        num_heads: Attention heads.
        num_layers: Shrinking-attention blocks.
        ff_dim: MLP width; defaults to 4 · d_model.
        short_term_window: t_o, neighbouring frames in total (even; t_o/2 per side; 0 = none).
        short_term_pool: Neighbour patches averaged per short-term token (1 = fine-grained).
        num_aggregation_layers: Layers of the temporal aggregation transformer.
        max_frames: Largest T the temporal embedding covers.
        max_patches: Largest N the spatial embedding covers.
        dropout: Dropout in attention, MLPs and on the embedded tokens.

    Forward:
        ``forward(x, mask)`` with x (B, T, N, D) patch tokens (or (B, T, D), read as N = 1) and
        mask (B, T) bool, True at real frames; returns (B, K). Raises ValueError when T or N
        exceed ``max_frames`` / ``max_patches``.
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
        short_term_window: int = 2,
        short_term_pool: int = 4,
        num_aggregation_layers: int = 1,
        max_frames: int = 1024,
        max_patches: int = 1024,
        dropout: float = 0.1,
    ):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"stat: d_model {d_model} is not divisible by num_heads {num_heads}")
        if short_term_window < 0 or short_term_window % 2:
            raise ValueError(
                f"stat: short_term_window (t_o) must be even and >= 0, got {short_term_window}"
            )
        if short_term_pool < 1:
            raise ValueError(f"stat: short_term_pool must be >= 1, got {short_term_pool}")
        (dim,) = stream_dims("stat", in_dim, 1)
        self.max_frames, self.max_patches = max_frames, max_patches
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
            STATBlock(
                d_model=d_model, num_heads=num_heads, ff_dim=ff_dim,
                short_term_window=short_term_window, short_term_pool=short_term_pool,
                dropout=dropout,
            )
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
                f"stat: input has {frames} frames of {num_patches} patches, the embeddings cover "
                f"{self.max_frames} frames of {self.max_patches} patches; raise "
                "--head-kwarg max_frames / max_patches"
            )
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
            tokens = block(tokens, mask)
        frame_cls = self.norm(tokens[:, :, 0])  # (B, T, d)
        seq = torch.cat([self.video_cls.expand(batch, -1, -1), frame_cls], dim=1)  # (B, 1+T, d)
        cls_real = torch.ones(batch, 1, dtype=torch.bool, device=mask.device)
        ignore = ~torch.cat([cls_real, mask], dim=1)  # (B, 1+T), True = ignore
        out = self.aggregation(seq, src_key_padding_mask=ignore)  # (B, 1+T, d)
        return self.classifier(out[:, 0])  # (B, K)

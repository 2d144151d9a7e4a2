"""STAT's shrinking temporal attention and its block (Li et al., AAAI 2022, Shrinking Temporal
Attention Module, Eq. 1–10), used by :class:`heads.models.stat.STAT` (see its module docstring
for the paper's sections and the choices made where the text is silent); the short-term
neighbours of a frame (:func:`neighbour_frames`) are shared with ``stat_cached``.
"""

from __future__ import annotations

import torch
from torch import nn

BORDERS = ("mask", "shift")


def _grid_pool(x: torch.Tensor, hw: tuple[int, int], pool: nn.Module):
    """Apply a 2-D ``pool`` to each frame's patch grid.

    Args:
        x: (B, n_t, h·w, C) patch tokens, row-major on the (h, w) grid.
        hw: (h, w).
        pool: Maps (B·n_t, C, h, w) to (B·n_t, C, h', w').

    Returns:
        ``(pooled, (h', w'))`` with pooled (B, n_t, h'·w', C).
    """
    batch, frames, _, width = x.shape
    grid = x.reshape(batch * frames, *hw, width).permute(0, 3, 1, 2)  # (B·n_t, C, h, w)
    out = pool(grid)  # (B·n_t, C, h', w')
    out_hw = (out.shape[2], out.shape[3])
    out = out.flatten(2).transpose(1, 2)  # (B·n_t, h'·w', C)
    return out.reshape(batch, frames, -1, width), out_hw  # (B, n_t, h'·w', C)


def _depthwise(dim: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(dim, dim, kernel, stride=stride, padding=kernel // 2, groups=dim,
                     bias=False)


def neighbour_frames(num_frames: int, t_o: int, *, border: str = "mask",
                     device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The short-term neighbours of every frame (STAT, Short-Term Attention).

    Frame i's window holds t_o frames including i: i − ⌊t_o/2⌋ … i + ⌊t_o/2⌋; its t_o − 1
    neighbours are the window without i.

    Args:
        num_frames: n_t.
        t_o: Window size, odd, including the query frame.
        border: ``"mask"``: neighbours beyond the clip are invalid; ``"shift"``: the window
            slides inside the clip (where n_t >= t_o), so every frame has t_o − 1 neighbours.
        device: Device of the returned tensors.

    Returns:
        ``(index, valid)``: (n_t, t_o − 1) int64 frame indices (clamped into range) and
        (n_t, t_o − 1) bool, False where the neighbour lies outside the clip.
    """
    radius = t_o // 2
    frames = torch.arange(num_frames)
    start = frames - radius  # (n_t,) first frame of each window
    if border == "shift" and num_frames >= t_o:
        start = start.clamp(0, num_frames - t_o)
    slot = torch.arange(t_o - 1)  # (t_o − 1,)
    # The window without frame i: slots at or after i's own position step over it.
    own = (frames - start)[:, None]  # (n_t, 1)
    window = start[:, None] + slot + (slot >= own).long()  # (n_t, t_o − 1)
    valid = (window >= 0) & (window < num_frames)
    window = window.clamp(0, max(num_frames - 1, 0))
    return window.to(device), valid.to(device)


class ShrinkingTemporalAttention(nn.Module):
    """STA (Eq. 1–8): current, short-term and long-term keys under one softmax.

    Args:
        dim: n_c of the block's input.
        num_heads: Attention heads (n_c divisible by them).
        t_o: Short-term window in frames, odd, including the query frame (3, 5, 7, ...).
        q_stride: Stride of Q's pooling; 1 = Q is not pooled (Eq. 2: only where the stage
            downsamples).
        kv_stride: Stride of P_CA on K and V (θ_K = θ_V), applied in every block.
        pool_kernel: Kernel of the P_CA convolutions.
        short_term_kernel: Kernel of P_SA (2-D average pooling of K_CA / V_CA).
        short_term_stride: Stride of P_SA.
        border: Neighbours at the clip borders (:func:`neighbour_frames`).
        short_term: Use the short-term keys (Tab. 1's SA).
        long_term: Use the long-term keys (Tab. 1's LA).

    Forward:
        ``forward(x, hw, frame_mask)`` with x (B, n_t, 1 + h·w, C) (index 0 of each frame is
        its class token), hw = (h, w) and frame_mask (B, n_t) bool, True at real frames;
        returns ``(out, (h', w'))``, out (B, n_t, 1 + h'·w', C) with (h', w') Q's grid.
    """

    def __init__(self, *, dim: int, num_heads: int, t_o: int, q_stride: int, kv_stride: int,
                 pool_kernel: int = 3, short_term_kernel: int = 3, short_term_stride: int = 2,
                 border: str = "mask", short_term: bool = True, long_term: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"stat: width {dim} is not divisible by num_heads {num_heads}")
        if t_o < 1 or t_o % 2 == 0:
            raise ValueError(f"stat: t_o is the short-term window including the query frame "
                             f"and must be odd (3, 5, 7, ...), got {t_o}")
        if border not in BORDERS:
            raise ValueError(f"stat: border must be one of {', '.join(BORDERS)}, got {border!r}")
        self.num_heads, self.t_o, self.border = num_heads, t_o, border
        self.short_term, self.long_term = short_term and t_o > 1, long_term
        self.qkv = nn.Linear(dim, 3 * dim)  # F_q, F_k, F_v (Eq. 1)
        self.pool_q = _depthwise(dim, pool_kernel, q_stride) if q_stride > 1 else None
        self.pool_k = _depthwise(dim, pool_kernel, kv_stride)
        self.pool_v = _depthwise(dim, pool_kernel, kv_stride)
        self.pool_short = nn.AvgPool2d(short_term_kernel, short_term_stride,
                                       padding=short_term_kernel // 2, count_include_pad=False)
        self.proj = nn.Linear(dim, dim)

    def _keys(self, k: torch.Tensor, v: torch.Tensor, hw, frame_mask: torch.Tensor):
        """K̂, V̂ (B, n_t, L_k, C) of Eq. 7 and their validity (B, n_t, L_k)."""
        batch, frames, _, width = k.shape
        k_ca, ca_hw = _grid_pool(k[:, :, 1:], hw, self.pool_k)  # (B, n_t, n̄_h n̄_w, C)
        v_ca, _ = _grid_pool(v[:, :, 1:], hw, self.pool_v)
        keys, values = [k_ca], [v_ca]
        valid = [frame_mask.new_ones(batch, frames, k_ca.shape[2])]
        if self.short_term:
            k_sa, _ = _grid_pool(k_ca, ca_hw, self.pool_short)  # (B, n_t, ň_h ň_w, C), Eq. 3
            v_sa, _ = _grid_pool(v_ca, ca_hw, self.pool_short)
            index, inside = neighbour_frames(frames, self.t_o, border=self.border,
                                             device=k.device)  # (n_t, t_o − 1)
            keys.append(k_sa[:, index].flatten(2, 3))  # (B, n_t, (t_o − 1) ň_h ň_w, C)
            values.append(v_sa[:, index].flatten(2, 3))  # (B, n_t, (t_o − 1) ň_h ň_w, C)
            real = inside & frame_mask[:, index]  # (B, n_t, t_o − 1)
            valid.append(real.repeat_interleave(k_sa.shape[2], dim=2))
        if self.long_term:  # Eq. 4–6: every frame's class token, repeated for each frame
            keys.append(k[:, :, 0].unsqueeze(1).expand(batch, frames, frames, width))
            values.append(v[:, :, 0].unsqueeze(1).expand(batch, frames, frames, width))
            valid.append(frame_mask.unsqueeze(1).expand(batch, frames, frames))  # (B, n_t, n_t)
        return torch.cat(keys, 2), torch.cat(values, 2), torch.cat(valid, 2)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], frame_mask: torch.Tensor):
        batch, frames, _, width = x.shape
        heads, head_dim = self.num_heads, width // self.num_heads
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 × (B, n_t, 1 + h·w, C)
        q_grid, q_hw = q[:, :, 1:], hw
        if self.pool_q is not None:
            q_grid, q_hw = _grid_pool(q_grid, hw, self.pool_q)
        q = torch.cat([q[:, :, :1], q_grid], dim=2)  # Q̂ (B, n_t, 1 + h'·w', C), Eq. 7
        k, v, valid = self._keys(k, v, hw, frame_mask)  # (B, n_t, L_k, C) × 2, (B, n_t, L_k)
        q = q.view(batch, frames, -1, heads, head_dim).transpose(2, 3)  # (B, n_t, H, L_q, d)
        k = k.reshape(batch, frames, -1, heads, head_dim).transpose(2, 3)  # (B, n_t, H, L_k, d)
        v = v.reshape(batch, frames, -1, heads, head_dim).transpose(2, 3)  # (B, n_t, H, L_k, d)
        scores = torch.matmul(q, k.transpose(-2, -1)) * head_dim ** -0.5  # (B, n_t, H, L_q, L_k)
        scores = scores.masked_fill(~valid[:, :, None, None, :], float("-inf"))
        out = torch.matmul(scores.softmax(dim=-1), v)  # (B, n_t, H, L_q, d), Eq. 8
        out = out.transpose(2, 3).reshape(batch, frames, -1, width)  # (B, n_t, L_q, C)
        return self.proj(out), q_hw


class DropPath(nn.Module):
    """Stochastic depth per sample (DeiT's recipe): zero a residual branch with probability p."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class STABlock(nn.Module):
    """One STA block (Eq. 9–10): pre-LN STA and MLP with residuals.

    Args:
        dim: Input width n_c.
        dim_out: Output width (2 n_c in the first block of a new stage: the MLP expands it).
        num_heads: Attention heads.
        q_stride: Q (and residual) pooling stride; 2 where the stage downsamples.
        mlp_ratio: MLP hidden width / n_c (4).
        drop_path: Stochastic depth of both residual branches.
        **attention: The remaining :class:`ShrinkingTemporalAttention` arguments.

    Forward:
        ``forward(x, hw, frame_mask)`` → ``(x_out, hw_out)``: (B, n_t, 1 + h·w, dim) →
        (B, n_t, 1 + h'·w', dim_out).
    """

    def __init__(self, *, dim: int, dim_out: int, num_heads: int, q_stride: int,
                 mlp_ratio: float = 4.0, drop_path: float = 0.0, **attention):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShrinkingTemporalAttention(dim=dim, num_heads=num_heads, q_stride=q_stride,
                                               **attention)
        kernel = attention.get("pool_kernel", 3)
        self.pool_skip = (nn.MaxPool2d(kernel, q_stride, padding=kernel // 2) if q_stride > 1
                          else None)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim_out))
        self.proj_skip = nn.Linear(dim, dim_out) if dim_out != dim else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], frame_mask: torch.Tensor):
        out, out_hw = self.attn(self.norm1(x), hw, frame_mask)
        if self.pool_skip is not None:
            grid, _ = _grid_pool(x[:, :, 1:], hw, self.pool_skip)  # (B, n_t, h'·w', C)
            x = torch.cat([x[:, :, :1], grid], dim=2)  # (B, n_t, 1 + h'·w', C)
        x = x + self.drop_path(out)  # Eq. 9
        normed = self.norm2(x)
        skip = x if self.proj_skip is None else self.proj_skip(normed)
        return skip + self.drop_path(self.mlp(normed)), out_hw  # Eq. 10

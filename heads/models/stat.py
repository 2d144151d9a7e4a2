"""STAT, the Shrinking Temporal Attention Transformer, as the paper describes it: a video
transformer trained from pixels (random initialisation).

Source: B. Li, P. Xiong, C. Han, T. Guo, "Shrinking Temporal Attention in Transformers for
Video Action Recognition", AAAI 2022 (full text: ``../shared/papers/stat.txt``). Section names
below are the paper's ("Token Embedding Block", "Shrinking Temporal Attention Module", ...).

The model (Fig. 2):

1. **Token embedding block** (Token Embedding Block; Tab. 5, 3-layer row): three vanilla
   3D convolutions, kernel 3×3×3, giving n_t = T/2, n_h = H/8, n_w = W/8, n_c = 192; one extra
   spatial class token per frame; spatial and temporal positional embeddings added.
2. **15 STA blocks in 3 stages**, 192 → 384 → 768 channels (Shrinking Temporal Attention
   Block, Eq. 9–10): pre-LN, ``X_a = STA(LN X) + X``, ``X_out = MLP(LN X_a) + X_a``, MLP hidden
   4 n_c. Shrinking temporal attention (Eq. 1–8), one softmax over three key sets:
   *current* attention over the query frame's own patches, K and V pooled by a convolution
   P_CA in every block (θ_K = θ_V), Q pooled only where a stage downsamples; *short-term*
   attention over the t_o − 1 neighbours i − ⌊t_o/2⌋ … i + ⌊t_o/2⌋ (without i) of the query
   frame i, their K_CA / V_CA 2-D average-pooled on each frame's grid (P_SA); *long-term*
   attention over the spatial class tokens of all frames (Eq. 4–6).
3. **Temporal aggregation block** (Temporal Aggregation Block; Tab. 4): a learnable video token
   and the frames' class tokens through l_ta = 1 self-attention layer, then the classifier.

What the text leaves open (its appendix with the per-stage table is not in the text), chosen
here and exposed as keyword arguments (see ``docs/fidelity.md``):

- ``depths=(2, 11, 2)``, ``num_heads=(2, 4, 8)``: the stem replaces MViT-B's patch embedding
  and first stage (Tab. 5's 1-layer row is MViT's [3, 7, 7] / [2, 4, 4] cube), so the three
  STA stages take MViT-B's remaining stages (Fan et al. 2021: 2 + 11 + 2 = 15 blocks, head
  width 96).
- ``stem_strides``: Tab. 5's 3-layer row, read with the row label centred on its three lines
  (the only reading under which the 1-, 3- and 5-layer rows have 1, 3 and 5 lines):
  [2, 2, 2], [1, 2, 2], [1, 2, 2]. ``stem_channels=(96, 192)``: the widths of the first two
  convolutions (the text gives only the last, 192): with them one 16 × 224² clip costs
  60.7 GFLOPs against Tab. 1's 59.1 (with (64, 128): 51.4); BatchNorm + ReLU after each
  convolution but the last.
- P_CA: a depthwise 2-D convolution per frame, kernel ``pool_kernel=3``, padding 1; K/V stride
  ``kv_pool_strides=(4, 2, 1)`` per stage, so K_CA is 7 × 7 at 224 px in every stage (MViT's
  adaptive K/V stride); Q stride 2 in the first block of stages 2 and 3.
- Stage change (the paper: "expand the dimension to 2× through MLP, and use pooling operator
  to down sample the resolution of feature map to 4×"): the first block of stages 2 and 3
  does both: its attention (at the previous width) pools Q 2× per side, its MLP maps n_c →
  4 n_c → 2 n_c, and its residuals are max-pooled (kernel 3, stride 2) and linearly projected
  (MViT's layout).
- P_SA: 2-D average pooling, ``short_term_kernel=3``, ``short_term_stride=2``, padding 1
  (7 × 7 → 4 × 4 tokens per neighbour frame); the class token is outside the grid and is not
  pooled (neighbours' class tokens reach the query through the long-term keys).
- Clip borders (``border``): ``"mask"`` (default) leaves neighbours beyond the clip out of the
  softmax (frame 0 at t_o = 3 sees only frame 1); ``"shift"`` slides the window inside the
  clip so every frame keeps t_o − 1 neighbours (frame 0 sees frames 1 and 2).
- Attention scale: MHSA's 1 / √(n_c / heads) per head (Eq. 8 writes √n_c, for one head).
- Temporal aggregation: pre-LN self-attention + MLP (4×) over [video token; class tokens]
  (width 768, 8 heads); ``num_aggregation_layers=0`` averages the class tokens (Tab. 4's 0).
  The classifier is LayerNorm → Linear.
- ``drop_path=0.1`` (DeiT's stochastic depth, the recipe the paper follows).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from heads.models.stat_blocks import (  # noqa: F401 (neighbour_frames: re-exported)
    ShrinkingTemporalAttention,
    STABlock,
    neighbour_frames,
)


class TokenEmbedding(nn.Module):
    """STAT's token embedding block (Token Embedding Block; Tab. 5).

    Three 3D convolutions (kernel 3, padding 1, strides ``strides``), BatchNorm + ReLU between
    them; then one spatial class token per frame and learned spatial + temporal positional
    embeddings.

    Args:
        dim: n_c, width of the last convolution (192).
        channels: Widths of the convolutions before the last.
        strides: (t, h, w) stride of each convolution (len(channels) + 1 of them).
        num_frames: T the temporal embedding is sized for (n_t = T / 2 with the default strides).
        frame_size_px: H = W the spatial embedding is sized for.

    Forward:
        ``forward(video)`` with video (B, 3, T', H, W) float (normalised RGB), T' <= T;
        returns (B, n_t', 1 + n_h·n_w, n_c) tokens, class token first in every frame.

    Raises:
        ValueError: a frame size other than ``frame_size_px`` or more frames than ``num_frames``.
    """

    def __init__(self, *, dim: int = 192, channels: Sequence[int] = (96, 192),
                 strides: Sequence[Sequence[int]] = ((2, 2, 2), (1, 2, 2), (1, 2, 2)),
                 num_frames: int = 16, frame_size_px: int = 224):
        super().__init__()
        widths = [3, *channels, dim]
        if len(strides) != len(widths) - 1:
            raise ValueError(f"stat: {len(widths) - 1} stem convolutions but {len(strides)} "
                             "strides; give one (t, h, w) stride per convolution")
        layers: list[nn.Module] = []
        size = [num_frames, frame_size_px, frame_size_px]
        for i, stride in enumerate(strides):
            layers.append(nn.Conv3d(widths[i], widths[i + 1], 3, stride=tuple(stride), padding=1))
            if i < len(strides) - 1:
                layers += [nn.BatchNorm3d(widths[i + 1]), nn.ReLU(inplace=True)]
            size = [(n + 2 - 3) // s + 1 for n, s in zip(size, stride)]
        self.convs = nn.Sequential(*layers)
        self.dim, self.frame_size_px = dim, frame_size_px
        self.time_stride = 1
        for stride in strides:
            self.time_stride *= stride[0]
        self.num_tokens_t, self.grid = size[0], (size[1], size[2])
        self.cls = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.pos_spatial = nn.Parameter(torch.zeros(1, 1, 1 + size[1] * size[2], dim))
        self.pos_temporal = nn.Parameter(torch.zeros(1, size[0], 1, dim))
        for param in (self.cls, self.pos_spatial, self.pos_temporal):
            nn.init.trunc_normal_(param, std=0.02)
            param._optim = {"weight_decay": 0.0}  # DeiT: no decay on tokens and positions

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.shape[-1] != self.frame_size_px or video.shape[-2] != self.frame_size_px:
            raise ValueError(f"stat: built for {self.frame_size_px} px frames (its spatial "
                             f"embedding), got {tuple(video.shape[-2:])}; pass frame_size_px")
        x = self.convs(video)  # (B, n_c, n_t, n_h, n_w)
        if x.shape[2] > self.num_tokens_t:
            raise ValueError(f"stat: built for {self.num_tokens_t} temporal tokens (num_frames), "
                             f"got {x.shape[2]} from {video.shape[2]} frames; pass num_frames")
        batch, width, frames = x.shape[:3]
        x = x.flatten(3).permute(0, 2, 3, 1)  # (B, n_t, n_h·n_w, n_c)
        cls = self.cls.expand(batch, frames, 1, width)  # (B, n_t, 1, n_c)
        x = torch.cat([cls, x], dim=2)  # (B, n_t, 1 + n_h·n_w, n_c)
        return x + self.pos_spatial + self.pos_temporal[:, :frames]


class AggregationLayer(nn.Module):
    """Pre-LN self-attention + MLP over [video token; class tokens] (Temporal Aggregation
    Block). Forward: (B, L, C), valid (B, L) bool → (B, L, C)."""

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head_dim = width // self.num_heads
        qkv = self.qkv(self.norm1(x))  # (B, L, 3C)
        qkv = qkv.view(batch, length, 3, self.num_heads, head_dim)  # (B, L, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 × (B, H, L, d)
        scores = torch.matmul(q, k.transpose(-2, -1)) * head_dim ** -0.5  # (B, H, L, L)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        out = torch.matmul(scores.softmax(dim=-1), v)  # (B, H, L, d)
        x = x + self.proj(out.transpose(1, 2).reshape(batch, length, width))  # (B, L, C)
        return x + self.mlp(self.norm2(x))


class STATTrunk(nn.Module):
    """STAT after the token embedding: the STA stages, temporal aggregation and classifier.

    Args:
        grid: (n_h, n_w) of the embedded tokens.
        num_classes: K.
        dims: Channels per stage (192, 384, 768).
        depths: Blocks per stage (15 in all).
        num_heads: Heads per stage.
        kv_pool_strides: P_CA's K/V stride per stage, relative to the stage's grid.
        num_aggregation_layers: l_ta; 0 averages the class tokens.
        drop_path: Largest stochastic depth, reached linearly at the last block.
        **attention: ``t_o``, ``pool_kernel``, ``short_term_kernel``, ``short_term_stride``,
            ``border``, ``short_term``, ``long_term`` (see :class:`ShrinkingTemporalAttention`).

    Forward:
        ``forward(tokens, mask)`` with tokens (B, n_t, 1 + n_h·n_w, dims[0]) and mask (B, n_t)
        bool, True at real temporal tokens; returns logits (B, K).

    Raises:
        ValueError: stage settings of different lengths, or tokens of another grid.
    """

    streams: tuple[str, ...] = ("tokens",)

    def __init__(self, *, grid: tuple[int, int], num_classes: int,
                 dims: Sequence[int] = (192, 384, 768), depths: Sequence[int] = (2, 11, 2),
                 num_heads: Sequence[int] = (2, 4, 8), kv_pool_strides: Sequence[int] = (4, 2, 1),
                 mlp_ratio: float = 4.0, num_aggregation_layers: int = 1,
                 drop_path: float = 0.1, **attention):
        super().__init__()
        if not len(dims) == len(depths) == len(num_heads) == len(kv_pool_strides):
            raise ValueError(f"stat: dims {tuple(dims)}, depths {tuple(depths)}, num_heads "
                             f"{tuple(num_heads)} and kv_pool_strides {tuple(kv_pool_strides)} "
                             "need one entry per stage")
        self.grid = tuple(grid)
        total, index = sum(depths), 0
        self.stages = nn.ModuleList()
        for s, depth in enumerate(depths):
            blocks = nn.ModuleList()
            for j in range(depth):
                transition = s > 0 and j == 0  # pools Q 2× per side and doubles the width
                q_stride = 2 if transition else 1
                blocks.append(STABlock(
                    dim=dims[s - 1] if transition else dims[s], dim_out=dims[s],
                    num_heads=num_heads[s - 1] if transition else num_heads[s],
                    q_stride=q_stride, kv_stride=kv_pool_strides[s] * q_stride,
                    mlp_ratio=mlp_ratio, drop_path=drop_path * index / max(total - 1, 1),
                    **attention,
                ))
                index += 1
            self.stages.append(blocks)
        width = dims[-1]
        self.video_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.video_token, std=0.02)
        self.video_token._optim = {"weight_decay": 0.0}  # DeiT: no decay on tokens
        self.aggregation = nn.ModuleList(
            AggregationLayer(dim=width, num_heads=num_heads[-1], mlp_ratio=mlp_ratio)
            for _ in range(num_aggregation_layers))
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, num_classes)
        self.apply(_init_linear)

    def features(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The class tokens after the last stage, (B, n_t, dims[-1])."""
        if tokens.shape[2] != 1 + self.grid[0] * self.grid[1]:
            raise ValueError(f"stat: tokens of {tokens.shape[2]} per frame, the model was built "
                             f"for a {self.grid[0]}×{self.grid[1]} grid + class token")
        # Zero padded frames: NaN/inf there would survive as 0 · NaN in the attention.
        x = torch.where(mask[:, :, None, None], tokens, torch.zeros((), dtype=tokens.dtype,
                                                                      device=tokens.device))
        hw = self.grid
        for blocks in self.stages:
            for block in blocks:
                x, hw = block(x, hw, mask)
        return x[:, :, 0]

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        cls = self.features(tokens, mask)  # (B, n_t, C)
        if not self.aggregation:  # Tab. 4, l_ta = 0: average of the class tokens
            weights = mask.unsqueeze(-1).to(cls.dtype)  # (B, n_t, 1)
            video = (cls * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, C)
        else:
            seq = torch.cat([self.video_token.expand(cls.shape[0], -1, -1), cls], dim=1)
            valid = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)  # (B, 1 + n_t)
            for layer in self.aggregation:
                seq = layer(seq, valid)  # (B, 1 + n_t, C)
            video = seq[:, 0]  # (B, C)
        return self.classifier(self.norm(video))  # (B, K)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class STAT(nn.Module):
    """The Shrinking Temporal Attention Transformer (Li et al., AAAI 2022), from pixels.

    Token embedding block → STA stages → temporal aggregation → classifier (see the module
    docstring for the paper's sections and the choices where it is silent).

    Args:
        num_classes: K.
        num_frames: T (16, 32 or 64 in the paper); sizes the temporal embedding (T / 2 tokens).
        frame_size_px: H = W (224); sizes the spatial embedding (H / 8 per side).
        t_o: Short-term window including the query frame; the paper sets 3, 5, 7 for
            T = 16, 32, 64.
        dims, depths, num_heads, kv_pool_strides, mlp_ratio, num_aggregation_layers,
            drop_path: see :class:`STATTrunk`.
        stem_channels, stem_strides: see :class:`TokenEmbedding` (its ``channels``,
            ``strides``).
        pool_kernel, short_term_kernel, short_term_stride, border, short_term, long_term:
            see :class:`ShrinkingTemporalAttention`.

    Forward:
        ``forward(video, frame_mask=None)`` with video (B, 3, T', H, W) float normalised RGB
        (T' <= T) and frame_mask (B, n_t') bool (None: every token real); returns (B, K).

    Raises:
        ValueError: t_o even or < 1, an unknown border, widths not divisible by the heads,
            or stage settings of different lengths.
    """

    def __init__(self, *, num_classes: int, num_frames: int = 16, frame_size_px: int = 224,
                 t_o: int = 3, dims: Sequence[int] = (192, 384, 768),
                 depths: Sequence[int] = (2, 11, 2), num_heads: Sequence[int] = (2, 4, 8),
                 kv_pool_strides: Sequence[int] = (4, 2, 1), mlp_ratio: float = 4.0,
                 stem_channels: Sequence[int] = (96, 192),
                 stem_strides: Sequence[Sequence[int]] = ((2, 2, 2), (1, 2, 2), (1, 2, 2)),
                 pool_kernel: int = 3, short_term_kernel: int = 3, short_term_stride: int = 2,
                 border: str = "mask", short_term: bool = True, long_term: bool = True,
                 num_aggregation_layers: int = 1, drop_path: float = 0.1):
        super().__init__()
        self.embedding = TokenEmbedding(dim=dims[0], channels=stem_channels,
                                        strides=stem_strides, num_frames=num_frames,
                                        frame_size_px=frame_size_px)
        self.trunk = STATTrunk(
            grid=self.embedding.grid, num_classes=num_classes, dims=dims, depths=depths,
            num_heads=num_heads, kv_pool_strides=kv_pool_strides, mlp_ratio=mlp_ratio,
            num_aggregation_layers=num_aggregation_layers, drop_path=drop_path, t_o=t_o,
            pool_kernel=pool_kernel, short_term_kernel=short_term_kernel,
            short_term_stride=short_term_stride, border=border, short_term=short_term,
            long_term=long_term,
        )

    def forward(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None):
        tokens = self.embedding(video)  # (B, n_t, 1 + n_h·n_w, n_c)
        if frame_mask is None:
            frame_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return self.trunk(tokens, frame_mask)


def stat_gflops(*, num_frames: int, frame_size_px: int = 224, num_classes: int = 400,
                **kwargs) -> float:
    """GFLOPs of one clip through :class:`STAT`, fvcore's convention (one multiply-add = one
    FLOP).

    The model is built on the ``meta`` device (no memory, no weights) and counted with
    ``torch.utils.flop_counter`` (matrix products and convolutions; it counts a multiply-add
    as 2 FLOPs, so its total is halved). Normalisation, softmax, pooling and activations are
    not counted, as fvcore does not count them.

    Args:
        num_frames: T of the clip (the model is built for it).
        frame_size_px: H = W of the clip.
        num_classes: K (400: Kinetics-400, the paper's ablations).
        **kwargs: Further :class:`STAT` arguments (``t_o``, ``short_term``, ...).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = STAT(num_classes=num_classes, num_frames=num_frames,
                     frame_size_px=frame_size_px, **kwargs).eval()
        video = torch.empty(1, 3, num_frames, frame_size_px, frame_size_px)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(video)
    return counter.get_total_flops() / 2 / 1e9

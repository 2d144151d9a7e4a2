"""The multi-scale decoder shared by ``vis4mer`` and ``lst`` (ViS4mer, Islam & Bertasius,
ECCV 2022, §4.2 and its official code): token flattening, pooling, the two block variants and
:class:`MultiScaleDecoder`. Which variant follows what: :mod:`heads.models.vis4mer`'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from heads.models import stream_dims
from heads.models.mean import masked_mean
from heads.models.stan import sinusoidal_encoding

POOLS = ("avg", "max")
# How the decoder is built (ViS4mer §4.2 Eq. 4 vs the official models.py; see ViS4mer's docstring).
VARIANTS = ("official", "paper")


def flatten_tokens(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token sequence per video, frame-major: ``(B, T, N, D) → (B, T·N, D)``.

    Args:
        x: (B, T, N, D) patch tokens, or (B, T, D) pooled tokens (taken as N = 1).
        mask: (B, T) bool over frames, True at real frames.

    Returns:
        x (B, T·N, D) and mask (B, T·N), every patch of a frame sharing the frame's flag.

    Raises:
        ValueError: ``x`` is not 3- or 4-dimensional, or ``mask`` does not match its (B, T).
    """
    if x.dim() not in (3, 4):
        raise ValueError(f"tokens must be (B, T, D) or (B, T, N, D), got shape {tuple(x.shape)}")
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match tokens {tuple(x.shape)}")
    if x.dim() == 3:
        return x, mask
    batch, num_frames, num_patches, dim = x.shape
    x = x.reshape(batch, num_frames * num_patches, dim)  # (B, T·N, D)
    mask = mask.repeat_interleave(num_patches, dim=1)  # (B, T·N)
    return x, mask


def masked_pool(
    x: torch.Tensor, mask: torch.Tensor, kind: str = "avg", *, odd: str = "pad"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool pairs of neighbours along the sequence (window 2, stride 2), over real tokens only.

    Window ``i`` covers positions ``2i`` and ``2i + 1``; an odd length gets one padded position,
    so a video alone and the same video padded in a batch pool the same windows. A window with
    one real token yields that token; a window without any yields 0 and is padding downstream.

    Args:
        x: (B, L, H). Padded positions must be finite (they get weight 0 in ``avg``).
        mask: (B, L) bool, True at real tokens.
        kind: ``avg`` (ViS4mer's official implementation) or ``max``.
        odd: A video with an odd number n of real tokens: ``pad`` pools its last token alone
            (ceil(n/2) outputs); ``drop`` leaves it out (floor(n/2), as ``nn.AvgPool1d(2)`` in
            ViS4mer's official code; a video of one token keeps it).

    Returns:
        (B, ceil(L/2), H) pooled tokens and their (B, ceil(L/2)) mask (True if any was real).

    Raises:
        ValueError: unknown ``kind`` or ``odd``.
    """
    if kind not in POOLS:
        raise ValueError(f"unknown pool {kind!r}; valid pools: {', '.join(POOLS)}")
    if odd not in ("pad", "drop"):
        raise ValueError(f"unknown odd-length rule {odd!r}; valid: pad, drop")
    if odd == "drop":
        count = mask.sum(dim=1)  # (B,)
        # The last real position of each video (real tokens need not be a prefix).
        last = mask.shape[1] - 1 - mask.flip(1).to(torch.int8).argmax(dim=1)  # (B,)
        drop = (count % 2 == 1) & (count > 1)  # (B,)
        mask = mask.clone()
        mask[drop.nonzero(as_tuple=True)[0], last[drop]] = False
    batch, length, dim = x.shape
    if length % 2:
        x = nn.functional.pad(x, (0, 0, 0, 1))  # (B, L + 1, H)
        mask = nn.functional.pad(mask, (0, 1))  # (B, L + 1)
    pairs = x.reshape(batch, -1, 2, dim)  # (B, L/2, 2, H)
    pair_mask = mask.reshape(batch, -1, 2)  # (B, L/2, 2)
    pooled_mask = pair_mask.any(dim=-1)  # (B, L/2)
    if kind == "avg" and bool(pair_mask.all()):
        # No padding (the usual fixed-length training window): a plain mean saves nothing for
        # backward, where the weighted sum below keeps a copy of x.
        return pairs.mean(dim=2), pooled_mask  # (B, L/2, H)
    if kind == "avg":
        # One multiply-and-sum instead of `where` + mean: these tensors are the largest of the
        # model (10^4 tokens × 1024 channels) and the pass over them dominates on CPU.
        count = pair_mask.sum(-1, keepdim=True).clamp_min(1)  # (B, L/2, 1)
        weights = pair_mask.to(x.dtype) / count  # (B, L/2, 2)
        pooled = (pairs * weights.unsqueeze(-1)).sum(dim=2)  # (B, L/2, H)
    else:
        lowest = torch.finfo(x.dtype).min
        pooled = pairs.masked_fill(~pair_mask.unsqueeze(-1), lowest).amax(dim=2)  # (B, L/2, H)
        pooled = torch.where(pooled_mask.unsqueeze(-1), pooled, torch.zeros((), dtype=x.dtype,
                                                                             device=x.device))
    return pooled, pooled_mask


class DecoderBlock(nn.Module):
    """One decoder block of ViS4mer's official code, H → H/2 channels, L → L/2 tokens::

        h = x + Dropout(Mixer(LayerNorm(x)))          (pre-norm residual)
        y = GELU(Linear_{H→H/2}(Pool(h)))              (1-D pool stride 2, MLP halving channels)

    The order is the official ``models.py`` (``prenorm=True``; read, not copied): pooling runs
    over the flattened frame-major sequence, CLS included, and since pooling and the Linear are
    linear, ``y = GELU(W·Pool(x) + W·Pool(Mixer(·)))``: the skip path shares its weights with
    the mixer path. The paper's Eq. 4 block is :class:`PaperDecoderBlock`.

    Args:
        dim: H, input channels (even).
        mixer: Sequence mixer, ``mixer(x, mask)`` with x (B, L, H) → (B, L, H): an
            :class:`S4Layer` (``vis4mer``) or self-attention (``lst``).
        pool: ``avg`` (official) or ``max``.
        dropout: Dropout on the mixer's output.
        odd: Odd token counts: ``drop`` the last (official ``AvgPool1d``) or ``pad``
            (:func:`masked_pool`).

    Forward:
        ``forward(x, mask)``: x (B, L, H), mask (B, L) bool → (B, ceil(L/2), H/2) and its mask.
        Padded positions hold finite values that no real output depends on.
    """

    def __init__(self, *, dim: int, mixer: nn.Module, pool: str, dropout: float,
                 odd: str = "drop"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
        self.pool, self.odd = pool, odd
        self.norm = nn.LayerNorm(dim)
        self.mixer = mixer
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU())

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = x + self.dropout(self.mixer(self.norm(x), mask))  # (B, L, H)
        h, pooled_mask = masked_pool(h, mask, self.pool, odd=self.odd)  # (B, L/2, H)
        return self.mlp(h), pooled_mask  # (B, L/2, H/2)


def grid_pool(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-frame spatial pooling of the paper's decoder (ViS4mer §4.4: kernel 1 × 2 × 2, stride
    1 × 2 × 2, padding 1 × 1 × 1), on the (T, G, G) token grid of each video.

    The temporal padding of 1 is left out: with a temporal kernel of 1 it could only add empty
    frames (PyTorch requires padding <= kernel / 2), so the spatial padding (1, 1) is used alone:
    G → G/2 + 1 (14 → 8 → 5 → 3). Frames never mix, so padded frames stay apart.

    Args:
        x: (B, T, G, G, H).
        kind: ``max`` (the paper, "using a max-pooling layer") or ``avg``.

    Returns:
        (B, T, G', G', H), G' = floor(G / 2) + 1.
    """
    batch, num_frames, grid, _, dim = x.shape
    frames = x.reshape(batch * num_frames, grid, grid, dim).permute(0, 3, 1, 2)  # (BT, H, G, G)
    if kind == "max":
        pooled = nn.functional.max_pool2d(frames, kernel_size=2, stride=2, padding=1)
    else:
        pooled = nn.functional.avg_pool2d(frames, kernel_size=2, stride=2, padding=1,
                                          count_include_pad=False)
    side = pooled.shape[-1]
    return pooled.permute(0, 2, 3, 1).reshape(batch, num_frames, side, side, dim)  # (B,T,G',G',H)


class PaperDecoderBlock(nn.Module):
    """One block of the paper's multi-scale temporal S4 decoder (ViS4mer §4.2, Eq. 4)::

        x_s4   = Mixer(LN(x_in))                      (S4 over the flattened T·G·G tokens)
        x_mlp  = MLP(Pooling(x_s4))                    (MLP halving the channels)
        x_skip = Linear(Pooling(x_in))                 (its own Linear: the skip path)
        x_out  = x_mlp + x_skip

    Pooling is per-frame spatial :func:`grid_pool`. The MLP's layers are not stated: Linear +
    GELU, as the official code's channel reduction.

    Args:
        dim: H, input channels (even).
        mixer: Sequence mixer ``mixer(x, mask)`` on (B, L, H).
        pool: ``max`` (the paper) or ``avg``.

    Forward:
        ``forward(x, mask)``: x (B, T, G, G, H), mask (B, T) bool over frames →
        (B, T, G', G', H/2), the same frame mask.
    """

    def __init__(self, *, dim: int, mixer: nn.Module, pool: str):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
        self.pool = pool
        self.norm = nn.LayerNorm(dim)
        self.mixer = mixer
        self.mlp = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU())
        self.skip = nn.Linear(dim, dim // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, num_frames, grid, _, dim = x.shape
        flat = x.reshape(batch, num_frames * grid * grid, dim)  # (B, L, H), frame-major
        token_mask = mask.repeat_interleave(grid * grid, dim=1)  # (B, L)
        s4 = self.mixer(self.norm(flat), token_mask).reshape(x.shape)  # (B, T, G, G, H)
        out = self.mlp(grid_pool(s4, self.pool)) + self.skip(grid_pool(x, self.pool))
        return out, mask  # (B, T, G', G', H/2)


class MultiScaleDecoder(nn.Module):
    """Tokens → optional Linear to ``d_model`` → ``num_blocks`` :class:`DecoderBlock` (channels
    halved and tokens pooled by 2 in each) → masked global average pool → Linear classifier.

    The shared body of ``vis4mer`` and ``lst``; they differ only in ``mixer_factory``.

    Args:
        name: Registry key, for error messages.
        in_dim: D of the tokens (one stream).
        num_outputs: K classes, or 1 for regression.
        mixer_factory: ``mixer_factory(dim)`` builds the sequence mixer of a block of width dim.
        d_model: Width of the first block; None keeps D (no input projection). When it equals D
            no projection is made either (ViS4mer feeds its 1024-d ViT-L tokens directly).
        num_blocks: Decoder blocks.
        pool: ``avg`` or ``max`` pooling in the blocks; None = the variant's (official ``avg``,
            paper ``max``).
        dropout: Dropout in the blocks.
        positional_encoding: Add the sinusoidal encoding of each token's index (Vaswani et al.
            2017, §3.5) before the first block; the attention mixer is blind to order otherwise.
        variant: ``official`` (:class:`DecoderBlock`: 1-D pooling over the flattened tokens,
            CLS included) or ``paper`` (:class:`PaperDecoderBlock`: Eq. 4, per-frame spatial
            pooling on the patch grid, CLS dropped).
        frame_tokens: Tokens per frame before the decoder (:func:`reduce_frame_tokens`, the
            §5.2 ablation: 196, 49, 25 or 1); None keeps the stored tokens.

    Forward:
        ``forward(x, mask)`` with x (B, T, N, D) patch tokens or (B, T, D) frame tokens and mask
        (B, T) bool over frames (True = real); returns (B, K). Padded frames never change it.

    Raises:
        ValueError: ``d_model`` cannot be halved ``num_blocks`` times, an unknown ``pool`` or
            ``variant``; in forward, for ``paper``, N is neither G² nor 1 + G².
    """

    streams: tuple[str, ...] = ("tokens",)
    # ViS4mer reads ViT patch tokens (B, T, N, D); frame features (B, T, D) are N = 1.
    token_kinds: tuple[str, ...] = ("patch", "pooled")

    def __init__(
        self,
        *,
        name: str,
        in_dim: int | Sequence[int],
        num_outputs: int,
        mixer_factory: Callable[[int], nn.Module],
        d_model: int | None,
        num_blocks: int,
        pool: str | None,
        dropout: float,
        positional_encoding: bool = False,
        variant: str = "official",
        frame_tokens: int | None = None,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"{name}: unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
        pool = pool or {"official": "avg", "paper": "max"}[variant]
        (dim,) = stream_dims(name, in_dim, 1)
        d_model = d_model or dim
        if num_blocks < 1 or d_model % 2**num_blocks:
            raise ValueError(
                f"{name}: d_model {d_model} must be divisible by 2**num_blocks = 2**{num_blocks} "
                "(each block halves the channels)"
            )
        self.d_model, self.positional_encoding = d_model, positional_encoding
        self.variant, self.frame_tokens = variant, frame_tokens
        self.input_proj = nn.Linear(dim, d_model) if dim != d_model else nn.Identity()
        widths = [d_model // 2**i for i in range(num_blocks)]
        self.blocks = nn.ModuleList(
            DecoderBlock(dim=w, mixer=mixer_factory(w), pool=pool, dropout=dropout)
            if variant == "official" else PaperDecoderBlock(dim=w, mixer=mixer_factory(w),
                                                            pool=pool)
            for w in widths
        )
        self.classifier = nn.Linear(d_model // 2**num_blocks, num_outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        frame_mask, grid = mask, None
        if self.frame_tokens is not None:
            x = reduce_frame_tokens(x, self.frame_tokens)  # (B, T, N', D) or (B, T, D)
        if self.variant == "paper":
            x, grid = patch_grid(x)  # (B, T, G·G, D): CLS dropped
        x, mask = flatten_tokens(x, mask)  # (B, L, D), (B, L) with L = T·N
        # `where`, not a product: padding may hold anything (even NaN) and must not leak in.
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        x = self.input_proj(x)  # (B, L, d_model)
        if self.positional_encoding:
            x = x + sinusoidal_encoding(x.shape[1], self.d_model, device=x.device, dtype=x.dtype)
        if grid is not None:
            batch, num_frames = frame_mask.shape
            x = x.reshape(batch, num_frames, grid, grid, self.d_model)  # (B, T, G, G, d_model)
            for block in self.blocks:
                x, frame_mask = block(x, frame_mask)  # (B, T, G', G', d_model / 2^i)
            side = x.shape[2]
            x = x.reshape(batch, num_frames * side * side, x.shape[-1])  # (B, T·G'·G', H)
            mask = frame_mask.repeat_interleave(side * side, dim=1)  # (B, T·G'·G')
        else:
            for block in self.blocks:
                x, mask = block(x, mask)  # (B, L / 2^i, d_model / 2^i)
        return self.classifier(masked_mean(x, mask))  # (B, d_model / 2^num_blocks) -> (B, K)


def reduce_frame_tokens(x: torch.Tensor, frame_tokens: int) -> torch.Tensor:
    """ViS4mer §5.2's token-count ablation (Fig. 3, Tab. 3): "spatial max-pooling with a varying
    stride individually on each frame"; "the 60 token baseline corresponds to a model that
    operates only on the frame-level CLS tokens".

    Args:
        x: (B, T, N, D) with N = G² or CLS + G² (ViT-L/16: 197).
        frame_tokens: Tokens kept per frame: 1 (the CLS token), or G'² for a max pooling of the
            G × G grid with kernel = stride = ceil(G / G') (ceil mode): at G = 14, 196 (stride 1),
            49 (stride 2 → 7 × 7) and 25 (stride 3 → 5 × 5), i.e. 11,760, 2,940 and 1,500 tokens
            per 60 frames.

    Returns:
        (B, T, frame_tokens, D) patch tokens, or (B, T, D) CLS tokens for ``frame_tokens = 1``.

    Raises:
        ValueError: ``frame_tokens = 1`` without a CLS token, or no stride gives G'² tokens.
    """
    if x.dim() == 3:
        return x  # already one token per frame
    grid_tokens, grid = patch_grid(x)  # (B, T, G², D)
    if frame_tokens == 1:
        if grid_tokens.shape[2] == x.shape[2]:
            raise ValueError("frame_tokens=1 keeps each frame's CLS token; these tokens have none")
        return x[:, :, 0]  # (B, T, D)
    side = math.isqrt(frame_tokens)
    stride = -(-grid // side) if side else 0
    if side * side != frame_tokens or not stride or -(-grid // stride) != side:
        raise ValueError(f"frame_tokens {frame_tokens}: no pooling stride turns the {grid} × "
                         f"{grid} grid into a square of that many tokens (e.g. 196, 49, 25, 1)")
    if stride == 1:
        return grid_tokens
    batch, num_frames, _, dim = grid_tokens.shape
    frames = grid_tokens.reshape(batch * num_frames, grid, grid, dim).permute(0, 3, 1, 2)
    pooled = nn.functional.max_pool2d(frames, stride, stride, ceil_mode=True)  # (BT, D, G', G')
    return pooled.permute(0, 2, 3, 1).reshape(batch, num_frames, side * side, dim)


def patch_grid(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """ViS4mer Eq. 4's input: the (G × G) patch grid of every frame, CLS left out (§4.2:
    "14 × 14 × 60 = 11,760 output tokens").

    Args:
        x: (B, T, N, D) with N = G² or 1 + G² (CLS first, as ViT's tokens); or (B, T, D), a
            1 × 1 grid.

    Returns:
        (B, T, G², D) and G.

    Raises:
        ValueError: N is neither a square nor one more than a square.
    """
    if x.dim() == 3:
        return x.unsqueeze(2), 1  # (B, T, 1, D)
    num = x.shape[2]
    for cls, grid in ((0, math.isqrt(num)), (1, math.isqrt(num - 1))):
        if grid * grid == num - cls:
            return x[:, :, cls:], grid
    raise ValueError(f"vis4mer variant 'paper' pools the patch grid: {num} tokens per frame are "
                     "neither G² nor CLS + G²; use variant 'official'")

"""ViS4mer: a multi-scale temporal S4 decoder over the (frame × patch) tokens of a long video.

Source: M. M. Islam, G. Bertasius, "Long Movie Clip Classification with State-Space Video
Models", ECCV 2022 (arXiv:2204.01692), §3. The paper's short-range transformer encoder is the
frozen backbone here (ViT-L/16 patch tokens from the feature store); this module is its §3
multi-scale temporal S4 decoder plus the classifier. The decoder is written once for any
sequence mixer (:class:`MultiScaleDecoder`): ``vis4mer`` mixes with S4 (:mod:`heads.models.s4`),
``lst`` (:mod:`heads.models.lst`) with self-attention, the paper's §4 baseline.

What was checked where: the paper's full text could not be consulted here (searched the
``pages`` corpus for the title, "multi-scale temporal S4 decoder" and the block's wording: only
abstracts came back). The abstract states the design (S4 decoder reducing token resolution and
channels at each block; 2.63× faster and 8× less memory than the self-attention model). Block
order and hyper-parameters were read from the authors' official repository
(md-mohaiminul/ViS4mer: ``models.py``, ``s4.py``, ``run_lvu.py``; read to learn, nothing
copied): pre-norm residual S4 layer (SSM → GELU → Dropout → Linear), AvgPool1d(2), Linear
halving the channels + GELU, 3 blocks, d_model = D = 1024 (no input projection), state size
64, HiPPO-LegS, dt in [1e-3, 1e-1], dropout 0.2, mean over tokens, Linear classifier; AdamW
lr 1e-3, weight decay 0.01, with A, B and dt at lr 1e-3 and no weight decay. Differences kept
on purpose: S4D (diagonal) replaces the official NPLR S4 kernel (which needs a CUDA or pykeops
Cauchy kernel), and plain Dropout replaces the official channel-wise Dropout2d.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from heads.models import register_head, stream_dims
from heads.models.mean import masked_mean
from heads.models.s4 import S4_LR, S4D
from heads.models.stan import sinusoidal_encoding

POOLS = ("avg", "max")


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
    x: torch.Tensor, mask: torch.Tensor, kind: str = "avg"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool pairs of neighbours along the sequence (window 2, stride 2), over real tokens only.

    Window ``i`` covers positions ``2i`` and ``2i + 1``; an odd length gets one padded position,
    so a video alone and the same video padded in a batch pool the same windows. A window with
    one real token yields that token; a window without any yields 0 and is padding downstream.

    Args:
        x: (B, L, H). Padded positions must be finite (they get weight 0 in ``avg``).
        mask: (B, L) bool, True at real tokens.
        kind: ``avg`` (ViS4mer's official implementation) or ``max``.

    Returns:
        (B, ceil(L/2), H) pooled tokens and their (B, ceil(L/2)) mask (True if any was real).

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in POOLS:
        raise ValueError(f"unknown pool {kind!r}; valid pools: {', '.join(POOLS)}")
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


class S4Layer(nn.Module):
    """The deep S4 layer: H independent SSMs, a GELU, dropout, then a position-wise Linear
    mixing the channels (S4: Gu, Goel, Ré, ICLR 2022, §3.4 "Architecture details of the deep S4
    layer"; ViS4mer's official S4 module has the same order: SSM + D → GELU → Dropout →
    Linear H → H).

    Args:
        dim: H, channels.
        dropout: Dropout after the GELU.
        **s4_kwargs: :class:`heads.models.s4.S4D` arguments (``state_dim``, ``init``, ...).

    Forward:
        ``forward(x, mask)``: x (B, L, H), mask (B, L) bool (True = real) → (B, L, H).
    """

    def __init__(self, *, dim: int, dropout: float, **s4_kwargs):
        super().__init__()
        self.s4 = S4D(dim=dim, **s4_kwargs)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(nn.functional.gelu(self.s4(x, mask))))  # (B, L, H)


class DecoderBlock(nn.Module):
    """One multi-scale decoder block (ViS4mer §3), H → H/2 channels, L → L/2 tokens::

        h = x + Dropout(Mixer(LayerNorm(x)))          (pre-norm residual)
        y = GELU(Linear_{H→H/2}(Pool(h)))              (pool stride 2, MLP halving channels)

    The paper's text was not available to us (see the module docstring); the order follows
    ViS4mer's official code (md-mohaiminul/ViS4mer, ``models.py``, ``prenorm=True``; read, not
    copied). Since pooling and the Linear are linear, ``y = GELU(W·Pool(x) + W·Pool(Mixer(·)))``:
    the skip path ``Pool + Linear`` shares its weights with the mixer path.

    Args:
        dim: H, input channels (even).
        mixer: Sequence mixer, ``mixer(x, mask)`` with x (B, L, H) → (B, L, H): an
            :class:`S4Layer` (``vis4mer``) or self-attention (``lst``).
        pool: ``avg`` or ``max``.
        dropout: Dropout on the mixer's output.

    Forward:
        ``forward(x, mask)``: x (B, L, H), mask (B, L) bool → (B, ceil(L/2), H/2) and its mask.
        Padded positions hold finite values that no real output depends on.
    """

    def __init__(self, *, dim: int, mixer: nn.Module, pool: str, dropout: float):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; valid pools: {', '.join(POOLS)}")
        self.pool = pool
        self.norm = nn.LayerNorm(dim)
        self.mixer = mixer
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU())

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = x + self.dropout(self.mixer(self.norm(x), mask))  # (B, L, H)
        h, pooled_mask = masked_pool(h, mask, self.pool)  # (B, L/2, H)
        return self.mlp(h), pooled_mask  # (B, L/2, H/2)


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
        pool: ``avg`` or ``max`` pooling in the blocks.
        dropout: Dropout in the blocks.
        positional_encoding: Add the sinusoidal encoding of each token's index (Vaswani et al.
            2017, §3.5) before the first block; the attention mixer is blind to order otherwise.

    Forward:
        ``forward(x, mask)`` with x (B, T, N, D) patch tokens or (B, T, D) frame tokens and mask
        (B, T) bool over frames (True = real); returns (B, K). Padded frames never change it.

    Raises:
        ValueError: ``d_model`` cannot be halved ``num_blocks`` times, or an unknown ``pool``.
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
        pool: str,
        dropout: float,
        positional_encoding: bool = False,
    ):
        super().__init__()
        (dim,) = stream_dims(name, in_dim, 1)
        d_model = d_model or dim
        if num_blocks < 1 or d_model % 2**num_blocks:
            raise ValueError(
                f"{name}: d_model {d_model} must be divisible by 2**num_blocks = 2**{num_blocks} "
                "(each block halves the channels)"
            )
        self.d_model, self.positional_encoding = d_model, positional_encoding
        self.input_proj = nn.Linear(dim, d_model) if dim != d_model else nn.Identity()
        self.blocks = nn.ModuleList(
            DecoderBlock(dim=d_model // 2**i, mixer=mixer_factory(d_model // 2**i), pool=pool,
                         dropout=dropout)
            for i in range(num_blocks)
        )
        self.classifier = nn.Linear(d_model // 2**num_blocks, num_outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, mask = flatten_tokens(x, mask)  # (B, L, D), (B, L) with L = T·N
        # `where`, not a product: padding may hold anything (even NaN) and must not leak in.
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        x = self.input_proj(x)  # (B, L, d_model)
        if self.positional_encoding:
            x = x + sinusoidal_encoding(x.shape[1], self.d_model, device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x, mask = block(x, mask)  # (B, L / 2^i, d_model / 2^i)
        return self.classifier(masked_mean(x, mask))  # (B, d_model / 2^num_blocks) -> (B, K)


@register_head("vis4mer")
class ViS4mer(MultiScaleDecoder):
    """ViS4mer's multi-scale temporal S4 decoder (Islam & Bertasius, ECCV 2022, §3) + classifier.

    60 frames × 196 ViT-L/16 patch tokens (D = 1024) flatten to a sequence of 11,760 tokens;
    three :class:`DecoderBlock` (x + S4Layer(LayerNorm(x)) → average pool, stride 2 → Linear
    halving the channels + GELU) reduce it to 1,470 tokens of 128 channels; a masked global
    average pool and a Linear give the logits. S4 is S4D (:class:`heads.models.s4.S4D`), pure
    PyTorch, inside the deep S4 layer (:class:`S4Layer`). Defaults follow the official code
    (see the module docstring): d_model 1024, 3 blocks, state size 64, HiPPO-LegS init, dt in
    [1e-3, 1e-1], dropout 0.2, average pooling, S4 parameters at lr 1e-3 without weight decay.

    Args:
        in_dim: D of the tokens.
        num_outputs: K classes, or 1 for regression.
        d_model: Width of the first block (input projected to it when D differs); None = D.
        num_blocks: Decoder blocks.
        state_dim: N, S4 state size per channel (N/2 complex modes).
        s4_init: ``legs`` (S4D-LegS) or ``lin`` (S4D-Lin).
        dt_min: Smallest initial S4 step.
        dt_max: Largest initial S4 step.
        bidirectional: S4 kernels in both time directions (the paper's S4 is causal).
        s4_lr: Learning rate of the S4 parameters A, B, dt (no weight decay on them).
        pool: ``avg`` or ``max``.
        dropout: Dropout inside the S4 layer and on its output.

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
        state_dim: int = 64,
        s4_init: str = "legs",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        bidirectional: bool = False,
        s4_lr: float = S4_LR,
        pool: str = "avg",
        dropout: float = 0.2,
    ):
        def s4(dim: int) -> nn.Module:
            return S4Layer(dim=dim, dropout=dropout, state_dim=state_dim, init=s4_init,
                           dt_min=dt_min, dt_max=dt_max, bidirectional=bidirectional, lr=s4_lr)

        super().__init__(
            name="vis4mer", in_dim=in_dim, num_outputs=num_outputs, mixer_factory=s4,
            d_model=d_model, num_blocks=num_blocks, pool=pool, dropout=dropout,
        )

"""ViS4mer: a multi-scale temporal S4 decoder over the (frame × patch) tokens of a long video.

Source: M. M. Islam, G. Bertasius, "Long Movie Clip Classification with State-Space Video
Models", ECCV 2022 (arXiv:2204.01692), ``../shared/papers/vis4mer.txt``. The paper's
transformer encoder (§4.1, Eq. 3: ViT-L/16, 24 blocks, D = 1024) is the frozen backbone here
(patch tokens from the feature store); this module is its multi-scale temporal S4 decoder
(§4.2, Eq. 4) plus GAP and the classifier (Fig. 2). The decoder is written once for any sequence
mixer (:class:`MultiScaleDecoder`): ``vis4mer`` mixes with S4 (§3, :mod:`heads.models.s4`),
``lst`` (:mod:`heads.models.lst`) with self-attention, the paper's Long Sequence Transformer.

The paper and its official code (md-mohaiminul/ViS4mer ``models.py``, ``run_lvu.py``; read, not
copied) build the decoder block differently; both are offered (``variant``):

| element | ``paper`` (§4.2 Eq. 4, §4.4) | ``official`` (default: the reported numbers' code) |
|---|---|---|
| block | x_out = MLP(Pool(S4(LN x))) + Linear(Pool x) | GELU(Linear(Pool(x + S4(LN x)))) |
| skip Linear | its own | shared with the MLP (the Linear is applied after the sum) |
| pooling | max, kernel/stride 1 × 2 × 2, per frame | AvgPool1d(2), flattened, floor |
| tokens per 60 s | 60 × 196 = 11,760 (CLS not among them) | 60 × 197 = 11,820 (CLS included) |
| token counts after the 3 blocks | 11,760 → 3,840 → 1,500 → 540 | 11,820 → 5,910 → 2,955 → 1,477 |

Paper §4.4 also states padding 1 × 1 × 1 for the pooling; the temporal part cannot apply with a
temporal kernel of 1 and is left out (:func:`grid_pool`). Both variants: 3 blocks, channels
halved in each (1024 → 512 → 256 → 128), GAP over the last block's tokens, a Linear classifier
(Fig. 2). Hyper-parameters not in the paper come from the official code: deep S4 layer order
(SSM → GELU → Dropout → Linear), state size 64, HiPPO-LegS (Eq. 2), dt in [1e-3, 1e-1], dropout
0.2, S4's A, B and dt at lr 1e-3 without weight decay. Deliberate differences from both: S4D
(diagonal) replaces the NPLR S4 kernel (which needs a CUDA or pykeops Cauchy kernel), plain
Dropout replaces the official channel-wise Dropout2d, and padded frames are masked instead of
zero-filled to 60 frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from heads.models import register_head
from heads.models.multiscale import MultiScaleDecoder
from heads.models.s4 import S4_LR, S4D

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


@register_head("vis4mer")
class ViS4mer(MultiScaleDecoder):
    """ViS4mer's multi-scale temporal S4 decoder (Islam & Bertasius, ECCV 2022, §4.2) +
    classifier.

    ``variant="official"`` (default): 60 frames × 197 ViT-L/16 tokens (CLS + 14 × 14 patches,
    D = 1024) flatten to 11,820 tokens; three :class:`DecoderBlock` (x + S4Layer(LN x) → average
    pool, stride 2, floor → Linear halving the channels + GELU) reduce them to 1,477 tokens of
    128 channels. ``variant="paper"``: Eq. 4 on the 60 × 14 × 14 = 11,760 patch tokens, per-frame
    spatial max pooling (:class:`PaperDecoderBlock`): 11,760 → 3,840 → 1,500 → 540 tokens. Then a
    masked global average pool and a Linear give the logits. S4 is S4D
    (:class:`heads.models.s4.S4D`), pure PyTorch, inside the deep S4 layer (:class:`S4Layer`).
    Defaults (module docstring): d_model 1024, 3 blocks, state size 64, HiPPO-LegS init, dt in
    [1e-3, 1e-1], dropout 0.2, S4 parameters at lr 1e-3 without weight decay.

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
        pool: ``avg`` or ``max``; None = the variant's (official ``avg``, paper ``max``).
        dropout: Dropout inside the S4 layer and on its output.
        frame_tokens: Tokens per frame before the decoder, ViS4mer §5.2's ablation (196, 49,
            25, or 1 = CLS only: 11,760, 2,940, 1,500, 60 tokens per 60 s); None = as stored.
        variant: ``official`` or ``paper`` (the module docstring's table).

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
        pool: str | None = None,
        dropout: float = 0.2,
        variant: str = "official",
        frame_tokens: int | None = None,
    ):
        def s4(dim: int) -> nn.Module:
            return S4Layer(dim=dim, dropout=dropout, state_dim=state_dim, init=s4_init,
                           dt_min=dt_min, dt_max=dt_max, bidirectional=bidirectional, lr=s4_lr)

        super().__init__(
            name="vis4mer", in_dim=in_dim, num_outputs=num_outputs, mixer_factory=s4,
            d_model=d_model, num_blocks=num_blocks, pool=pool, dropout=dropout, variant=variant,
            frame_tokens=frame_tokens,
        )

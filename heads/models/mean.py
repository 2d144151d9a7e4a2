"""The ``mean`` head: masked average pooling over time, then an MLP (or a single Linear).

The temporal-pooling baseline of STAN (Fish et al., BMVC 2022, Tab. 1) and STAM (Sharir et al.,
2021, Tab. 2): it sees which features occur in a video but not in what order. STAM's is the
mean of the frame embeddings and its single classification Linear (official code:
``MeanAggregate`` + the model's head): ``--head-kwarg hidden_dim=null``. Neither paper states
the baseline's classifier beyond that; the default MLP (hidden 512, GELU, dropout 0.1) is
longvid's choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from heads.models import register_head, stream_dims


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens of each sequence.

    Args:
        x: (B, T, D) tokens.
        mask: (B, T) bool, True at real tokens.

    Returns:
        (B, D) means; zeros for a sequence without real tokens.
    """
    # `where`, not a product: padding may hold anything (even NaN) and must not leak in.
    x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    num_real = mask.sum(dim=1, keepdim=True).clamp_min(1).to(x.dtype)  # (B, 1)
    return x.sum(dim=1) / num_real


@register_head("mean")
class MeanHead(nn.Module):
    """Masked mean pool per stream, concatenated, then Linear → GELU → Dropout → Linear.

    Accepts any number of streams (one per entry of ``in_dim``): their means are concatenated,
    so ``mean`` with two feature sets is the "concatenated 2D + 3D features" baseline.

    Args:
        in_dim: D, or one D_i per stream.
        num_outputs: K classes, or 1 for regression.
        hidden_dim: Width of the MLP's hidden layer; None = a single Linear (STAM's baseline).
        dropout: Dropout probability after the hidden layer (unused without one).

    Forward:
        ``forward(x_0, mask_0, ..., x_{S-1}, mask_{S-1})`` with x_i (B, T_i, D_i), mask_i (B, T_i)
        bool (True = real token); returns (B, K).
    """

    streams: tuple[str, ...] = ("tokens",)
    variadic_streams = True

    def __init__(
        self,
        *,
        in_dim: int | Sequence[int],
        num_outputs: int,
        hidden_dim: int | None = 512,
        dropout: float = 0.1,
    ):
        super().__init__()
        num_streams = 1 if isinstance(in_dim, int) else len(in_dim)
        self.in_dims = stream_dims("mean", in_dim, num_streams)
        self.streams = ("tokens",) if num_streams == 1 else tuple(
            f"tokens_{i}" for i in range(num_streams)
        )
        if hidden_dim is None:
            self.mlp = nn.Linear(sum(self.in_dims), num_outputs)
        else:
            self.mlp = nn.Sequential(
                nn.Linear(sum(self.in_dims), hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, num_outputs),
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
        inputs = (x, mask, *more)
        if len(inputs) != 2 * len(self.in_dims):
            raise ValueError(
                f"mean head built for {len(self.in_dims)} stream(s) takes {2 * len(self.in_dims)} "
                f"tensors (x, mask per stream), got {len(inputs)}"
            )
        pooled = [masked_mean(x, mask) for x, mask in zip(inputs[0::2], inputs[1::2])]
        return self.mlp(torch.cat(pooled, dim=-1))  # (B, sum D_i) -> (B, K)

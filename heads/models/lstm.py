"""The ``lstm`` head: an LSTM over the token sequence, classified from its last hidden state.

The recurrent baseline of STAN (Fish et al., BMVC 2022, Tab. 1): it sees token order, unlike
``mean``, but has to carry a whole video through one hidden state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from heads.models import register_head, stream_dims


@register_head("lstm")
class LSTMHead(nn.Module):
    """LSTM over tokens → last valid hidden state → Dropout → Linear.

    Padding is skipped with ``pack_padded_sequence``, so the forward direction's final state is
    the one after the last *real* token and the backward direction (``bidirectional=True``)
    starts at it. Real tokens are moved in front of the padding first, so any mask works, not
    only the prefix masks ``heads.data.collate`` builds. STAN Tab. 1 gives no LSTM sizes; the
    defaults (one layer, 512 units) match STAN's width.

    Args:
        in_dim: Token dim D.
        num_outputs: K classes, or 1 for regression.
        hidden_dim: LSTM units per direction.
        num_layers: Stacked LSTM layers.
        bidirectional: Also run a backward LSTM and concatenate both final states.
        dropout: Dropout between stacked layers and before the classifier.

    Forward:
        ``forward(x, mask)`` with x (B, T, D), mask (B, T) bool True at real tokens; returns
        (B, K). A video without tokens reads a single zero token.
    """

    streams: tuple[str, ...] = ("tokens",)

    def __init__(
        self,
        *,
        in_dim: int | Sequence[int],
        num_outputs: int,
        hidden_dim: int = 512,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        (dim,) = stream_dims("lstm", in_dim, 1)
        self.num_directions = 2 if bidirectional else 1
        self.lstm = nn.LSTM(
            dim, hidden_dim, num_layers=num_layers, batch_first=True,
            bidirectional=bidirectional,
            # nn.LSTM applies dropout only between layers (and warns when there is just one).
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_directions * hidden_dim, num_outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if x.shape[1] == 0:
            x = x.new_zeros(batch, 1, x.shape[2])  # (B, 1, D)
            mask = mask.new_zeros(batch, 1)  # (B, 1)
        # Stable sort of "is padding": real tokens first, each group in its original order.
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # (B, T)
        x = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))  # (B, T, D)
        mask = torch.gather(mask, 1, order)  # (B, T)
        # Zero padding: the empty-video case below reads position 0, which may be padding.
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        lengths = mask.sum(dim=1).clamp_min(1).cpu()  # (B,); pack wants lengths on the CPU
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths, batch_first=True, enforce_sorted=False
        )
        _, (h_n, _) = self.lstm(packed)  # h_n: (num_layers · directions, B, hidden)
        last = h_n[-self.num_directions :]  # (directions, B, hidden): the top layer's states
        features = last.transpose(0, 1).reshape(batch, -1)  # (B, directions · hidden)
        return self.classifier(self.dropout(features))  # (B, K)

"""STAN's building blocks: the shared positional encoding (STAN Eq. 1–3), the stream encoder
(STAN §3 "Spatial and Temporal Transformer Encoders", Eq. 4), context gating (the classifier's
gated non-linearity), collaborative gating (Tab. 1/4 "Gated Fusion") and the distillation losses
(Tab. 1/4 "Distillation"). The head that assembles them is :class:`heads.models.stan.STAN`;
the paper is E. Fish, J. Weinbren, A. Gilbert, "Two-Stream Transformer Architecture for Long
Form Video Understanding", BMVC 2022 (``shared/papers/stan.txt``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("post", "pre")
ACTIVATIONS = ("relu", "gelu")


def sinusoidal_encoding(
    num_positions: int, dim: int, *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Fixed sinusoidal positional encoding (STAN Eq. 2, after Vaswani et al., NeurIPS 2017,
    §3.5).

    ``PE[pos, 2i] = sin(pos / 10000^(2i/dim))`` and ``PE[pos, 2i+1] = cos(pos / 10000^(2i/dim))``.

    Args:
        num_positions: Number of positions P (0 .. P-1).
        dim: Encoding width; odd widths drop the last cosine column.

    Returns:
        (P, dim) encodings.
    """
    position = torch.arange(num_positions, device=device, dtype=torch.float64)
    position = position.unsqueeze(1)  # (P, 1)
    even_idx = torch.arange(0, dim, 2, device=device, dtype=torch.float64)  # (ceil(dim/2),)
    angle = position * torch.exp(-math.log(10000.0) * even_idx / dim)  # (P, ceil(dim/2))
    pe = torch.zeros(num_positions, dim, device=device, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return pe.to(dtype)


class ContextGating(nn.Module):
    """Context gating, ``y = x ⊙ σ(W x + b)`` (Miech et al., "Learnable pooling with context
    gating for video classification", 2017, §3.2): the "gated non-linearity" separating the
    layers of STAN's three-layer classifier h (STAN §3 "Fusion and Classification", Eq. 5).

    Args:
        dim: Width D of the input and output.

    Forward:
        (..., D) → (..., D).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate(x))


class CollaborativeGating(nn.Module):
    """Collaborative gating of expert embeddings (Liu et al., "Use What You Have: Video Retrieval
    Using Representations from Collaborative Experts", BMVC 2019, §3.1, Eq. 1–2), STAN's "Gated
    Fusion" (STAN §3 last paragraph, Tab. 1/4; STAN cites it as [5]/[35])::

        T_i = h(Σ_{j≠i} g([E_i; E_j])),   Ê_i = E_i ⊙ σ(T_i)

    Each expert (here: each STAN stream) is re-weighted per dimension by a gate computed from its
    pairwise relations with the other experts; g and h are two-layer MLPs (ReLU, as in the
    relation networks CE builds on), shared by all pairs.

    Args:
        dim: Width D of each expert embedding.
        hidden_dim: Hidden width of g and h; defaults to ``dim`` (not stated in STAN).

    Forward:
        A sequence of E (>= 2) tensors (B, D) → a list of E gated tensors (B, D).
    """

    def __init__(self, dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or dim
        self.g = nn.Sequential(
            nn.Linear(2 * dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim)
        )
        self.h = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))

    def forward(self, experts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(experts) < 2:
            raise ValueError(f"collaborative gating needs at least 2 experts, got {len(experts)}")
        gated = []
        for i, e_i in enumerate(experts):
            relation = sum(
                self.g(torch.cat([e_i, e_j], dim=-1))  # (B, 2D) -> (B, D)
                for j, e_j in enumerate(experts)
                if j != i
            )
            gated.append(e_i * torch.sigmoid(self.h(relation)))
        return gated


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, temperature: float, kind: str,
    hard: bool = False,
) -> torch.Tensor:
    """Distillation of ``student`` towards a fixed ``teacher``: soft (Hinton et al. 2015, §2) or
    hard-label (Touvron et al., "Training data-efficient image transformers & distillation
    through attention" (DeiT), ICML 2021, §4, STAN's [49]).

    Args:
        student: (B, K) student outputs.
        teacher: (B, K) teacher outputs (detached by the caller).
        temperature: τ of the soft losses; logits are divided by τ and the loss multiplied by τ²
            so that gradient magnitudes do not depend on τ (Hinton et al. §2). Unused when
            ``hard`` and for ``mse``.
        kind: ``kl`` — KL(softmax(t/τ) ‖ softmax(s/τ)), for classification; ``bce`` — per-class
            binary KL between sigmoid(t/τ) and sigmoid(s/τ), for multilabel; ``mse`` — mean
            squared difference of the raw outputs, for regression.
        hard: The teacher's decision as the label (DeiT §4 "hard-label distillation",
            ``L_CE(ψ(Z_s), y_t)``, ``y_t = argmax_c Z_t(c)``): ``kl`` becomes cross-entropy on
            the teacher's argmax, ``bce`` binary cross-entropy on the teacher's positives
            (logit > 0, longvid's multilabel reading of the argmax); ``mse`` is unchanged.

    Returns:
        Scalar loss; for the soft losses 0 when student and teacher agree.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind not in ("kl", "bce"):
        raise ValueError(f"distillation loss kind must be kl, bce or mse, got {kind!r}")
    if hard:
        if kind == "kl":
            return F.cross_entropy(student, teacher.argmax(dim=-1))
        return F.binary_cross_entropy_with_logits(student, (teacher > 0).to(student.dtype))
    s, t = student / temperature, teacher / temperature
    if kind == "kl":
        loss = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True,
                        reduction="batchmean")
    else:
        target = torch.sigmoid(t)
        # Cross-entropy minus the teacher's own entropy: the binary KL, 0 at agreement.
        loss = F.binary_cross_entropy_with_logits(s, target) - F.binary_cross_entropy_with_logits(
            t, target
        )
    return loss * temperature**2


class StreamEncoder(nn.Module):
    """One STAN stream (STAN §3, Eq. 1 temporal, Eq. 3 spatial, Eq. 4): scene tokens → linear
    projection to d_model → ``[z_cls, x̂_0, …, x̂_n] + p`` → transformer encoder layers.

    The layers are the encoder of Vaswani et al. [53] (STAN §3: "we implement the transformer
    model introduced in [53]"): multi-head self-attention, then "summed with the input embedding
    matrix via a residual connection and normalised using Layer Normalisation", then the
    feed-forward block with the second residual and LayerNorm — post-LN,
    ``LN(x + SA(x))``, ``LN(x + FFN(x))`` (``norm="post"``). ``norm="pre"`` is the pre-LN
    block ``x + SA(LN x)``, ``x + FFN(LN x)`` with a final LayerNorm (in no STAN text; it
    trains without a tuned warm-up).

    Not stated in STAN, and chosen here: the projection (STAN gives z_cls "the same dimension
    as t̂_i" and d_model is "a common dimension for both the spatial and temporal tokens", so
    backbone features of another width need one; a Linear); the CLS init (trunc-normal, std
    0.02, as ViT/DeiT; STAN: "randomly initialised"); dropout on the embedded sequence
    (Vaswani et al. §5.4); and, with ``distillation_token``, where that token sits (after the
    CLS, as DeiT §4) and that it gets no positional code (a learned vector: a constant code
    would only shift its initialisation).

    Args:
        in_dim: Feature dim D_i of the stream's tokens.
        d_model: Transformer width.
        num_heads: Attention heads per layer.
        ff_dim: Width of each layer's feed-forward block.
        num_layers: Transformer encoder layers.
        dropout: Dropout in the encoder layers and on the input sequence.
        norm: ``post`` (STAN §3, Vaswani et al. §3.1) or ``pre``.
        activation: Feed-forward non-linearity, ``relu`` (Vaswani et al. §3.3 Eq. 2) or
            ``gelu``.
        distillation_token: Prepend a learned distillation token after the CLS (DeiT §4).

    Raises:
        ValueError: unknown ``norm`` or ``activation``.
    """

    def __init__(
        self, *, in_dim: int, d_model: int, num_heads: int, ff_dim: int, num_layers: int,
        dropout: float, norm: str = "post", activation: str = "relu",
        distillation_token: bool = False,
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"stan: norm must be post or pre, got {norm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"stan: activation must be relu or gelu, got {activation!r}")
        self.proj = nn.Linear(in_dim, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.dist_token: nn.Parameter | None = None
        if distillation_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, d_model))
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        self.num_prefix = 1 + distillation_token
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ff_dim, dropout, activation=activation, batch_first=True,
            norm_first=norm == "pre",
        )
        # Pre-LN leaves its output un-normalised, hence a final LayerNorm; post-LN ends on one.
        # Nested tensors off: padded batches stay dense, so padding provably changes nothing.
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model) if norm == "pre" else None,
            enable_nested_tensor=False,
        )

    def _embed(self, x: torch.Tensor, mask: torch.Tensor, pe: torch.Tensor):
        """The embedded sequence (B, P + T, d_model) and the keys to ignore (B, P + T), with P
        prefix tokens (CLS, and the distillation token if any)."""
        batch, num_tokens = mask.shape
        # Zero padding before the projection so that NaN/inf padding cannot reach the attention
        # values (masked keys get weight 0, and 0 * NaN is NaN).
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        tokens = self.proj(x) + pe[1 : num_tokens + 1]  # (B, T, d_model), scene i at row i + 1
        prefix = [self.cls_token + pe[:1]]  # Eq. 1/3: p_0 goes to the CLS
        if self.dist_token is not None:
            prefix.append(self.dist_token)
        prefix = torch.cat(prefix, dim=1).expand(batch, -1, -1)  # (B, P, d_model)
        seq = torch.cat([prefix, tokens], dim=1)  # (B, P + T, d_model)
        # src_key_padding_mask is True where attention must *ignore* a key; the prefix is real.
        real = torch.ones(batch, self.num_prefix, dtype=torch.bool, device=mask.device)
        return seq, ~torch.cat([real, mask], dim=1)

    def tokens(self, x: torch.Tensor, mask: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        """Outputs of the prefix tokens.

        Args:
            x: (B, T, D_i) tokens.
            mask: (B, T) bool, True at real tokens.
            pe: (>= T + 1, d_model) positional encodings; row 0 goes to the CLS token.

        Returns:
            (B, P, d_model): the CLS output, then the distillation token's if any.
        """
        seq, ignore = self._embed(x, mask, pe)
        out = self.encoder(self.dropout(seq), src_key_padding_mask=ignore)  # (B, P + T, d_model)
        return out[:, : self.num_prefix]  # (B, P, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        """CLS output of the stream, (B, d_model); arguments as :meth:`tokens`."""
        return self.tokens(x, mask, pe)[:, 0]  # (B, d_model)

    def cls_attention(self, x: torch.Tensor, mask: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        """(B, T) attention of the CLS on each scene in the last layer, averaged over heads (0 at
        padding); arguments as :meth:`tokens`. Call in eval mode."""
        seq, ignore = self._embed(x, mask, pe)
        for layer in self.encoder.layers[:-1]:
            seq = layer(seq, src_key_padding_mask=ignore)  # (B, P + T, d_model)
        last = self.encoder.layers[-1]
        h = last.norm1(seq) if last.norm_first else seq  # the last attention's input
        _, weights = last.self_attn(
            h[:, :1], h, h, key_padding_mask=ignore, need_weights=True, average_attn_weights=True
        )  # (B, 1, P + T)
        return weights[:, 0, self.num_prefix :]  # (B, T)

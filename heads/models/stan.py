"""STAN: the Spatio-Temporal Attention Network, a two-stream transformer over scene tokens.

Source: E. Fish, J. Weinbren, A. Gilbert, "Two-Stream Transformer Architecture for Long Form
Video Understanding", BMVC 2022 (arXiv:2208.01753), §3. One token per scene in each stream: the
spatial stream holds 2D-backbone features of each scene's centre frame (``resnet18``), the temporal
stream 3D-backbone features of frames sampled over the scene (``r2plus1d_18``).

Fusion variants (STAN Tab. 1 and 4 compare them with the weighted sum): ``stan_gated`` fuses
the streams with collaborative gating (Liu et al., BMVC 2019), ``stan_distill`` adds a
temporal-teacher → spatial-student logit distillation loss; both are documented on
:class:`STAN`.

What was checked where: STAN's §3 and Tables 1/4 could not be read here. Searched: the
``pages`` corpus for the title (both arXiv titles), "STAN fusion collaborative gating
distillation teacher student Table 4 MMX-Trailer-20" and the method's wording; an ar5iv copy of
arXiv:2208.01753 is stored but only its opening (abstract, start of §1) comes back; exact-string
search of the ``code`` corpus for "MMX-Trailer-20" and "Spatio-Temporal Attention Network
(STAN)" found no copy of the paper and no official code. So the two variants' exact form in
STAN is unverified (assumptions, listed on :class:`STAN`). Collaborative gating itself *was*
checked against its source text (Liu, Albanie, Nagrani, Zisserman, BMVC 2019, §3.1, Eq. 1–2,
stored in the ``code`` corpus): ``T_i = h(Σ_{j≠i} g(Ψ_i, Ψ_j))``, ``Ψ_i ∘ σ(T_i)``, g and h
MLPs shared by all pairs — as :class:`CollaborativeGating` computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from heads.models import register_head, stream_dims


def sinusoidal_encoding(
    num_positions: int, dim: int, *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Fixed sinusoidal positional encoding (Vaswani et al., NeurIPS 2017, §3.5).

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
    gating for video classification", 2017, §3.2): the gated non-linearity of STAN's classifier.

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
    Using Representations from Collaborative Experts", BMVC 2019, §3.1)::

        T_i = h(Σ_{j≠i} g([E_i; E_j])),   Ê_i = E_i ⊙ σ(T_i)

    Each expert (here: each STAN stream) is re-weighted per dimension by a gate computed from its
    pairwise relations with the other experts; g and h are two-layer MLPs (ReLU, as in the
    relation networks CE builds on).

    Args:
        dim: Width D of each expert embedding.
        hidden_dim: Hidden width of g and h; defaults to ``dim``.

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
    student: torch.Tensor, teacher: torch.Tensor, *, temperature: float, kind: str
) -> torch.Tensor:
    """Logit distillation of ``student`` towards a fixed ``teacher`` (Hinton et al. 2015, §2).

    Args:
        student: (B, K) student outputs.
        teacher: (B, K) teacher outputs (detached by the caller).
        temperature: τ; logits are divided by τ and the loss multiplied by τ² so that gradient
            magnitudes do not depend on τ (Hinton et al. §2).
        kind: ``kl`` — KL(softmax(t/τ) ‖ softmax(s/τ)), for classification; ``bce`` — per-class
            binary KL between sigmoid(t/τ) and sigmoid(s/τ), for multilabel; ``mse`` — mean
            squared difference of the raw outputs (τ unused), for regression.

    Returns:
        Scalar loss, 0 when student and teacher agree.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "mse":
        return F.mse_loss(student, teacher)
    s, t = student / temperature, teacher / temperature
    if kind == "kl":
        loss = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True,
                        reduction="batchmean")
    elif kind == "bce":
        target = torch.sigmoid(t)
        # Cross-entropy minus the teacher's own entropy: the binary KL, 0 at agreement.
        loss = F.binary_cross_entropy_with_logits(s, target) - F.binary_cross_entropy_with_logits(
            t, target
        )
    else:
        raise ValueError(f"distillation loss kind must be kl, bce or mse, got {kind!r}")
    return loss * temperature**2


class StreamEncoder(nn.Module):
    """One STAN stream: linear projection, learned CLS token, transformer encoder (STAN §3).

    Args:
        in_dim: Feature dim D_i of the stream's tokens.
        d_model: Transformer width.
        num_heads: Attention heads per layer.
        ff_dim: Width of each layer's feed-forward block.
        num_layers: Transformer encoder layers.
        dropout: Dropout in the encoder layers and on the input sequence.
    """

    def __init__(
        self, *, in_dim: int, d_model: int, num_heads: int, ff_dim: int, num_layers: int,
        dropout: float,
    ):
        super().__init__()
        self.proj = nn.Linear(in_dim, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.dropout = nn.Dropout(dropout)
        # Pre-norm layers train stably without a learning-rate warm-up tuned per dataset.
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ff_dim, dropout, activation="gelu", batch_first=True,
            norm_first=True,
        )
        # A final LayerNorm because pre-norm layers leave their output un-normalised; nested
        # tensors off since they do not apply to pre-norm layers anyway.
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        """CLS output of the stream.

        Args:
            x: (B, T, D_i) tokens.
            mask: (B, T) bool, True at real tokens.
            pe: (>= T + 1, d_model) positional encodings; row 0 goes to the CLS token.

        Returns:
            (B, d_model).
        """
        batch, num_tokens = mask.shape
        # Zero padding before the projection so that NaN/inf padding cannot reach the attention
        # values (masked keys get weight 0, and 0 * NaN is NaN).
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        tokens = self.proj(x)  # (B, T, d_model)
        cls = self.cls_token.expand(batch, -1, -1)  # (B, 1, d_model)
        seq = torch.cat([cls, tokens], dim=1) + pe[: num_tokens + 1]  # (B, 1 + T, d_model)
        # src_key_padding_mask is True where attention must *ignore* a key; the CLS is real.
        cls_real = torch.ones(batch, 1, dtype=torch.bool, device=mask.device)  # (B, 1)
        ignore = ~torch.cat([cls_real, mask], dim=1)  # (B, 1 + T)
        out = self.encoder(self.dropout(seq), src_key_padding_mask=ignore)  # (B, 1 + T, d_model)
        return out[:, 0]  # (B, d_model)

    def cls_attention(self, x: torch.Tensor, mask: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        """(B, T) attention of the CLS on each token in the last layer, averaged over heads (0 at
        padding); arguments as :meth:`forward`. Call in eval mode."""
        batch, num_tokens = mask.shape
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        cls = self.cls_token.expand(batch, -1, -1)  # (B, 1, d_model)
        seq = torch.cat([cls, self.proj(x)], dim=1) + pe[: num_tokens + 1]  # (B, 1 + T, d_model)
        cls_real = torch.ones(batch, 1, dtype=torch.bool, device=mask.device)
        ignore = ~torch.cat([cls_real, mask], dim=1)  # (B, 1 + T)
        for layer in self.encoder.layers[:-1]:
            seq = layer(seq, src_key_padding_mask=ignore)  # (B, 1 + T, d_model)
        last = self.encoder.layers[-1]
        h = last.norm1(seq)  # pre-norm: the last attention's input
        _, weights = last.self_attn(
            h[:, :1], h, h, key_padding_mask=ignore, need_weights=True, average_attn_weights=True
        )  # (B, 1, 1 + T)
        return weights[:, 0, 1:]  # (B, T)


FUSIONS = ("sum", "gated", "distill")
# The distillation loss matching each task kind's own loss (softmax CE, sigmoid BCE, MSE).
DISTILL_LOSS_FOR_KIND = {"classification": "kl", "multilabel": "bce", "regression": "mse"}


@register_head("stan")
class STAN(nn.Module):
    """Spatio-Temporal Attention Network (Fish et al., BMVC 2022, §3).

    Per stream s ∈ {spatial, temporal}: tokens (B, T_s, D_s) → Linear to d_model → prepend a
    learned CLS token → add the *shared* sinusoidal positional encoding (Vaswani et al. 2017 §3.5;
    the same code for scene t in both streams, so position means scene index) → 2 transformer
    encoder layers → z_s, z_t = the CLS outputs, (B, d_model) each. Fusion (STAN §3)::

        z = LayerNorm(q(z_s) + λ · q(z_t)),   λ = ``fusion_weight`` = 0.6

    with q one *shared* one-hidden-layer MLP (Linear → GELU → Linear). Then a three-layer MLP
    classifier whose hidden layers use the gated non-linearity context gating
    (``y = x ⊙ σ(W x + b)``, Miech et al. 2017): Linear → CG → Dropout → Linear → CG → Dropout →
    Linear.

    Fusion variants (STAN Tab. 1/4; their exact form in STAN is unverified, see the module
    docstring; what follows are this repository's assumptions):

    - ``fusion="gated"`` (registered as ``stan_gated``): collaborative gating (Liu et al. 2019
      §3.1) replaces the weighted sum: ``[ĝ_s, ĝ_t] = CG([q(z_s), q(z_t)])``,
      ``z = LayerNorm(ĝ_s + ĝ_t)``; the learned, input-dependent gates take the role of λ.
    - ``fusion="distill"`` (registered as ``stan_distill``): the output is the weighted-sum
      fusion above; in training the head also sets ``self.aux_loss`` to
      ``distill_weight · distillation_loss(student, teacher.detach())``, where the student and
      teacher are the shared classifier applied to one stream alone,
      ``classifier(LayerNorm(q(z_s)))`` (spatial student) and ``classifier(LayerNorm(q(z_t)))``
      (temporal teacher). A standard logit distillation (Hinton et al. 2015), not verified
      against STAN's own recipe; the head sees no targets, so the teacher learns only through
      the fused output. ``aux_loss`` is None in eval mode and for the other fusions; the trainer
      adds it to the task loss when it is a tensor.

    Args:
        in_dim: (D_spatial, D_temporal), or one D for both streams.
        num_outputs: K classes, or 1 for regression.
        d_model: Transformer width.
        num_heads: Attention heads per layer.
        ff_dim: Feed-forward width of each encoder layer.
        num_layers: Encoder layers per stream (2 in the paper).
        dropout: Dropout in the encoders and the classifier.
        fusion_weight: λ, the weight of the temporal stream in the fusion (``sum``, ``distill``).
        q_hidden_dim: Hidden width of q; defaults to d_model.
        classifier_hidden_dim: Hidden width of the classifier; defaults to d_model.
        fusion: ``sum`` (the paper's), ``gated`` or ``distill``; defaults to the registered
            variant's (``default_fusion``).
        gating_hidden_dim: Hidden width of collaborative gating's MLPs; defaults to d_model.
        distill_weight: Weight of the distillation loss in ``aux_loss``.
        distill_temperature: τ of the distillation loss.
        distill_loss: ``kl`` (classification), ``bce`` (multilabel) or ``mse`` (regression);
            None picks it from ``task_kind``, or, without one, ``mse`` for one output and
            ``kl`` otherwise.
        task_kind: ``classification``, ``multilabel`` or ``regression``; the trainer passes
            the task's kind (``uses_task_kind``), so ``distill_loss`` needs no flag.

    Forward:
        ``forward(x_spatial, mask_spatial, x_temporal, mask_temporal)`` with x (B, T_s, D_s),
        (B, T_t, D_t) and bool masks (B, T_s), (B, T_t), True at real tokens; T_s and T_t may
        differ. Returns (B, K).

    Raises:
        ValueError: unknown ``fusion``, ``distill_loss`` or ``task_kind``; d_model not divisible
            by num_heads.
    """

    streams: tuple[str, ...] = ("spatial", "temporal")
    default_fusion = "sum"
    # create_head passes the task's kind: the distillation loss depends on it.
    uses_task_kind = True

    def __init__(
        self,
        *,
        in_dim: int | Sequence[int],
        num_outputs: int,
        d_model: int = 512,
        num_heads: int = 8,
        ff_dim: int = 2048,
        num_layers: int = 2,
        dropout: float = 0.1,
        fusion_weight: float = 0.6,
        q_hidden_dim: int | None = None,
        classifier_hidden_dim: int | None = None,
        fusion: str | None = None,
        gating_hidden_dim: int | None = None,
        distill_weight: float = 1.0,
        distill_temperature: float = 2.0,
        distill_loss: str | None = None,
        task_kind: str | None = None,
    ):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"stan: d_model {d_model} is not divisible by num_heads {num_heads}")
        self.fusion = fusion or self.default_fusion
        if self.fusion not in FUSIONS:
            raise ValueError(f"stan: fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if task_kind is not None and task_kind not in DISTILL_LOSS_FOR_KIND:
            raise ValueError(
                f"stan: task_kind must be one of {', '.join(DISTILL_LOSS_FOR_KIND)}, "
                f"got {task_kind!r}"
            )
        if distill_loss is None and task_kind is not None:
            distill_loss = DISTILL_LOSS_FOR_KIND[task_kind]
        self.distill_loss = distill_loss or ("mse" if num_outputs == 1 else "kl")
        if self.distill_loss not in ("kl", "bce", "mse"):
            raise ValueError(f"stan: distill_loss must be kl, bce or mse, got {distill_loss!r}")
        dims = stream_dims("stan", in_dim, len(self.streams))
        self.d_model = d_model
        self.fusion_weight = float(fusion_weight)
        self.distill_weight = float(distill_weight)
        self.distill_temperature = float(distill_temperature)
        self.aux_loss: torch.Tensor | None = None
        self.spatial = StreamEncoder(
            in_dim=dims[0], d_model=d_model, num_heads=num_heads, ff_dim=ff_dim,
            num_layers=num_layers, dropout=dropout,
        )
        self.temporal = StreamEncoder(
            in_dim=dims[1], d_model=d_model, num_heads=num_heads, ff_dim=ff_dim,
            num_layers=num_layers, dropout=dropout,
        )
        q_hidden_dim = q_hidden_dim or d_model
        self.q = nn.Sequential(
            nn.Linear(d_model, q_hidden_dim), nn.GELU(), nn.Linear(q_hidden_dim, d_model)
        )
        if self.fusion == "gated":
            self.gating = CollaborativeGating(d_model, gating_hidden_dim)
        self.fusion_norm = nn.LayerNorm(d_model)
        hidden = classifier_hidden_dim or d_model
        self.classifier = nn.Sequential(
            nn.Linear(d_model, hidden),
            ContextGating(hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            ContextGating(hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_outputs),
        )

    def forward(
        self,
        x_spatial: torch.Tensor,
        mask_spatial: torch.Tensor,
        x_temporal: torch.Tensor,
        mask_temporal: torch.Tensor,
    ) -> torch.Tensor:
        num_positions = max(x_spatial.shape[1], x_temporal.shape[1]) + 1  # + 1 for the CLS
        pe = sinusoidal_encoding(
            num_positions, self.d_model, device=x_spatial.device, dtype=x_spatial.dtype
        )  # (1 + max(T_s, T_t), d_model), shared by both streams
        z_s = self.spatial(x_spatial, mask_spatial, pe)  # (B, d_model)
        z_t = self.temporal(x_temporal, mask_temporal, pe)  # (B, d_model)
        q_s, q_t = self.q(z_s), self.q(z_t)  # (B, d_model) each
        self.aux_loss = None
        if self.fusion == "gated":
            gated_s, gated_t = self.gating([q_s, q_t])
            return self.classifier(self.fusion_norm(gated_s + gated_t))  # (B, K)
        out = self.classifier(self.fusion_norm(q_s + self.fusion_weight * q_t))  # (B, K)
        if self.fusion == "distill" and self.training:
            student = self.classifier(self.fusion_norm(q_s))  # (B, K)
            teacher = self.classifier(self.fusion_norm(q_t)).detach()  # (B, K)
            self.aux_loss = self.distill_weight * distillation_loss(
                student, teacher, temperature=self.distill_temperature, kind=self.distill_loss
            )
        return out

    def cls_attention(
        self,
        x_spatial: torch.Tensor,
        mask_spatial: torch.Tensor,
        x_temporal: torch.Tensor,
        mask_temporal: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of each stream's CLS token on that stream's scenes in its last layer,
        averaged over heads: ((B, T_s), (B, T_t)), 0 at padding. Call in eval mode."""
        num_positions = max(x_spatial.shape[1], x_temporal.shape[1]) + 1
        pe = sinusoidal_encoding(
            num_positions, self.d_model, device=x_spatial.device, dtype=x_spatial.dtype
        )  # (1 + max(T_s, T_t), d_model)
        return (self.spatial.cls_attention(x_spatial, mask_spatial, pe),
                self.temporal.cls_attention(x_temporal, mask_temporal, pe))


@register_head("stan_gated")
class STANGated(STAN):
    """``stan`` with collaborative-gating fusion (``fusion="gated"``); see :class:`STAN`."""

    default_fusion = "gated"


@register_head("stan_distill")
class STANDistill(STAN):
    """``stan`` with temporal → spatial logit distillation (``fusion="distill"``); see
    :class:`STAN`."""

    default_fusion = "distill"

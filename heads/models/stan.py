"""STAN: the Spatio-Temporal Attention Network, a two-stream transformer over scene tokens.

Source: E. Fish, J. Weinbren, A. Gilbert, "Two-Stream Transformer Architecture for Long Form
Video Understanding", BMVC 2022 (arXiv:2208.01753; ``shared/papers/stan.txt``). Checked against
§3 (method, Eq. 1–5), §4 (implementation, metrics) and Tables 1 and 4.

Inputs (STAN §3 "Overview", "Spatial and Temporal Tokens"): one token per scene in each stream.
The spatial stream holds 2D-backbone features of each scene's centre frame (ResNet18, ImageNet),
the temporal stream 3D-backbone features of 12 frames sampled uniformly over the scene
(R(2+1)D, Kinetics-400): in longvid the ``scene`` plan with ``resnet18`` and ``r2plus1d_18``,
the paper's own backbones (§3, Tab. 1 "ResNet18 + R2+1D"). The scene cuts (§3: "changes in
average frame intensity/brightness using a running average over RGB video channels") are the
extractor's: see :mod:`pipeline.scenes` for which PySceneDetect detector comes closest.

Sizes (STAN §3 "Fusion and Classification", Fig. 2, Tab. 4). The paper reports trainable
parameters: STAN-Small 45 M (both transformer streams and the ResNet18, stop-gradient at the 3D
CNN), STAN-Large 92.5 M (both CNNs trained too). Tab. 4 adds: one stream without back-prop into
its CNN 16.5 M; spatial with back-prop 28 M (16.5 + ResNet18's 11.7 M); temporal with back-prop
48 M (16.5 + R(2+1)D-18's 31.5 M); distillation network 44.5 M (= 28 + 16.5); gated fusion 45 M.
The width, number of heads and FFN width are not stated; the defaults here, d_model 768, 12
heads (d_k = 64 as in Vaswani et al. [53] §3.2.2) and FFN 3072 = 4 · d_model, fit the counts:

- ``create_head("stan", in_dim=(512, 512), num_outputs=20)`` (ResNet18 + R(2+1)D-18 features,
  MMX-Trailer-20's 20 genres) has 32,701,460 trainable parameters; with the ResNet18 trunk
  (torchvision, no fc: 11,176,512) STAN-Small trains 43,877,972, 0.975 × the paper's 45 M.
  One stream with q and the classifier: 18,130,964, 1.10 × Tab. 4's 16.5 M.
- STAN-Large adds the R(2+1)D-18 trunk (31,300,125): 75,178,097, 0.81 × the paper's 92.5 M.
  The paper's figure is not reachable with its own backbones: Tab. 4 puts R(2+1)D at
  48 − 16.5 = 31.5 M, yet §3 has STAN-Large add "48 Million" — Tab. 4's "Temporal with
  backprop" total, which includes a 16.5 M transformer stream — so 45 + 48 ≈ 92.5 M appears to
  count that stream twice.

Variants (STAN §3 last paragraph: "we experiment with a number of additional methods for fusion
including collaborative gating [5] and distillation [25]"; Tab. 1, Tab. 4): ``stan_gated`` and
``stan_distill``, documented on :class:`STAN`. The blocks are in :mod:`heads.models.stan_blocks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from heads.models import register_head, stream_dims
from heads.models.stan_blocks import (
    CollaborativeGating,
    ContextGating,
    StreamEncoder,
    distillation_loss,
    sinusoidal_encoding,
)

__all__ = ["STAN", "STANDistill", "STANGated", "CollaborativeGating", "ContextGating",
           "StreamEncoder", "distillation_loss", "sinusoidal_encoding"]

FUSIONS = ("sum", "gated", "distill")
DISTILLATIONS = ("token", "logit")
DISTILL_TARGETS = ("hard", "soft")
# The distillation loss matching each task kind's own loss (softmax CE, sigmoid BCE, MSE).
DISTILL_LOSS_FOR_KIND = {"classification": "kl", "multilabel": "bce", "regression": "mse"}


@register_head("stan")
class STAN(nn.Module):
    """Spatio-Temporal Attention Network (Fish et al., BMVC 2022, §3).

    Per stream s ∈ {spatial, temporal}: tokens (B, T_s, D_s) → Linear to d_model → prepend a
    learned CLS token → add the *shared* sinusoidal positional encoding (Eq. 1–3: "the
    positional information is shared between the spatial and temporal tokens", so position
    means scene index) → 2 transformer encoder layers (Fig. 2; post-LN as in [53], see
    :class:`~heads.models.stan_blocks.StreamEncoder`) → z_s, z_t = the CLS outputs (§3: "we
    only apply the final classification MLP to the temporal and spatial transformer
    classification tokens"), (B, d_model) each. Fusion and classifier (Eq. 5)::

        out = h(Norm(q(z_s) + λ · q(z_t))),   λ = ``fusion_weight`` = 0.6

    q is one MLP with one hidden layer shared by both streams (§3; its non-linearity is not
    stated: GELU); Norm a LayerNorm; h the "three-layer MLP separated by a gated
    non-linearity": Linear → context gating → Dropout → Linear → context gating → Dropout →
    Linear (the gating is Miech et al.'s context gating, STAN [38]/[39]; dropout not stated).
    §3's text and Fig. 2 also put a normalisation before q; with post-LN blocks the CLS outputs
    already end on a LayerNorm, so both that and Eq. 5's Norm after the sum are in place. Eq. 5's
    loss, BCE, is the trainer's loss for multilabel tasks (MMX genres); other kinds get theirs.

    Variants (§3, Tab. 1/4; their exact form is not stated beyond what is cited):

    - ``fusion="gated"`` (registered as ``stan_gated``; Tab. 4 "Gated Fusion", 45 M):
      collaborative gating (Liu et al. 2019 §3.1) replaces the weighted sum:
      ``[ĝ_s, ĝ_t] = CG([q(z_s), q(z_t)])``, ``out = h(Norm(ĝ_s + ĝ_t))``; the learned,
      input-dependent gates take the role of λ. What is gated is not stated.
    - ``fusion="distill"`` (registered as ``stan_distill``; Tab. 1 "Distillation [45, 49]",
      Tab. 4 "Distillation Network", 44.5 M). §4: "distillation as described in [49] [DeiT,
      Touvron et al. 2021], using the temporal transformer encoder as a teacher network to the
      spatial transformer". ``distillation="token"`` (default) is DeiT's §4 distillation
      token: the spatial (student) encoder gets a second learned token; its output goes through
      q, Norm and its own classifier h_dist (DeiT's separate distillation head) to y_dist,
      trained on the temporal stream's prediction y_t = h(Norm(q(z_t))) (the teacher, detached):
      ``aux_loss = distill_weight · L(y_dist, y_t)``, hard labels by default (DeiT §4
      "hard-label distillation", its referent; ``distill_targets="soft"`` for the τ-softened
      loss). In eval the prediction is the student's, DeiT's late fusion of its two tokens,
      ``(h(Norm(q(z_cls))) + y_dist) / 2`` (the official DeiT code averages the logits); the
      temporal stream is not run. Deviation: DeiT's teacher is trained beforehand and frozen,
      and its class token learns from the labels alone; this head sees no labels (the trainer
      applies the task loss to its output), so in training it returns
      ``(h(Norm(q(z_cls))) + y_t) / 2``: the label loss trains the class token and the
      teacher together, and the distillation token learns to stand in for the teacher at test
      time. Whether STAN trained its teacher first is not stated (Tab. 4's 44.5 M = 28 + 16.5
      counts both streams as trainable). ``distillation="logit"`` is longvid's earlier form,
      kept as an option: the output is the Eq. 5 fusion, and ``aux_loss`` is the soft
      distillation (Hinton et al. 2015 [25]) of ``h(Norm(q(z_s)))`` towards
      ``h(Norm(q(z_t)))``, detached.
      ``aux_loss`` is None in eval mode and for the other fusions; the trainer adds it to the
      task loss when it is a tensor.

    Args:
        in_dim: (D_spatial, D_temporal), or one D for both streams.
        num_outputs: K classes, or 1 for regression.
        d_model: Transformer width (not stated; 768 fits Tab. 4's counts, see the module).
        num_heads: Attention heads per layer (not stated; 12, d_k = 64 as in [53]).
        ff_dim: Feed-forward width of each encoder layer (not stated; 4 · d_model as in [53]).
        num_layers: Encoder layers per stream (2: Fig. 2).
        dropout: Dropout in the encoders and the classifier (not stated; [53]'s 0.1).
        norm: ``post`` (§3, [53]) or ``pre`` encoder blocks.
        activation: Feed-forward non-linearity of the encoder layers: ``relu`` ([53] §3.3,
            Eq. 2) or ``gelu``.
        fusion_weight: λ, the weight of the temporal stream in the fusion (Eq. 5: 0.6).
        q_hidden_dim: Hidden width of q; defaults to d_model (not stated).
        classifier_hidden_dim: Hidden width of h; defaults to d_model (not stated).
        fusion: ``sum`` (Eq. 5), ``gated`` or ``distill``; defaults to the registered
            variant's (``default_fusion``).
        gating_hidden_dim: Hidden width of collaborative gating's MLPs; defaults to d_model.
        distillation: ``token`` (DeiT, default) or ``logit``; only with ``fusion="distill"``.
        distill_weight: Weight of the distillation loss in ``aux_loss`` (1: DeiT's ½ · CE + ½ ·
            CE up to scale).
        distill_temperature: τ of the soft distillation loss.
        distill_targets: ``hard`` or ``soft``; None: ``hard`` for ``token`` (DeiT's referent),
            ``soft`` for ``logit``.
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
        ValueError: unknown ``norm``, ``activation``, ``fusion``, ``distillation``,
            ``distill_targets``, ``distill_loss`` or ``task_kind``; ``distillation`` without
            ``fusion="distill"``; d_model not divisible by num_heads.
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
        d_model: int = 768,
        num_heads: int = 12,
        ff_dim: int = 3072,
        num_layers: int = 2,
        dropout: float = 0.1,
        norm: str = "post",
        activation: str = "relu",
        fusion_weight: float = 0.6,
        q_hidden_dim: int | None = None,
        classifier_hidden_dim: int | None = None,
        fusion: str | None = None,
        gating_hidden_dim: int | None = None,
        distillation: str | None = None,
        distill_weight: float = 1.0,
        distill_temperature: float = 2.0,
        distill_targets: str | None = None,
        distill_loss: str | None = None,
        task_kind: str | None = None,
    ):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"stan: d_model {d_model} is not divisible by num_heads {num_heads}")
        self.fusion = fusion or self.default_fusion
        self._check_distillation(distillation, distill_targets, distill_loss, task_kind)
        self.distillation = (distillation or "token") if self.fusion == "distill" else None
        self.distill_targets = distill_targets or (
            "hard" if self.distillation == "token" else "soft")
        if distill_loss is None and task_kind is not None:
            distill_loss = DISTILL_LOSS_FOR_KIND[task_kind]
        self.distill_loss = distill_loss or ("mse" if num_outputs == 1 else "kl")
        dims = stream_dims("stan", in_dim, len(self.streams))
        self.d_model = d_model
        self.fusion_weight = float(fusion_weight)
        self.distill_weight = float(distill_weight)
        self.distill_temperature = float(distill_temperature)
        self.aux_loss: torch.Tensor | None = None
        encoder = dict(d_model=d_model, num_heads=num_heads, ff_dim=ff_dim,
                       num_layers=num_layers, dropout=dropout, norm=norm, activation=activation)
        self.spatial = StreamEncoder(in_dim=dims[0], distillation_token=self.distillation
                                     == "token", **encoder)
        self.temporal = StreamEncoder(in_dim=dims[1], **encoder)
        q_hidden_dim = q_hidden_dim or d_model
        self.q = nn.Sequential(
            nn.Linear(d_model, q_hidden_dim), nn.GELU(), nn.Linear(q_hidden_dim, d_model)
        )
        if self.fusion == "gated":
            self.gating = CollaborativeGating(d_model, gating_hidden_dim)
        self.fusion_norm = nn.LayerNorm(d_model)
        hidden = classifier_hidden_dim or d_model
        self.classifier = self._classifier(d_model, hidden, num_outputs, dropout)
        if self.distillation == "token":
            self.classifier_dist = self._classifier(d_model, hidden, num_outputs, dropout)

    def _check_distillation(self, distillation, distill_targets, distill_loss, task_kind):
        if self.fusion not in FUSIONS:
            raise ValueError(f"stan: fusion must be one of {', '.join(FUSIONS)}, "
                             f"got {self.fusion!r}")
        if distillation is not None and distillation not in DISTILLATIONS:
            raise ValueError(f"stan: distillation must be token or logit, got {distillation!r}")
        if distillation is not None and self.fusion != "distill":
            raise ValueError(f"stan: distillation={distillation!r} applies only with "
                             f"fusion='distill' (head stan_distill), not {self.fusion!r}")
        if distill_targets is not None and distill_targets not in DISTILL_TARGETS:
            raise ValueError(f"stan: distill_targets must be hard or soft, got "
                             f"{distill_targets!r}")
        if distill_loss is not None and distill_loss not in ("kl", "bce", "mse"):
            raise ValueError(f"stan: distill_loss must be kl, bce or mse, got {distill_loss!r}")
        if task_kind is not None and task_kind not in DISTILL_LOSS_FOR_KIND:
            raise ValueError(
                f"stan: task_kind must be one of {', '.join(DISTILL_LOSS_FOR_KIND)}, "
                f"got {task_kind!r}"
            )

    @staticmethod
    def _classifier(d_model: int, hidden: int, num_outputs: int, dropout: float) -> nn.Module:
        """h of Eq. 5: three Linear layers separated by context gating (§3)."""
        return nn.Sequential(
            nn.Linear(d_model, hidden),
            ContextGating(hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            ContextGating(hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_outputs),
        )

    def _positions(self, x_spatial: torch.Tensor, x_temporal: torch.Tensor) -> torch.Tensor:
        """(1 + max(T_s, T_t), d_model) encodings shared by both streams (Eq. 1–3)."""
        num_positions = max(x_spatial.shape[1], x_temporal.shape[1]) + 1  # + 1 for the CLS
        return sinusoidal_encoding(
            num_positions, self.d_model, device=x_spatial.device, dtype=x_spatial.dtype
        )

    def _predict(self, z: torch.Tensor, classifier: nn.Module | None = None) -> torch.Tensor:
        """One stream's (or token's) prediction h(Norm(q(z))), (B, d_model) → (B, K)."""
        return (classifier or self.classifier)(self.fusion_norm(self.q(z)))

    def forward(
        self,
        x_spatial: torch.Tensor,
        mask_spatial: torch.Tensor,
        x_temporal: torch.Tensor,
        mask_temporal: torch.Tensor,
    ) -> torch.Tensor:
        pe = self._positions(x_spatial, x_temporal)
        self.aux_loss = None
        if self.distillation == "token":
            return self._token_distillation(x_spatial, mask_spatial, x_temporal, mask_temporal,
                                            pe)
        z_s = self.spatial(x_spatial, mask_spatial, pe)  # (B, d_model)
        z_t = self.temporal(x_temporal, mask_temporal, pe)  # (B, d_model)
        q_s, q_t = self.q(z_s), self.q(z_t)  # (B, d_model) each
        if self.fusion == "gated":
            gated_s, gated_t = self.gating([q_s, q_t])
            return self.classifier(self.fusion_norm(gated_s + gated_t))  # (B, K)
        out = self.classifier(self.fusion_norm(q_s + self.fusion_weight * q_t))  # (B, K), Eq. 5
        if self.distillation == "logit" and self.training:
            student = self.classifier(self.fusion_norm(q_s))  # (B, K)
            teacher = self.classifier(self.fusion_norm(q_t)).detach()  # (B, K)
            self.aux_loss = self.distill_weight * distillation_loss(
                student, teacher, temperature=self.distill_temperature, kind=self.distill_loss,
                hard=self.distill_targets == "hard",
            )
        return out

    def _token_distillation(self, x_spatial, mask_spatial, x_temporal, mask_temporal, pe):
        """DeiT-style distillation token (see the class docstring); (B, K)."""
        z_cls, z_dist = self.spatial.tokens(x_spatial, mask_spatial, pe).unbind(1)  # (B, D) each
        y_cls = self._predict(z_cls)  # (B, K)
        y_dist = self._predict(z_dist, self.classifier_dist)  # (B, K)
        if not self.training:
            return (y_cls + y_dist) / 2  # DeiT's late fusion of the student's two heads
        y_t = self._predict(self.temporal(x_temporal, mask_temporal, pe))  # (B, K), teacher
        self.aux_loss = self.distill_weight * distillation_loss(
            y_dist, y_t.detach(), temperature=self.distill_temperature, kind=self.distill_loss,
            hard=self.distill_targets == "hard",
        )
        return (y_cls + y_t) / 2

    def cls_attention(
        self,
        x_spatial: torch.Tensor,
        mask_spatial: torch.Tensor,
        x_temporal: torch.Tensor,
        mask_temporal: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of each stream's CLS token on that stream's scenes in its last layer,
        averaged over heads: ((B, T_s), (B, T_t)), 0 at padding. Call in eval mode."""
        pe = self._positions(x_spatial, x_temporal)  # (1 + max(T_s, T_t), d_model)
        return (self.spatial.cls_attention(x_spatial, mask_spatial, pe),
                self.temporal.cls_attention(x_temporal, mask_temporal, pe))


@register_head("stan_gated")
class STANGated(STAN):
    """``stan`` with collaborative-gating fusion (``fusion="gated"``; STAN §3, Tab. 4 "Gated
    Fusion"); see :class:`STAN`."""

    default_fusion = "gated"


@register_head("stan_distill")
class STANDistill(STAN):
    """``stan`` with temporal-teacher → spatial-student distillation (``fusion="distill"``;
    STAN §4 "as described in [49]", Tab. 1/4): a DeiT distillation token by default,
    ``distillation="logit"`` for logit distillation; see :class:`STAN`."""

    default_fusion = "distill"

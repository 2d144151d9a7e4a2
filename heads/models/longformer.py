"""The ``longformer`` head: VTN's temporal encoder, Longformer attention over frame embeddings.

Sources (full texts in ``../shared/papers/``; official code read, not copied):

- VTN: D. Neimark, O. Bar, M. Zohar, D. Asselmann, "Video Transformer Network", ICCVW 2021
  (arXiv:2102.00719). §3.2: the backbone's d_backbone-dim frame features *are* the token
  embeddings (no projection), a [CLS] token in front, a Longformer with global attention on the
  [CLS]; §3.3: the [CLS] output → LN → Linear → GELU → Dropout → Linear; §4.1: hidden size and
  FFN size "a direct derivative of the spatial backbone" (768 / 3072 for ViT-B, 2048 / 4096 for
  R50/101), "effective attention window of size 32", attention dropout 0.1, Longformer and MLP
  head "randomly initialized from a normal distribution with zero mean and 0.02 std", learned
  position embeddings indexed by "the frame location (index) in the original video"; Tab. 2b:
  learned / fixed (DETR-style sine, temporal axis only) / no position embedding (the [CLS] keeps
  its position).
- Official code: ``bomri/SlowFast`` (``slowfast/models/video_model_builder.py`` class ``VTN``,
  ``slowfast/models/vtn_helper.py``, ``configs/Kinetics/VIT_B_VTN.yaml``): a HuggingFace
  ``LongformerModel`` with ``hidden_size`` = the backbone's ``embed_dim``, 12 heads, 3 layers,
  ``intermediate_size`` 3072, ``attention_window`` [18, 18, 18], dropouts 0.1,
  ``max_position_embeddings`` 288 with position = frame index mod 286, the [CLS] at position 286,
  padding at 287, token type 1 on the [CLS] and 0 elsewhere, LayerNorm eps 1e-12 (Longformer's
  default), HF's N(0, 0.02) init of the encoder, a ``torch.randn`` [CLS] and PyTorch-default
  MLP head with ``MODEL.DROPOUT_RATE`` 0.5 and ``MLP_DIM`` 768.
- Longformer: I. Beltagy, M. E. Peters, A. Cohan, "Longformer: The Long-Document Transformer",
  2020 (arXiv:2004.05150), §3.1: sliding-window attention of window w (w/2 keys on each side),
  plus *global* attention on chosen tokens (here the CLS): the global token attends to every
  token and every token attends to it, with separate projections Q_g, K_g, V_g for the global
  token's own attention.

Paper and official code differ in three places; ``variant`` picks one set (``official`` is the
default: the released model zoo's numbers come from that code):

| element | ``variant="official"`` | ``variant="paper"`` |
|---|---|---|
| window w | 18 (``ATTENTION_WINDOW``) | 32 (§4.1) |
| init | encoder N(0, 0.02), [CLS] N(0, 1), MLP head default | all N(0, 0.02) (§4.1) |
| token-type embedding | type 1 on the [CLS], 0 elsewhere | none (not stated) |

Shared by both (not stated in the paper, so the official values): MLP dropout 0.5, hidden
dropout 0.1, LayerNorm eps 1e-12 in the encoder, 288 position slots with the frame index taken
mod 286. Not stated anywhere, so chosen here: the frame index of a cached token is
``floor(mid_sec · frame_rate)`` at ``frame_rate`` 25 frames/s (the official config's
``TARGET_FPS``; the store keeps token times, not source frame numbers), so positions wrap every
286 / 25 = 11.44 s, as the official code's do on Kinetics; heads for backbones whose width is not
divisible by 12 use ``d_model / 64`` heads (R50's 2048 is not divisible by 12 either; the paper
states 12 only for ViT-B).

Window convention: ``window`` is Longformer's w, the *total* window: a token attends to the
w/2 tokens on each side, itself, and the CLS (w + 2 keys), as HuggingFace's ``attention_window``.

Memory is O(T·w): queries are cut into blocks of w/2 and each block attends to its own and its
two neighbouring key blocks (3·w/2 keys) through ``scaled_dot_product_attention`` over batched
blocks; no T × T matrix is ever formed. ``flex_attention`` was considered: on CPU in eager mode
it "materializes the full scores matrix" (PyTorch's own warning, checked with torch 2.15), and
``torch.compile(flex_attention)`` needs a C++ toolchain, ~30 s of compilation and a recompile
per new sequence length, so the blocked SDPA path is used everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from heads.models import register_head, stream_dims


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_mask: torch.Tensor,
    window: int,
    global_k: torch.Tensor | None = None,
    global_v: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Banded (sliding-window) attention plus attention to a few global keys, in O(T·w) memory.

    Query i attends to the keys j with ``|i - j| <= window // 2`` and ``key_mask[j]``, and to
    every global key (Longformer §3.1, "sliding window" + "global attention", as seen from the
    non-global tokens). A query whose allowed key set would be empty (a padded query with no
    global key) attends to itself only, so no row of the softmax is empty.

    Args:
        q: (B, H, T, d) queries.
        k: (B, H, T, d) keys.
        v: (B, H, T, d) values.
        key_mask: (B, T) bool, True at real tokens.
        window: Longformer's total window w (even, >= 2): w/2 keys on each side.
        global_k: (B, H, G, d) keys every query attends to (e.g. the CLS), or None.
        global_v: (B, H, G, d) their values.
        dropout_p: Attention dropout probability.

    Returns:
        (B, H, T, d) attention outputs.

    Raises:
        ValueError: ``window`` is odd or below 2.
    """
    if window < 2 or window % 2:
        raise ValueError(f"sliding_window_attention: window must be even and >= 2, got {window}")
    batch, heads, num_tokens, head_dim = q.shape
    half = window // 2  # block size c: queries of block j see key blocks j-1, j, j+1
    num_blocks = max(1, math.ceil(num_tokens / half))
    pad_end = num_blocks * half - num_tokens
    q_blocks = F.pad(q, (0, 0, 0, pad_end))  # (B, H, T_pad, d), T_pad = nb · c
    q_blocks = q_blocks.view(batch, heads, num_blocks, half, head_dim)  # (B, H, nb, c, d)
    # One block of zero keys before and after, so that every query block has three key blocks.
    k_padded = F.pad(k, (0, 0, half, pad_end + half))  # (B, H, T_pad + 2c, d)
    v_padded = F.pad(v, (0, 0, half, pad_end + half))  # (B, H, T_pad + 2c, d)
    k_blocks = k_padded.unfold(2, 3 * half, half).transpose(-1, -2)  # (B, H, nb, 3c, d)
    v_blocks = v_padded.unfold(2, 3 * half, half).transpose(-1, -2)  # (B, H, nb, 3c, d)
    real = F.pad(key_mask, (half, pad_end + half), value=False)  # (B, T_pad + 2c)
    real_blocks = real.unfold(1, 3 * half, half)  # (B, nb, 3c)

    # Query a of a block sits at key offset a + c of its 3c keys; the band is |a + c - b| <= c.
    offset = torch.arange(3 * half, device=q.device) - torch.arange(half, device=q.device)[:, None]
    band = (offset >= 0) & (offset <= 2 * half)  # (c, 3c)
    diagonal = offset == half  # (c, 3c): the query's own position
    allowed = band & (real_blocks.unsqueeze(2) | diagonal)  # (B, nb, c, 3c)
    if global_k is not None:
        num_global = global_k.shape[2]
        k_blocks = torch.cat(
            [global_k.unsqueeze(2).expand(-1, -1, num_blocks, -1, -1), k_blocks], dim=3
        )  # (B, H, nb, G + 3c, d)
        v_blocks = torch.cat(
            [global_v.unsqueeze(2).expand(-1, -1, num_blocks, -1, -1), v_blocks], dim=3
        )  # (B, H, nb, G + 3c, d)
        sees_global = allowed.new_ones(batch, num_blocks, half, num_global)  # (B, nb, c, G)
        allowed = torch.cat([sees_global, allowed], dim=-1)  # (B, nb, c, G + 3c)
        # A real query's own key is real, so `diagonal` only ever adds a padded query's own key.
    out = F.scaled_dot_product_attention(
        q_blocks, k_blocks, v_blocks, attn_mask=allowed.unsqueeze(1), dropout_p=dropout_p
    )  # (B, H, nb, c, d)
    out = out.reshape(batch, heads, num_blocks * half, head_dim)  # (B, H, T_pad, d)
    return out[:, :, :num_tokens]


class LongformerSelfAttention(nn.Module):
    """Longformer self-attention with one global token at index 0 (Beltagy et al. 2020 §3.1).

    Tokens 1..T use sliding-window attention (projections Q_s, K_s, V_s) plus attention to the
    global token's K_s/V_s; the global token attends to all tokens with its own projections
    Q_g, K_g, V_g. ``window=None`` gives full (dense) attention among all tokens instead, the
    same-size dense reference of ``bench/heads_longformer_vs_dense.py``.

    Args:
        d_model: Width.
        num_heads: Attention heads.
        window: Total sliding window w (w/2 per side), or None for dense attention.
        dropout: Attention-probability dropout.
    """

    def __init__(self, *, d_model: int, num_heads: int, window: int | None, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)  # Q_s, K_s, V_s
        # Q_g is only needed for the global token itself, K_g and V_g for every token.
        self.q_global = nn.Linear(d_model, d_model)
        self.kv_global = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """(B, L, parts · d_model) → ``parts`` tensors (B, H, L, d_head)."""
        batch, length, width = x.shape
        head_dim = width // (parts * self.num_heads)
        x = x.view(batch, length, parts, self.num_heads, head_dim)  # (B, L, parts, H, d_head)
        return x.permute(2, 0, 3, 1, 4).unbind(0)  # parts × (B, H, L, d_head)

    def _global_scores(self, h: torch.Tensor, mask: torch.Tensor):
        """The global token's query (B, H, 1, d), K_g and V_g (B, H, 1+T, d), mask (B,1,1,1+T)."""
        (q_g,) = self._heads(self.q_global(h[:, :1]), 1)  # (B, H, 1, d_head)
        k_g, v_g = self._heads(self.kv_global(h), 2)  # (B, H, 1+T, d_head) each
        real = F.pad(mask, (1, 0), value=True)  # (B, 1+T): the global token itself is real
        return q_g, k_g, v_g, real[:, None, None, :]

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1+T, d_model) with the global token at 0, mask (B, T) → (B, 1+T, d_model)."""
        batch, length, width = h.shape
        dropout_p = self.dropout if self.training else 0.0
        q, k, v = self._heads(self.qkv(h), 3)  # (B, H, 1+T, d_head) each
        if self.window is None:
            real = F.pad(mask, (1, 0), value=True)[:, None, None, :]  # (B, 1, 1, 1+T)
            # No mask lets SDPA pick its fused kernel; it changes nothing when all keys are real.
            attn_mask = None if bool(mask.all()) else real
            tokens = F.scaled_dot_product_attention(
                q[:, :, 1:], k, v, attn_mask=attn_mask, dropout_p=dropout_p
            )  # (B, H, T, d_head)
        else:
            tokens = sliding_window_attention(
                q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], key_mask=mask, window=self.window,
                global_k=k[:, :, :1], global_v=v[:, :, :1], dropout_p=dropout_p,
            )  # (B, H, T, d_head)
        q_g, k_g, v_g, real = self._global_scores(h, mask)
        cls = F.scaled_dot_product_attention(
            q_g, k_g, v_g, attn_mask=real, dropout_p=dropout_p
        )  # (B, H, 1, d_head)
        out = torch.cat([cls, tokens], dim=2)  # (B, H, 1+T, d_head)
        return self.out(out.transpose(1, 2).reshape(batch, length, width))  # (B, 1+T, d_model)

    def global_attention_weights(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Softmax weights of the global token over [itself, tokens], (B, H, 1+T); 0 at padding."""
        q_g, k_g, _, real = self._global_scores(h, mask)
        scores = q_g @ k_g.transpose(-1, -2) / math.sqrt(q_g.shape[-1])  # (B, H, 1, 1+T)
        scores = scores.masked_fill(~real, float("-inf"))
        return scores.softmax(dim=-1)[:, :, 0]  # (B, H, 1+T)


class LongformerLayer(nn.Module):
    """Post-norm encoder layer as in Longformer/RoBERTa: x = LN(x + Attn(x)); x = LN(x + FFN(x)).

    Args:
        d_model: Width.
        num_heads: Attention heads.
        ff_dim: Feed-forward width.
        window: Total sliding window, or None for dense attention.
        dropout: Dropout on attention probabilities and on both residual branches.
        eps: LayerNorm epsilon (Longformer's 1e-12).
    """

    def __init__(self, *, d_model: int, num_heads: int, ff_dim: int, window: int | None,
                 dropout: float, eps: float = 1e-12):
        super().__init__()
        self.attn = LongformerSelfAttention(
            d_model=d_model, num_heads=num_heads, window=window, dropout=dropout
        )
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), nn.GELU(), nn.Linear(ff_dim, d_model))
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(h + self.dropout(self.attn(h, mask)))
        return self.norm2(h + self.dropout(self.ff(h)))


VARIANTS = {
    # variant: (window, init, token-type embedding); see the module docstring's table.
    "official": (18, "official", True),
    "paper": (32, "paper", False),
}
POSITION_EMBEDDINGS = ("learned", "fixed", "none")  # VTN Tab. 2b
POSITIONS = ("frame_index", "token_index")


def default_ff_dim(d_model: int) -> int:
    """VTN §4.1's FFN size for a hidden size: 3072 for 768 (ViT-B), 4096 for 2048 (R50/101);
    other widths (not in the paper) get 4 · d_model, the ViT-B ratio."""
    return {768: 3072, 2048: 4096}.get(d_model, 4 * d_model)


def default_num_heads(d_model: int) -> int:
    """12 heads (VTN §5.1, ViT-B) where 12 divides the width, else one head per 64 channels."""
    return 12 if d_model % 12 == 0 else max(1, d_model // 64)


def fixed_position_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """DETR's sine encoding on one (temporal) axis (VTN §4.1 "fixed absolute encoding"):
    channel 2i is ``sin(p / 10000^(2i/dim))``, channel 2i+1 the matching cosine.

    Args:
        positions: (...) integer positions.
        dim: Encoding width.

    Returns:
        (..., dim) float32 encodings.
    """
    even = torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64)  # (ceil(dim/2),)
    angle = positions.double().unsqueeze(-1) / torch.pow(10000.0, even / dim)  # (..., ceil(d/2))
    pe = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)[..., :dim]  # interleaved
    return pe.float()


@register_head("longformer")
class LongformerHead(nn.Module):
    """VTN's temporal encoder and classifier (Neimark et al. 2021 §3, Fig. 1; module docstring).

    Frame embeddings (B, T, D) are the tokens (a Linear to ``d_model`` only when it differs from
    D, longvid's extension) → a [CLS] token in front → + position embeddings (+ token-type
    embeddings, official) → LayerNorm → Dropout (Longformer's embedding block) → ``num_layers``
    post-LN Longformer layers, sliding window ``window`` + global attention on the [CLS] → the
    [CLS] output → MLP head LN → Linear → GELU → Dropout → Linear (§3.3).

    Parameter counts with the backbone (VTN Tab. 3, ``heads list --paper``): ViT-B-VTN 1 / 3
    layers 95.8 M / 113.5 M (paper 96 / 114), R50-VTN 167.6 M (168), R101-VTN 186.6 M (187).

    Args:
        in_dim: Frame feature dim D.
        num_outputs: K classes, or 1 for regression.
        variant: ``official`` (default) or ``paper``: window, init and token type (module table).
        d_model: Width; None = D (VTN: the backbone's dim, no projection).
        num_heads: Attention heads; None = :func:`default_num_heads`.
        num_layers: Longformer layers (VTN Tab. 2a: 1, 3, 6, 12; 3 by default).
        ff_dim: Feed-forward width; None = :func:`default_ff_dim`.
        window: Total sliding window w (even; w/2 each side), None for full attention, or
            ``"auto"`` = the variant's (18 official, 32 paper).
        max_positions: Position slots, the [CLS]'s and the padding's included (official 288).
        positions: ``frame_index`` (VTN §4.1: the frame's index in the original video, from the
            token times, mod ``max_positions - 2``) or ``token_index`` (0 … T-1; for inputs
            without times, such as end-to-end batches).
        position_embedding: ``learned``, ``fixed`` or ``none`` (VTN Tab. 2b).
        frame_rate: Frames per second that turn a token's mid time into a frame index.
        mlp_dim: Hidden width of the MLP head; None = d_model (official ``MLP_DIM`` 768 = width).
        dropout: Hidden and attention dropout (0.1).
        mlp_dropout: Dropout of the MLP head (official ``MODEL.DROPOUT_RATE`` 0.5).
        layer_norm_eps: The encoder's LayerNorm epsilon (Longformer's 1e-12).

    Forward:
        ``forward(x, mask, times=None, times_mask=None)`` with x (B, T, D), mask (B, T) bool
        (True at real frames) and, for ``positions="frame_index"``, times (B, T, 2) float
        [start_sec, end_sec] of each token (the extra stream the training and evaluation code
        appends when ``uses_token_times`` is true); returns (B, K).

    Raises:
        ValueError: an unknown ``variant``/``positions``/``position_embedding``, a width not
            divisible by the heads, an odd window; in forward, ``frame_index`` positions without
            times, or more than ``max_positions - 2`` tokens with ``token_index`` positions.
    """

    streams: tuple[str, ...] = ("tokens",)
    # The arguments that make the head do without token times (end-to-end batches).
    without_token_times = (("positions", "token_index"),)

    def __init__(
        self,
        *,
        in_dim: int | Sequence[int],
        num_outputs: int,
        variant: str = "official",
        d_model: int | None = None,
        num_heads: int | None = None,
        num_layers: int = 3,
        ff_dim: int | None = None,
        window: int | str | None = "auto",
        max_positions: int = 288,
        positions: str = "frame_index",
        position_embedding: str = "learned",
        frame_rate: float = 25.0,
        mlp_dim: int | None = None,
        dropout: float = 0.1,
        mlp_dropout: float = 0.5,
        layer_norm_eps: float = 1e-12,
    ):
        super().__init__()
        for name, value, valid in (("variant", variant, VARIANTS), ("positions", positions,
                                   POSITIONS), ("position_embedding", position_embedding,
                                   POSITION_EMBEDDINGS)):
            if value not in valid:
                raise ValueError(f"longformer: {name} must be one of {', '.join(valid)}, "
                                 f"got {value!r}")
        variant_window, init, token_type = VARIANTS[variant]
        window = variant_window if window == "auto" else window
        (dim,) = stream_dims("longformer", in_dim, 1)
        d_model = d_model or dim
        num_heads = num_heads or default_num_heads(d_model)
        if d_model % num_heads:
            raise ValueError(
                f"longformer: d_model {d_model} is not divisible by num_heads {num_heads}"
            )
        if window is not None and (window < 2 or window % 2):
            raise ValueError(f"longformer: window must be even and >= 2 (or None), got {window}")
        if max_positions < 3:
            raise ValueError(f"longformer: max_positions must be >= 3, got {max_positions}")
        self.variant, self.window, self.positions = variant, window, positions
        self.position_kind, self.frame_rate = position_embedding, frame_rate
        self.max_positions = max_positions
        self.uses_token_times = positions == "frame_index"
        self.proj = nn.Linear(dim, d_model) if d_model != dim else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        if position_embedding == "learned":
            self.pos_embedding = nn.Embedding(max_positions, d_model)
        else:  # fixed or none: the [CLS] still gets a learned position (VTN §4.1)
            self.cls_position = nn.Parameter(torch.zeros(d_model))
        self.token_type = nn.Embedding(2, d_model) if token_type else None
        self.embed_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.embed_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            LongformerLayer(
                d_model=d_model, num_heads=num_heads, ff_dim=ff_dim or default_ff_dim(d_model),
                window=window, dropout=dropout, eps=layer_norm_eps,
            )
            for _ in range(num_layers)
        )
        mlp_dim = mlp_dim or d_model
        self.mlp_head = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, mlp_dim),
            nn.GELU(),
            nn.Dropout(mlp_dropout),
            nn.Linear(mlp_dim, num_outputs),
        )
        self._init(init)

    def _init(self, init: str) -> None:
        """``official``: HF Longformer's init of the encoder (Linear and Embedding weights
        N(0, 0.02), biases 0, LayerNorm 1/0), a ``torch.randn`` [CLS], the MLP head left at
        PyTorch's default; ``paper``: every weight N(0, 0.02), biases 0 (VTN §4.1)."""
        head = set(self.mlp_head.modules())
        for module in self.modules():
            if module in head and init == "official":
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        if isinstance(getattr(self, "pos_embedding", None), nn.Embedding):
            with torch.no_grad():  # HF: padding_idx = pad_token_id = -1, the last slot, is 0
                self.pos_embedding.weight[-1].zero_()
        if hasattr(self, "cls_position"):
            nn.init.normal_(self.cls_position, std=0.02)
        nn.init.normal_(self.cls_token, std=1.0 if init == "official" else 0.02)

    def position_ids(self, mask: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        """(B, T) position slot of every token: the frame index mod ``max_positions - 2``
        (``frame_index``) or the token index (``token_index``); padding at the last slot."""
        batch, num_tokens = mask.shape
        slots = self.max_positions - 2  # slot max - 2 is the [CLS]'s, max - 1 the padding's
        if self.positions == "frame_index":
            if times is None:
                raise ValueError(
                    "longformer: positions='frame_index' needs the token times (VTN §4.1: the "
                    "frame's index in the video); pass times, or build the head with "
                    "--head-kwarg positions=token_index"
                )
            mid_sec = times.float().mean(dim=-1)  # (B, T)
            frame = torch.floor(mid_sec * self.frame_rate).long().clamp_min(0)
            ids = frame % slots
        else:
            if num_tokens > slots:
                raise ValueError(
                    f"longformer: {num_tokens} frames exceed max_positions {self.max_positions}"
                    f" - 2; pass --head-kwarg max_positions={num_tokens + 2} or more"
                )
            ids = torch.arange(num_tokens, device=mask.device).expand(batch, -1)
        return torch.where(mask, ids, self.max_positions - 1)

    def embed(self, x: torch.Tensor, mask: torch.Tensor,
              times: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) frames → (B, 1+T, d_model) embedded sequence with the CLS at index 0."""
        batch = mask.shape[0]
        ids = self.position_ids(mask, times)  # (B, T)
        # Zero padding first: NaN/inf padding would survive as 0 * NaN in the attention values.
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        frames = self.proj(x)  # (B, T, d)
        cls = self.cls_token.expand(batch, -1, -1)  # (B, 1, d)
        if self.position_kind == "learned":
            frames = frames + self.pos_embedding(ids)
            cls = cls + self.pos_embedding.weight[self.max_positions - 2]
        else:
            if self.position_kind == "fixed":
                frames = frames + fixed_position_encoding(ids, frames.shape[-1]).to(frames.dtype)
            cls = cls + self.cls_position
        if self.token_type is not None:  # official: type 1 on the [CLS], 0 on the frames
            frames = frames + self.token_type.weight[0]
            cls = cls + self.token_type.weight[1]
        seq = torch.cat([cls, frames], dim=1)  # (B, 1+T, d)
        return self.embed_dropout(self.embed_norm(seq))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, times: torch.Tensor | None = None,
                times_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x, mask, times)  # (B, 1+T, d_model)
        for layer in self.layers:
            h = layer(h, mask)
        return self.mlp_head(h[:, 0])  # (B, K)

    @torch.no_grad()
    def cls_attention(self, x: torch.Tensor, mask: torch.Tensor,
                      times: torch.Tensor | None = None,
                      times_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of the CLS on each frame in the last layer, averaged over heads.

        Args:
            x: (B, T, D) frames.
            mask: (B, T) bool, True at real frames.
            times: (B, T, 2) token times (``frame_index`` positions).
            times_mask: Its mask (unused: the same as ``mask``).

        Returns:
            (B, T) weights, 0 at padding; with the CLS's weight on itself they sum to 1.
        """
        h = self.embed(x, mask, times)
        for layer in self.layers[:-1]:
            h = layer(h, mask)
        weights = self.layers[-1].attn.global_attention_weights(h, mask)  # (B, H, 1+T)
        return weights.mean(dim=1)[:, 1:]  # (B, T)

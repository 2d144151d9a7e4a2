"""Models trained from pixels: per stream an encoder (a backbone or a 3D-convolution stem), then
a registered head.

- :class:`BackboneEncoder` wraps the network of a ``pipeline`` backbone (``create_backbone``:
  same architecture, weights and normalisation as extraction) and maps each window's frame or
  clip to one token. Frozen encoders run under ``no_grad`` in eval mode (the stop-gradient of
  STAN-Small's 3D stream, STAN §3); trainable ones back-propagate, optionally with gradient
  checkpointing over chunks of windows.
- :class:`Conv3dStem` embeds a video's frames as ViViT tubelet tokens (B, T', N, D) for a
  patch-token head (e.g. ``stat_cached``) trained from pixels.
- :class:`STATEncoder` is the paper's STAT token embedding block (three 3D convolutions, class
  tokens, positions; :class:`heads.models.stat.TokenEmbedding`) as the encoder of the ``stat``
  preset, whose head is the rest of STAT (:class:`heads.models.stat.STATTrunk`).
- :class:`PixelModel` chains the encoders, a fixed per-stream standardisation (the
  :class:`heads.data.Standardizer` of cached-feature training, so a head trained on cached
  features sees the same input scale) and the head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

STEM = "conv3d_stem"  # encoder name of the tubelet stem (not a pipeline backbone)
STAT_EMBEDDING = "stat_embedding"  # encoder name of STAT's token embedding block
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pad_windows(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the windows of a batch per video and pad them along time.

    Args:
        x: (ΣW, ...) windows of every video, concatenated in batch order.
        lengths: (B,) windows per video.

    Returns:
        ``(padded, mask)``: (B, T, ...) zero-padded with T = max(lengths), and (B, T) bool,
        True at real windows.
    """
    seqs = x.split(lengths.tolist())
    padded = nn.utils.rnn.pad_sequence(seqs, batch_first=True)  # (B, T, ...)
    mask = torch.arange(padded.shape[1]) < lengths.unsqueeze(1)  # (B, T)
    return padded, mask.to(x.device)


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) → float ((x / 255) - mean) / std, per RGB channel."""
    return (x.float() / 255.0 - mean) / std


class BackboneEncoder(nn.Module):
    """One token per window from a ``pipeline`` backbone's network.

    Args:
        backbone: A :class:`pipeline.backbones.Backbone` (its ``model`` and ``spec`` are used;
            its frozen-extraction settings are undone for trainable encoders).
        trainable: Back-propagate into the network; else it stays in eval mode under
            ``no_grad`` (stop-gradient) and its parameters and buffers never change.
        chunk_windows: Windows per forward pass; bounds activation memory for long videos.
        grad_checkpoint: Recompute each chunk's activations in the backward pass instead of
            storing them (trainable only): memory of one chunk instead of every window.
        train_batchnorm: Update BatchNorm statistics while training. Off by default: a batch
            is a few videos whose windows are strongly correlated, a poor estimate of the
            statistics the pretrained network was trained with (its affine weights still train).

    Forward:
        ``forward(frames, lengths)`` with frames uint8 (ΣW, 3, S, S) for frame backbones or
        (ΣW, F, 3, S, S) for clip backbones and lengths (B,) windows per video; returns tokens
        (B, T, D) and mask (B, T). ViTs give their CLS token.
    """

    def __init__(self, backbone, *, trainable: bool, chunk_windows: int = 64,
                 grad_checkpoint: bool = False, train_batchnorm: bool = False):
        super().__init__()
        spec = backbone.spec
        self.name, self.spec, self.dim = spec.name, spec, spec.dim
        self.net = backbone.model
        self.trainable = trainable
        self.chunk_windows = chunk_windows
        self.grad_checkpoint = grad_checkpoint
        self.train_batchnorm = train_batchnorm
        self.is_clip = spec.input_kind == "clip"
        shape = (1, 3, 1, 1, 1) if self.is_clip else (1, 3, 1, 1)  # channels after the permute
        self.register_buffer("mean", torch.tensor(spec.mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(shape), persistent=False)
        for param in self.net.parameters():
            param.requires_grad_(trainable)
        self.train(False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_clip:
            x = x.permute(0, 2, 1, 3, 4)  # (w, F, 3, S, S) -> (w, 3, F, S, S)
            x = _normalise(x, self.mean, self.std)
        else:
            x = _normalise(x, self.mean, self.std).contiguous(memory_format=torch.channels_last)
        out = self.net(x)  # (w, D), or (w, 1 + N, D) for ViTs
        return out[:, 0] if out.dim() == 3 else out  # ViT: the CLS token

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor):
        chunks = frames.split(self.chunk_windows)
        if not self.trainable:
            with torch.no_grad():
                out = [self._features(c) for c in chunks]
        elif self.grad_checkpoint and torch.is_grad_enabled():
            out = [checkpoint(self._features, c, use_reentrant=False) for c in chunks]
        else:
            out = [self._features(c) for c in chunks]
        return pad_windows(torch.cat(out), lengths)  # (B, T, D), (B, T)

    def train(self, mode: bool = True) -> BackboneEncoder:
        super().train(mode and self.trainable)
        if self.training and not self.train_batchnorm:
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


class Conv3dStem(nn.Module):
    """Tubelet token embedding from pixels: one 3D convolution with kernel = stride =
    (t, p, p), as ViViT's tubelet embedding (Arnab et al., ICCV 2021, §3.2), feeding a
    patch-token head (e.g. ``stat_cached``) trained from pixels. Not STAT's own embedding
    (three overlapping convolutions: :class:`STATEncoder`).

    Args:
        dim: Token width D.
        patch_px: p, the patch side in pixels (frames of S px give (S / p)² patches).
        tubelet_frames: t, frames per tubelet.
        grad_checkpoint: Recompute the convolution in the backward pass.

    Forward:
        ``forward(frames, lengths)`` with frames uint8 (ΣT, 3, S, S) (every video's frames in
        batch order) and lengths (B,) frames per video; returns tokens (B, T', N, D) with
        T' = ceil(max(lengths) / t), N = (S / p)², and mask (B, T'), True where a tubelet's
        first frame is real.

    Raises:
        ValueError: S is not a multiple of p.
    """

    trainable = True

    def __init__(self, *, dim: int, patch_px: int, tubelet_frames: int,
                 grad_checkpoint: bool = False):
        super().__init__()
        self.name, self.dim = STEM, dim
        self.patch_px, self.tubelet_frames = patch_px, tubelet_frames
        self.grad_checkpoint = grad_checkpoint
        kernel = (tubelet_frames, patch_px, patch_px)
        self.conv = nn.Conv3d(3, dim, kernel_size=kernel, stride=kernel)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1),
                             persistent=False)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = _normalise(x.permute(0, 2, 1, 3, 4), self.mean, self.std)  # (B, 3, T, S, S)
        x = self.conv(x)  # (B, D, T', S/p, S/p)
        return x.flatten(3).permute(0, 2, 3, 1)  # (B, D, T', N) -> (B, T', N, D)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor):
        size_px = frames.shape[-1]
        if size_px % self.patch_px:
            raise ValueError(
                f"{STEM}: frames of {size_px} px are not a multiple of the {self.patch_px} px "
                "patch; change --frame-size-px or --stem-patch-px"
            )
        x, mask = pad_windows(frames, lengths)  # (B, T, 3, S, S), (B, T)
        t = self.tubelet_frames
        extra = -x.shape[1] % t
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, extra))  # (B, T'·t, 3, S, S)
        if self.grad_checkpoint and torch.is_grad_enabled():
            tokens = checkpoint(self._embed, x, use_reentrant=False)
        else:
            tokens = self._embed(x)
        return tokens, mask[:, ::t]  # (B, T', N, D), (B, T')


class STATEncoder(nn.Module):
    """STAT's token embedding block (Li et al., AAAI 2022, Token Embedding Block) as an encoder.

    Args:
        embedding: A :class:`heads.models.stat.TokenEmbedding` (the ``embedding`` of a
            :class:`heads.models.stat.STAT`, whose ``trunk`` is the head).
        trainable: Back-propagate into it (STAT trains from random initialisation).
        grad_checkpoint: Recompute its activations in the backward pass.

    Forward:
        ``forward(frames, lengths)`` with frames uint8 (ΣT, 3, S, S) (every video's frames in
        batch order) and lengths (B,) frames per video; returns tokens (B, n_t, 1 + N, n_c)
        (class token first; n_t = ⌈max(lengths) / 2⌉, N = (S / 8)²) and mask (B, n_t), True
        where a token's first frame is real.
    """

    standardize = False  # trained from scratch: its tokens have no fixed scale to fit

    def __init__(self, embedding: nn.Module, *, trainable: bool = True,
                 grad_checkpoint: bool = False):
        super().__init__()
        self.name, self.dim = STAT_EMBEDDING, embedding.dim
        self.embedding, self.trainable = embedding, trainable
        self.grad_checkpoint = grad_checkpoint
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1),
                             persistent=False)
        self.requires_grad_(trainable)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = _normalise(x.permute(0, 2, 1, 3, 4), self.mean, self.std)  # (B, 3, T, S, S)
        return self.embedding(x)  # (B, n_t, 1 + N, n_c)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor):
        x, mask = pad_windows(frames, lengths)  # (B, T, 3, S, S), (B, T)
        if self.grad_checkpoint and torch.is_grad_enabled() and self.trainable:
            tokens = checkpoint(self._embed, x, use_reentrant=False)
        else:
            tokens = self._embed(x)
        mask = mask[:, :: self.embedding.time_stride][:, : tokens.shape[1]]  # (B, n_t)
        return tokens, mask


class PixelModel(nn.Module):
    """Encoders → per-stream standardisation → head.

    Args:
        encoders: One per head stream, in the head's order.
        head: A registered head (``forward(x_0, mask_0, x_1, mask_1, ...)``).

    Forward:
        ``forward(frames, lengths)``: per stream the batch's frames and (B,) window counts (see
        :class:`heads.finetune.clips.ClipBatch`); returns the head's (B, K).
    """

    def __init__(self, encoders: Sequence[nn.Module], head: nn.Module):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.head = head
        for i, encoder in enumerate(self.encoders):
            self.register_buffer(f"feature_mean_{i}", torch.zeros(encoder.dim))
            self.register_buffer(f"feature_std_{i}", torch.ones(encoder.dim))

    def set_standardizer(self, standardizer) -> None:
        """Use a :class:`heads.data.Standardizer`'s per-stream mean and std from now on.

        Raises:
            ValueError: its stream count or dims differ from the encoders'.
        """
        dims = [encoder.dim for encoder in self.encoders]
        got = [len(m) for m in standardizer.mean]
        if got != dims:
            raise ValueError(f"standardiser dims {got} do not match the encoders' dims {dims}")
        for i, (mean, std) in enumerate(zip(standardizer.mean, standardizer.std)):
            getattr(self, f"feature_mean_{i}").copy_(torch.as_tensor(mean))
            getattr(self, f"feature_std_{i}").copy_(torch.as_tensor(std))

    def encode(self, frames: Sequence[torch.Tensor], lengths: Sequence[torch.Tensor]):
        """Raw (unstandardised) tokens and masks, one pair per stream."""
        return [enc(x, n) for enc, x, n in zip(self.encoders, frames, lengths)]

    def forward(self, frames: Sequence[torch.Tensor], lengths: Sequence[torch.Tensor]):
        inputs = []
        for i, (tokens, mask) in enumerate(self.encode(frames, lengths)):
            mean, std = getattr(self, f"feature_mean_{i}"), getattr(self, f"feature_std_{i}")
            inputs += [(tokens - mean) / std, mask]  # (B, T, [N,] D), (B, T)
        return self.head(*inputs)

    @property
    def aux_loss(self) -> torch.Tensor | None:
        """The head's auxiliary loss of the last training forward (see
        :class:`heads.config.RunConfig`), for the training loop."""
        return getattr(self.head, "aux_loss", None)

    def trainable_state_keys(self) -> list[str]:
        """The state entries training can change: the head's, the standardisation's and those
        of trainable encoders (a frozen encoder is rebuilt from its weights)."""
        return [k for k in self.state_dict()
                if not k.startswith("encoders.") or self.encoders[int(k.split(".")[1])].trainable]

    def parameter_counts(self) -> dict[str, int]:
        """``trainable`` and ``frozen`` parameter counts, and ``per_part``: per encoder and the
        head, its total count."""
        counts = {"trainable": 0, "frozen": 0}
        for param in self.parameters():
            counts["trainable" if param.requires_grad else "frozen"] += param.numel()
        per_part = {enc.name: sum(p.numel() for p in enc.parameters()) for enc in self.encoders}
        per_part["head"] = sum(p.numel() for p in self.head.parameters())
        return {**counts, "per_part": per_part}

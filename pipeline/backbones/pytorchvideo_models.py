"""SlowFast R50 (Kinetics-400) from pytorchvideo.

Feichtenhofer et al. 2019, "SlowFast Networks for Video Recognition", the 8×8 R50 model of
pytorchvideo's model zoo: 32 frames per clip, the fast pathway sees all 32 and the slow pathway
every α = 4th (8 frames). The classifier projection is dropped, so a clip gives the pooled
concatenation of both pathways (2048 + 256 = 2304 dims). Preprocessing is pytorchvideo's
Kinetics recipe: short side 256, centre crop 256, mean 0.45 / std 0.225 per channel.
"""

from __future__ import annotations

from pipeline.backbones import Backbone, BackboneSpec, register_backbone
from pipeline.weights import WeightsRef, build_with_weights

SLOWFAST_ALPHA = 4  # frame-rate ratio between the fast and slow pathways (paper §3.1)

SLOWFAST_R50 = BackboneSpec(
    name="slowfast_r50",
    input_kind="clip",
    size_px=256,
    resize_px=(256,),
    mean=(0.45, 0.45, 0.45),
    std=(0.225, 0.225, 0.225),
    dim=2304,
    num_frames=32,
    weights_tag="SLOWFAST_8x8_R50",
    weights_url="https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/SLOWFAST_8x8_R50.pyth",
    pretrained_on="Kinetics-400",
    source="Feichtenhofer et al. 2019, SlowFast Networks (pytorchvideo.models.hub.slowfast_r50)",
    fixed_num_frames=True,  # the head's pooling kernels are sized for 8 slow / 32 fast frames
)


def _clip_transform(spec: BackboneSpec):
    """(B, F, 3, H, W) uint8 → (B, 3, F, S, S) float: resize short side, centre crop, normalise."""
    import torch
    from torchvision.transforms.v2 import functional as F

    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)  # broadcast over (B·F, 3, H, W)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)

    def transform(clip: torch.Tensor) -> torch.Tensor:
        batch, num_frames, _, height, width = clip.shape
        x = clip.reshape(batch * num_frames, 3, height, width)  # (B·F, 3, H, W)
        x = F.resize(x, [spec.resize_px[0]], antialias=False)
        x = F.center_crop(x, [spec.size_px])
        x = (x.float() / 255.0 - mean.to(x.device)) / std.to(x.device)
        x = x.reshape(batch, num_frames, 3, spec.size_px, spec.size_px)  # (B, F, 3, S, S)
        return x.permute(0, 2, 1, 3, 4)  # (B, 3, F, S, S)

    return transform


@register_backbone(SLOWFAST_R50)
def slowfast_r50(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    import torch
    from pytorchvideo.models.hub import slowfast_r50 as build
    from torch import nn

    class SlowFastFeatures(nn.Module):
        """(B, 3, 32, S, S) → pack [slow (B, 3, 8, S, S), fast] → (B, 2304) pooled features."""

        def __init__(self, net):
            super().__init__()
            self.net = net
            self.net.blocks[-1].proj = nn.Identity()  # keep the pooled pathway concatenation

        def forward(self, fast: torch.Tensor) -> torch.Tensor:
            num_frames = fast.shape[2]
            slow_idx = torch.linspace(0, num_frames - 1, num_frames // SLOWFAST_ALPHA)
            slow = fast.index_select(2, slow_idx.long().to(fast.device))  # (B, 3, 8, S, S)
            return self.net([slow, fast]).flatten(1)  # (B, 2304)

    model = SlowFastFeatures(build_with_weights(lambda: build(pretrained=False), ref))
    return Backbone(SLOWFAST_R50, model, _clip_transform(SLOWFAST_R50), ref.identity(), device)

"""Backbones from torchvision: ResNet-18 and ViT-B/16, ViT-L/16 (ImageNet), R(2+1)D-18
(Kinetics-400).

Architectures, weights and preprocessing are torchvision's; we only expose features: the pooled
penultimate layer of the CNNs (classifier dropped), and for ViTs the final-LayerNorm output of
every token (CLS first, then the 14 × 14 patches), whose CLS token is the pooled feature.
"""

from __future__ import annotations

from pipeline.backbones import Backbone, BackboneSpec, register_backbone
from pipeline.weights import WeightsRef, build_with_weights

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

RESNET18 = BackboneSpec(
    name="resnet18",
    input_kind="frame",
    size_px=224,
    resize_px=(256,),
    mean=_IMAGENET_MEAN,
    std=_IMAGENET_STD,
    dim=512,
    num_frames=1,
    weights_tag="IMAGENET1K_V1",
    weights_url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
    pretrained_on="ImageNet-1k",
    source="He et al. 2016, Deep Residual Learning (torchvision.models.resnet18)",
    used_by="STAN (2D stream: each scene's centre frame, §3) and its ResNet18 baselines (Tab. 1)",
)

R2PLUS1D_18 = BackboneSpec(
    name="r2plus1d_18",
    input_kind="clip",
    size_px=112,
    resize_px=(128, 171),
    mean=(0.43216, 0.394666, 0.37645),
    std=(0.22803, 0.22145, 0.216989),
    dim=512,
    num_frames=16,
    weights_tag="KINETICS400_V1",
    weights_url="https://download.pytorch.org/models/r2plus1d_18-91a641e6.pth",
    pretrained_on="Kinetics-400",
    source="Tran et al. 2018, A Closer Look at Spatiotemporal Convolutions "
    "(torchvision.models.video.r2plus1d_18)",
    used_by="STAN (3D stream: 12 frames per scene, Kinetics-400 R(2+1)D, §3)",
)

VIT_B16 = BackboneSpec(
    name="vit_b16",
    input_kind="frame",
    size_px=224,
    resize_px=(256,),
    mean=_IMAGENET_MEAN,
    std=_IMAGENET_STD,
    dim=768,
    num_frames=1,
    weights_tag="IMAGENET1K_V1",
    weights_url="https://download.pytorch.org/models/vit_b_16-c867db91.pth",
    pretrained_on="ImageNet-1k",
    source="Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (torchvision.models.vit_b_16)",
    used_by="STAM's and VTN's architecture with ImageNet-1k weights; the papers' ImageNet-21k "
    "weights: vit_b16_in21k",
    token_kinds=("pooled", "patch"),
    num_patches=197,
)

VIT_L16 = BackboneSpec(
    name="vit_l16",
    input_kind="frame",
    size_px=224,
    resize_px=(242,),
    mean=_IMAGENET_MEAN,
    std=_IMAGENET_STD,
    dim=1024,
    num_frames=1,
    weights_tag="IMAGENET1K_V1",
    weights_url="https://download.pytorch.org/models/vit_l_16-852ce7e3.pth",
    pretrained_on="ImageNet-1k",
    source="Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (torchvision.models.vit_l_16)",
    used_by="ViS4mer's architecture with ImageNet-1k weights; the paper's ImageNet-21k weights "
    "and squashed frames: vit_l16_in21k --resize squash",
    token_kinds=("pooled", "patch"),
    num_patches=197,
)


def _pooled(spec: BackboneSpec, build, weights_enum, ref: WeightsRef, device: str) -> Backbone:
    """A torchvision CNN with its classifier replaced by the identity: (B, D) pooled features."""
    import torch

    model = build_with_weights(build, ref)
    model.fc = torch.nn.Identity()  # pooled penultimate features instead of class logits
    transform = weights_enum[spec.weights_tag].transforms()
    return Backbone(spec, model, transform, ref.identity(), device=device)


def _vit(spec: BackboneSpec, build, weights_enum, ref: WeightsRef, device: str) -> Backbone:
    from torch import nn

    class ViTTokens(nn.Module):
        """torchvision ViT up to its encoder: (B, 3, 224, 224) → (B, 1 + 14·14, D) tokens."""

        def __init__(self, vit):
            super().__init__()
            self.vit = vit

        def forward(self, x):
            import torch

            x = self.vit._process_input(x)  # (B, 196, D) patch embeddings
            cls = self.vit.class_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
            return self.vit.encoder(torch.cat([cls, x], dim=1))  # (B, 197, D), final LN applied

    model = ViTTokens(build_with_weights(build, ref))
    transform = weights_enum[spec.weights_tag].transforms()
    return Backbone(spec, model, transform, ref.identity(), device=device)


@register_backbone(RESNET18)
def resnet18(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    from torchvision.models import ResNet18_Weights, resnet18

    return _pooled(RESNET18, resnet18, ResNet18_Weights, ref, device)


@register_backbone(R2PLUS1D_18)
def r2plus1d_18(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    from torchvision.models.video import R2Plus1D_18_Weights, r2plus1d_18

    return _pooled(R2PLUS1D_18, r2plus1d_18, R2Plus1D_18_Weights, ref, device)


@register_backbone(VIT_B16)
def vit_b16(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    from torchvision.models import ViT_B_16_Weights, vit_b_16

    return _vit(VIT_B16, vit_b_16, ViT_B_16_Weights, ref, device)


@register_backbone(VIT_L16)
def vit_l16(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    from torchvision.models import ViT_L_16_Weights, vit_l_16

    return _vit(VIT_L16, vit_l_16, ViT_L_16_Weights, ref, device)

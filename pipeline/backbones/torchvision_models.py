"""Backbones from torchvision: ResNet-18 (ImageNet) and R(2+1)D-18 (Kinetics-400).

Architectures and weights are torchvision's; we only drop the classifier so the pooled
penultimate features (512-d for both) become tokens.
"""

from __future__ import annotations

from pipeline.backbones import Backbone, BackboneSpec, register_backbone
from pipeline.weights import WeightsRef, build_with_weights

RESNET18 = BackboneSpec(
    name="resnet18",
    input_kind="frame",
    size_px=224,
    resize_px=(256,),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    dim=512,
    num_frames=1,
    weights_tag="IMAGENET1K_V1",
    weights_enum="torchvision.models.ResNet18_Weights",
    pretrained_on="ImageNet-1k",
    source="He et al. 2016, Deep Residual Learning (torchvision.models.resnet18)",
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
    weights_enum="torchvision.models.video.R2Plus1D_18_Weights",
    pretrained_on="Kinetics-400",
    source="Tran et al. 2018, A Closer Look at Spatiotemporal Convolutions "
    "(torchvision.models.video.r2plus1d_18)",
)


def _pooled(spec: BackboneSpec, build, ref: WeightsRef, device: str) -> Backbone:
    """A torchvision classifier with its head replaced by the identity: (B, D) pooled features."""
    import torch

    enum = spec.weights()
    model = build_with_weights(build, enum, ref)
    model.fc = torch.nn.Identity()  # pooled penultimate features instead of class logits
    return Backbone(spec, model, enum.transforms(), ref.identity(), device=device)


@register_backbone(RESNET18)
def resnet18(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    from torchvision.models import resnet18

    return _pooled(RESNET18, resnet18, ref, device)


@register_backbone(R2PLUS1D_18)
def r2plus1d_18(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    from torchvision.models.video import r2plus1d_18

    return _pooled(R2PLUS1D_18, r2plus1d_18, ref, device)

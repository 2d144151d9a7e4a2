"""Backbones from timm: the ViTs the long-video papers used, and the CLIP and DINOv2 towers
long-video work runs today.

| key | timm weights | pretraining | used by |
|---|---|---|---|
| ``vit_l16_in21k`` | ``vit_large_patch16_224.augreg_in21k`` | ImageNet-21k | ViS4mer |
| ``vit_b16_in21k`` | ``vit_base_patch16_224.orig_in21k`` | ImageNet-21k | STAM, VTN |
| ``deit_b16`` | ``deit_base_patch16_224.fb_in1k`` | ImageNet-1k | VTN (DeiT-B) |
| ``deit_ti16`` | ``deit_tiny_patch16_224.fb_in1k`` | ImageNet-1k | VTN (DeiT-Ti) |
| ``clip_vit_l14`` | ``vit_large_patch14_clip_quickgelu_224.openai`` | OpenAI WIT-400M | CLIP |
| ``dinov2_vit_l14`` | ``vit_large_patch14_dinov2.lvd142m`` at 224 px | LVD-142M | DINOv2 |

The architecture, its pretrained weights (timm's Hugging Face hub repository ``timm/<name>``),
mean/std and interpolation are timm's (``pretrained_cfg``, checked by the tests). Models are
built with ``pretrained=False`` and the weights loaded here, so that ``--weights default``
resolves through the hub cache (``HF_HOME``) once on the driver and fails at once offline, as
the torchvision backbones do (:mod:`pipeline.weights`). Tokens: ``patch`` is
``forward_features`` (every token after the final norm: CLS, any register tokens, then the
patch grid row by row); ``pooled`` is ``forward_head(pre_logits=True)``, which for these
models is the CLS token after the final norm, the feature the papers took (ViS4mer §3.1, STAM
§3, VTN §3.1). For CLIP that is the CLS token before CLIP's 1024 → 768 projection into the
joint image-text space (timm's ``head``), which is dropped.

Crop preprocessing (the default ``--resize crop``) resizes the short side and centre-crops:
to 256 then 224 where the paper says so (STAM §4 and VTN §4.1, "resize the shorter side to 256
and take a center crop of size 224 × 224"; DINOv2's own eval transform), else to timm's
``224 / crop_pct``. ViS4mer resized whole frames to 224 × 224 (§4.4): ``--resize squash``.
"""

from __future__ import annotations

from pipeline.backbones import Backbone, BackboneSpec, register_backbone, resize_transform
from pipeline.weights import WeightsRef, build_with_weights

_IN21K_MEAN = _IN21K_STD = (0.5, 0.5, 0.5)  # the JAX ViT releases normalise to [-1, 1]
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's preprocessing
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_VIT = "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words"


def _timm_spec(name: str, timm_name: str, *, dim: int, patch_px: int, pretrained_on: str,
               source: str, used_by: str, mean, std, resize_px: int, num_prefix_tokens: int = 1,
               size_px: int = 224, hub_name: str = "") -> BackboneSpec:
    """A timm ViT's spec: ``timm_name`` is ``architecture.tag``; tokens are the prefix tokens
    plus a (size_px / patch_px)² grid; the weights are in hub repository ``timm/<hub_name>``
    (default ``timm_name``: timm's ``pretrained_cfg.hf_hub_id``)."""
    side = size_px // patch_px
    hub_name = hub_name or timm_name
    return BackboneSpec(
        name=name,
        input_kind="frame",
        size_px=size_px,
        resize_px=(resize_px,),
        mean=mean,
        std=std,
        dim=dim,
        num_frames=1,
        weights_tag=timm_name,
        weights_url=f"https://huggingface.co/timm/{hub_name}/resolve/main/model.safetensors",
        pretrained_on=pretrained_on,
        source=f"{source} (timm {timm_name.split('.')[0]})",
        token_kinds=("pooled", "patch"),
        num_patches=num_prefix_tokens + side * side,
        interpolation="bicubic",
        num_prefix_tokens=num_prefix_tokens,
        patch_grid=(side, side),
        hf_hub_id=f"timm/{hub_name}",
        used_by=used_by,
    )


VIT_L16_IN21K = _timm_spec(
    "vit_l16_in21k", "vit_large_patch16_224.augreg_in21k", dim=1024, patch_px=16,
    pretrained_on="ImageNet-21k", mean=_IN21K_MEAN, std=_IN21K_STD, resize_px=248,
    source=f"{_VIT}; AugReg weights, Steiner et al. 2022, How to train your ViT?",
    used_by="ViS4mer (Islam & Bertasius 2022, §4.4: frames resized to 224 × 224; official "
    "code: timm vit_large_patch16_224_in21k)",
)
VIT_B16_IN21K = _timm_spec(
    "vit_b16_in21k", "vit_base_patch16_224.orig_in21k", dim=768, patch_px=16,
    pretrained_on="ImageNet-21k", mean=_IN21K_MEAN, std=_IN21K_STD, resize_px=256,
    source=f"{_VIT}; the original ImageNet-21k release",
    used_by="STAM (Sharir et al. 2021, §4) and VTN (Neimark et al. 2021, Tab. 1: ViT-B-VTN)",
)
DEIT_B16 = _timm_spec(
    "deit_b16", "deit_base_patch16_224.fb_in1k", dim=768, patch_px=16,
    pretrained_on="ImageNet-1k", mean=_IMAGENET_MEAN, std=_IMAGENET_STD, resize_px=256,
    source="Touvron et al. 2021, Training data-efficient image transformers (DeiT-B)",
    used_by="VTN (Neimark et al. 2021, Tab. 1: DeiT-B-VTN)",
)
DEIT_TI16 = _timm_spec(
    "deit_ti16", "deit_tiny_patch16_224.fb_in1k", dim=192, patch_px=16,
    pretrained_on="ImageNet-1k", mean=_IMAGENET_MEAN, std=_IMAGENET_STD, resize_px=256,
    source="Touvron et al. 2021, Training data-efficient image transformers (DeiT-Ti)",
    used_by="VTN (Neimark et al. 2021, Tab. 1 and 6: DeiT-Ti-VTN)",
)
CLIP_VIT_L14 = _timm_spec(
    "clip_vit_l14", "vit_large_patch14_clip_quickgelu_224.openai", dim=1024, patch_px=14,
    pretrained_on="OpenAI WIT-400M (image-text pairs)", mean=_CLIP_MEAN, std=_CLIP_STD,
    resize_px=224, hub_name="vit_large_patch14_clip_224.openai",  # one file for both activations
    source="Radford et al. 2021, Learning Transferable Visual Models From Natural Language "
    "Supervision (CLIP image tower, QuickGELU as released)",
    used_by="long-video work on frozen CLIP frame features (image tower, 1024-d CLS before "
    "the projection)",
)
DINOV2_VIT_L14 = _timm_spec(
    "dinov2_vit_l14", "vit_large_patch14_dinov2.lvd142m", dim=1024, patch_px=14,
    pretrained_on="LVD-142M (self-supervised)", mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
    resize_px=256,
    source="Oquab et al. 2024, DINOv2: Learning Robust Visual Features without Supervision "
    "(at 224 px: position embeddings resampled from 37 × 37 to 16 × 16)",
    used_by="long-video work on frozen DINOv2 frame features",
)


def _timm_backbone(spec: BackboneSpec, ref: WeightsRef, device: str) -> Backbone:
    """Build ``spec``'s timm model without its classifier, load ``ref``'s weights into it, and
    wrap it: (B, 3, S, S) → ``forward_features`` (B, N, D); pooled = ``forward_head(pre_logits)``.

    Raises:
        pipeline.weights.WeightsError: the weights do not fit.
    """
    import timm
    import torch
    from timm.models.vision_transformer import checkpoint_filter_fn

    architecture = spec.weights_tag.split(".")[0]

    def build():
        # num_classes=0: no classifier (nor CLIP's projection); img_size: DINOv2's 518 → 224
        return timm.create_model(architecture, pretrained=False, num_classes=0,
                                 img_size=spec.size_px)

    def adapt(state: dict, model) -> dict:
        # timm's own filter: position embeddings resampled to this grid, original (OpenAI,
        # JAX) layouts converted; then the classifier / projection dropped, tensors in fp32.
        state = checkpoint_filter_fn(state, model)
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()
                if not k.startswith("head.")}

    class TimmTokens(torch.nn.Module):
        """A timm ViT's ``forward_features``: (B, 3, S, S) → (B, N, D), final norm applied."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.forward_features(x)  # (B, num_prefix_tokens + rows·cols, D)

    model = TimmTokens(build_with_weights(build, ref, adapt_state=adapt))

    def pool(tokens):
        return model.net.forward_head(tokens, pre_logits=True)  # (B, N, D) -> (B, D)

    return Backbone(spec, model, resize_transform(spec), ref.identity(), device=device, pool=pool)


@register_backbone(VIT_L16_IN21K)
def vit_l16_in21k(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    return _timm_backbone(VIT_L16_IN21K, ref, device)


@register_backbone(VIT_B16_IN21K)
def vit_b16_in21k(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    return _timm_backbone(VIT_B16_IN21K, ref, device)


@register_backbone(DEIT_B16)
def deit_b16(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    return _timm_backbone(DEIT_B16, ref, device)


@register_backbone(DEIT_TI16)
def deit_ti16(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    return _timm_backbone(DEIT_TI16, ref, device)


@register_backbone(CLIP_VIT_L14)
def clip_vit_l14(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    return _timm_backbone(CLIP_VIT_L14, ref, device)


@register_backbone(DINOV2_VIT_L14)
def dinov2_vit_l14(ref: WeightsRef, *, device: str = "cpu") -> Backbone:
    return _timm_backbone(DINOV2_VIT_L14, ref, device)

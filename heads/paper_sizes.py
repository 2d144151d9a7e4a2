"""``heads list --paper``: the model sizes the papers state, next to longvid's at the same setting.

One row per size a paper reports, built at the paper's setting (backbone, input width, classes,
layers) with the head's default arguments otherwise, so a default that drifts from the paper
shows as a ratio away from 1.00:

- ``vtn_vit_b_1l``, ``vtn_vit_b_3l`` (VTN Tab. 3: 96 M, 114 M): ViT-B/16 + ``longformer``
  (768-d, 1 / 3 layers), 400 classes;
- ``vtn_r50``, ``vtn_r101`` (VTN Tab. 3: 168 M, 187 M): ResNet-50 / 101 + ``longformer``
  (2048-d, 3 layers), 400 classes;
- ``stan_small``, ``stan_large`` (STAN Tab. 4: 45 M, 92.5 M trainable): ``stan`` on ResNet-18 +
  R(2+1)D-18 tokens (512-d each), 20 classes (MMX-Trailer-20), plus the trained backbones
  (Small: the 2D CNN; Large: both);
- ``stam_16f`` (STAM Tab. 1: 96 M): ViT-B/16 + ``temporal_transformer`` (768-d, 6 layers,
  8 heads), 400 classes.

Backbones are torchvision's (``vit_b_16``, ``resnet50``, ``resnet101``, ``resnet18``,
``r2plus1d_18``) without their classifier, built on the ``meta`` device: only shapes, no memory
and no weights. VTN's architecture is fully specified (§4.1 and the official code), so its rows
must match within 2 % (``tests/test_vtn.py``); STAM's official code gives 119 M (FFN 2048 in six
temporal layers) against the paper's 96 M, which no stated setting reproduces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PaperSize:
    """One size a paper reports.

    Attributes:
        name: Row key, e.g. ``vtn_vit_b_3l``.
        source: Paper and table.
        paper_m: The paper's figure, millions of parameters.
        setting: What is counted, in words.
        backbones: torchvision constructors whose parameters (classifier removed) count too.
        head: ``create_head`` name.
        head_args: Its arguments (``in_dim``, ``num_outputs`` and the paper's setting).
        note: What to know about the row.
    """

    name: str
    source: str
    paper_m: float
    setting: str
    backbones: tuple[str, ...]
    head: str
    head_args: dict
    note: str = ""

    def count(self) -> int:
        """longvid's parameter count at this setting (head + backbones)."""
        return count_parameters(self.head, self.head_args) + sum(
            backbone_parameters(b) for b in self.backbones)


def _vtn(name: str, backbone: str, dim: int, layers: int, paper_m: float) -> PaperSize:
    return PaperSize(
        name, "VTN Tab. 3", paper_m,
        f"{backbone} + longformer ({dim}-d, {layers} layer{'s' * (layers > 1)}), 400 classes",
        (backbone,), "longformer",
        {"in_dim": dim, "num_outputs": 400, "num_layers": layers},
    )


PAPER_SIZES: tuple[PaperSize, ...] = (
    _vtn("vtn_vit_b_1l", "vit_b_16", 768, 1, 96.0),
    _vtn("vtn_vit_b_3l", "vit_b_16", 768, 3, 114.0),
    _vtn("vtn_r50", "resnet50", 2048, 3, 168.0),
    _vtn("vtn_r101", "resnet101", 2048, 3, 187.0),
    PaperSize(
        "stan_small", "STAN Tab. 4", 45.0, "stan on resnet18 + r2plus1d_18 tokens, 20 classes, "
        "+ the trained resnet18", ("resnet18",), "stan",
        {"in_dim": (512, 512), "num_outputs": 20}, "trainable parameters",
    ),
    PaperSize(
        "stan_large", "STAN Tab. 4", 92.5, "stan on resnet18 + r2plus1d_18 tokens, 20 classes, "
        "+ both trained backbones", ("resnet18", "r2plus1d_18"), "stan",
        {"in_dim": (512, 512), "num_outputs": 20},
        "trainable parameters; 92.5 M = 45 + 48 counts the temporal transformer twice (Tab. 4 "
        "puts R(2+1)D at 31.5 M)",
    ),
    PaperSize(
        "stam_16f", "STAM Tab. 1", 96.0, "vit_b_16 + temporal_transformer (768-d, 6 layers, "
        "8 heads), 400 classes", ("vit_b_16",), "temporal_transformer",
        {"in_dim": 768, "num_outputs": 400}, "the official code's architecture gives 119 M",
    ),
)


def _on_meta(build: Callable):
    import torch

    with torch.device("meta"):
        return build()


def count_parameters(head: str, head_args: dict) -> int:
    """Parameters of head ``head`` built with ``head_args`` (on the meta device)."""
    from heads.models import create_head

    model = _on_meta(lambda: create_head(head, **head_args))
    return sum(p.numel() for p in model.parameters())


def backbone_parameters(name: str) -> int:
    """Parameters of torchvision's ``name`` without its classifier (``fc`` / ``heads``).

    Raises:
        KeyError: not one of the backbones the papers use.
    """
    import torch
    from torchvision import models
    from torchvision.models import video

    builders = {"vit_b_16": models.vit_b_16, "resnet50": models.resnet50,
                "resnet101": models.resnet101, "resnet18": models.resnet18,
                "r2plus1d_18": video.r2plus1d_18}
    if name not in builders:
        raise KeyError(f"unknown paper backbone {name!r}; valid: {', '.join(builders)}")
    model = _on_meta(builders[name])
    for classifier in ("fc", "heads"):
        if hasattr(model, classifier):
            setattr(model, classifier, torch.nn.Identity())
    return sum(p.numel() for p in model.parameters())


def paper_table(rows: tuple[PaperSize, ...] = PAPER_SIZES) -> list[dict]:
    """Every row with longvid's count: ``name``, ``source``, ``paper_m``, ``ours_m``, ``ratio``
    (ours / paper), ``setting``, ``note``."""
    table = []
    for row in rows:
        ours = row.count() / 1e6
        table.append({"name": row.name, "source": row.source, "paper_m": row.paper_m,
                      "ours_m": ours, "ratio": ours / row.paper_m, "setting": row.setting,
                      "note": row.note})
    return table


def format_paper_table(table: list[dict]) -> str:
    """The table as aligned text: ``vtn_vit_b_3l  paper 114.0M  ours 113.5M  1.00  ...``."""
    cells = [(r["name"], f"paper {r['paper_m']:.1f}M", f"ours {r['ours_m']:.1f}M",
              f"{r['ratio']:.2f}", r["source"], r["setting"] + (f"; {r['note']}" if r["note"]
                                                                else ""))
             for r in table]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    return "\n".join("  ".join([*(c[i].ljust(widths[i]) for i in range(5)), c[5]]).rstrip()
                     for c in cells)

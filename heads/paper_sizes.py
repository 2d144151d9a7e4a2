"""``heads list --paper``: the model sizes and costs the papers state, next to longvid's at the
same setting.

One row per figure a paper reports, built at the paper's setting (backbone, input width, classes,
layers) with the model's default arguments otherwise, so a default that drifts from the paper
shows as a ratio away from 1.00. Two kinds of rows: parameter counts (:class:`PaperSize`,
millions) and the cost of one clip (:class:`PaperFlops`, GFLOPs in fvcore's convention, one
multiply-add = one FLOP). Parameter rows:

- ``vtn_vit_b_1l``, ``vtn_vit_b_3l`` (VTN Tab. 3: 96 M, 114 M): ViT-B/16 + ``longformer``
  (768-d, 1 / 3 layers), 400 classes;
- ``vtn_r50``, ``vtn_r101`` (VTN Tab. 3: 168 M, 187 M): ResNet-50 / 101 + ``longformer``
  (2048-d, 3 layers), 400 classes;
- ``stan_small``, ``stan_large`` (STAN Tab. 4: 45 M, 92.5 M trainable): ``stan`` on ResNet-18 +
  R(2+1)D-18 tokens (512-d each), 20 classes (MMX-Trailer-20), plus the trained backbones
  (Small: the 2D CNN; Large: both);
- ``stam_16f`` (STAM Tab. 1: 96 M): ViT-B/16 + ``temporal_transformer`` (768-d, 6 layers,
  8 heads), 400 classes.

GFLOPs rows (:func:`heads.models.stat.stat_gflops`, the paper's STAT from pixels at its
defaults, 400 classes, one 224 × 224 clip):

- ``stat_t16_ca``, ``stat_t16_ca_sa``, ``stat_t16_ca_la``, ``stat_t16`` (STAT Tab. 1: 58.2,
  59.0, 58.4, 59.1): T = 16, t_o = 3, current attention alone, + short-term, + long-term, all
  three;
- ``stat_t32_to3`` … ``stat_t32_to9`` (STAT Tab. 2: 118.6, 120.1, 121.5, 123.0): T = 32,
  t_o = 3, 5, 7, 9;
- ``stat_t64`` (STAT Tab. 6: 2172 GFLOPs for 3 × 3 views, 241.3 per view): T = 64, t_o = 7.

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


@dataclass(frozen=True)
class PaperFlops:
    """One cost of one clip a paper reports.

    Attributes:
        name: Row key, e.g. ``stat_t16``.
        source: Paper and table.
        paper_gflops: The paper's figure, GFLOPs of one clip (fvcore's convention).
        setting: What is counted, in words.
        stat_args: :func:`heads.models.stat.stat_gflops` arguments (``num_frames``, ``t_o``, ...).
        note: What to know about the row.
    """

    name: str
    source: str
    paper_gflops: float
    setting: str
    stat_args: dict
    note: str = ""

    def gflops(self) -> float:
        """longvid's GFLOPs at this setting."""
        from heads.models.stat import stat_gflops

        return stat_gflops(**self.stat_args)


def _stat(name: str, source: str, paper: float, num_frames: int, t_o: int,
          modules: str = "CA + SA + LA", note: str = "") -> PaperFlops:
    args = {"num_frames": num_frames, "t_o": t_o, "short_term": "SA" in modules,
            "long_term": "LA" in modules}
    return PaperFlops(name, source, paper, f"STAT, T = {num_frames}, 224 px, t_o = {t_o}, "
                      f"{modules}, 400 classes, one clip", args, note)


def _vtn(name: str, backbone: str, dim: int, layers: int, paper_m: float) -> PaperSize:
    return PaperSize(
        name, "VTN Tab. 3", paper_m,
        f"{backbone} + longformer ({dim}-d, {layers} layer{'s' * (layers > 1)}), 400 classes",
        (backbone,), "longformer",
        {"in_dim": dim, "num_outputs": 400, "num_layers": layers},
    )


PAPER_SIZES: tuple[PaperSize | PaperFlops, ...] = (
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
    _stat("stat_t16_ca", "STAT Tab. 1", 58.2, 16, 3, "CA"),
    _stat("stat_t16_ca_sa", "STAT Tab. 1", 59.0, 16, 3, "CA + SA"),
    _stat("stat_t16_ca_la", "STAT Tab. 1", 58.4, 16, 3, "CA + LA"),
    _stat("stat_t16", "STAT Tab. 1", 59.1, 16, 3),
    _stat("stat_t32_to3", "STAT Tab. 2", 118.6, 32, 3),
    _stat("stat_t32_to5", "STAT Tab. 2", 120.1, 32, 5),
    _stat("stat_t32_to7", "STAT Tab. 2", 121.5, 32, 7),
    _stat("stat_t32_to9", "STAT Tab. 2", 123.0, 32, 9),
    _stat("stat_t64", "STAT Tab. 6", 2172 / 9, 64, 7, note="Tab. 6: 2172 GFLOPs for 3 × 3 views"),
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


def paper_table(rows: tuple[PaperSize | PaperFlops, ...] = PAPER_SIZES) -> list[dict]:
    """Every row with longvid's figure: ``name``, ``kind`` (``params`` or ``gflops``), ``source``,
    ``paper_m`` and ``ours_m`` (millions of parameters) or ``paper_gflops`` and
    ``ours_gflops``, ``ratio`` (ours / paper), ``setting``, ``note``."""
    table = []
    for row in rows:
        common = {"name": row.name, "source": row.source, "setting": row.setting,
                  "note": row.note}
        if isinstance(row, PaperFlops):
            ours = row.gflops()
            table.append({**common, "kind": "gflops", "paper_gflops": row.paper_gflops,
                          "ours_gflops": ours, "ratio": ours / row.paper_gflops})
        else:
            ours = row.count() / 1e6
            table.append({**common, "kind": "params", "paper_m": row.paper_m, "ours_m": ours,
                          "ratio": ours / row.paper_m})
    return table


def _figures(row: dict) -> tuple[str, str]:
    if row.get("kind") == "gflops":
        return f"paper {row['paper_gflops']:.1f} GFLOPs", f"ours {row['ours_gflops']:.1f} GFLOPs"
    return f"paper {row['paper_m']:.1f}M", f"ours {row['ours_m']:.1f}M"


def format_paper_table(table: list[dict]) -> str:
    """The table as aligned text: ``vtn_vit_b_3l  paper 114.0M  ours 113.5M  1.00  ...``, and
    ``stat_t16  paper 59.1 GFLOPs  ours 60.7 GFLOPs  1.03  ...`` for cost rows."""
    cells = [(r["name"], *_figures(r), f"{r['ratio']:.2f}", r["source"],
              r["setting"] + (f"; {r['note']}" if r["note"] else ""))
             for r in table]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    return "\n".join("  ".join([*(c[i].ljust(widths[i]) for i in range(5)), c[5]]).rstrip()
                     for c in cells)

"""``heads explain``: which tokens a head's CLS token attends to, over one video's timeline.

VTN (Neimark et al. 2021, Fig. 3) and STAM (Sharir et al. 2021, Fig. 2) show the attention of
the classification token on each frame to explain a prediction. Heads with a CLS token expose
``cls_attention(x, mask) -> (B, T)`` (the last layer's CLS-to-token weights, averaged over
attention heads); two-stream heads (STAN: one CLS per stream) take ``(x_1, mask_1, x_2,
mask_2)`` and return one (B, T_i) per stream. This module runs it on one stored video and plots
the weights against the tokens' time spans (scenes or frames, from the store's
``start_sec``/``end_sec``), one row per stream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from heads.data import _in_memory


def heads_with_cls_attention() -> list[str]:
    """Registered heads whose class defines ``cls_attention``."""
    from heads.models import get_head_class, list_heads

    return [h for h in list_heads() if hasattr(get_head_class(h), "cls_attention")]


def explain_video(
    run_dir: str | Path, video_id: str, *, which: str = "best", store: str | Path | None = None,
    out: str | Path | None = None,
) -> tuple[pl.DataFrame, Path]:
    """CLS attention of a trained run on every token of one video, as a table and a plot.

    Args:
        run_dir: A run of a head with a CLS token (see :func:`heads_with_cls_attention`).
        video_id: A video stored ``ok`` in the run's feature set.
        which: ``best`` or ``last`` checkpoint.
        store: Store root (default: the run's).
        out: PNG path (default: ``<run_dir>/explain/<video>.png``).

    Returns:
        ``(table, png)``: ``token``, ``start_sec``, ``end_sec``, ``scene_idx``, ``weight`` (sums
        to 1 minus the CLS's weight on itself, per stream), plus ``stream`` (the feature set's
        backbone) for two-stream heads; and the plot's path.

    Raises:
        ValueError: the head has no CLS attention to show.
        KeyError: the video is not stored in the run's feature set.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from heads.evaluate import load_run
    from pipeline.store import video_key

    run = load_run(run_dir, which=which, device="cpu")  # one video: attention maps on the CPU
    head = run.checkpoint["head"]
    if not hasattr(run.model, "cls_attention"):
        raise ValueError(
            f"head {head!r} has no CLS token to explain; heads that have one: "
            f"{', '.join(heads_with_cls_attention())}"
        )
    feature_sets = run.feature_sets(store)
    videos = [fs.read(video_id) for fs in feature_sets]
    streams = run.standardizer.apply([_in_memory(v.tokens) for v in videos])
    if getattr(run.model, "uses_token_times", False):  # one more stream: the token times
        streams.append(np.stack([videos[0].start_sec, videos[0].end_sec], axis=1))
    inputs = []
    for x in streams:
        x = torch.from_numpy(np.ascontiguousarray(x)).float().unsqueeze(0)  # (1, T, D)
        inputs += [x, torch.ones(x.shape[:2], dtype=torch.bool)]  # mask (1, T): no padding
    with torch.no_grad():
        weights = run.model.cls_attention(*inputs)
    weights = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    weights = [w[0].float().numpy().astype(np.float64) for w in weights]  # (T_i,) per stream
    names = ([fs.spec.get("backbone", fs.name) for fs in feature_sets] if len(videos) > 1
             else [None])
    table = pl.concat([
        pl.DataFrame({
            "stream": [name or ""] * len(video.start_sec),
            "token": np.arange(len(video.start_sec)),
            "start_sec": np.asarray(video.start_sec, dtype=np.float64),
            "end_sec": np.asarray(video.end_sec, dtype=np.float64),
            "scene_idx": np.asarray(video.scene_idx, dtype=np.int64),
            "weight": w,
        })
        for name, video, w in zip(names, videos, weights)
    ])
    if len(videos) == 1:
        table = table.drop("stream")

    out = Path(out) if out else run.run_dir / "explain" / f"{video_key(video_id)}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(videos), 1, figsize=(10, 3 * len(videos)), squeeze=False)
    for ax, name, video, w in zip(axes[:, 0], names, videos, weights):
        start = np.asarray(video.start_sec, dtype=np.float64)
        widths = np.maximum(np.asarray(video.end_sec, dtype=np.float64) - start, 1e-3)
        ax.bar(start, w, width=widths, align="edge", edgecolor="black",
               linewidth=0.5)
        stream = f" ({name} stream)" if name else ""
        ax.set(xlabel="time (s)", ylabel="CLS attention",
               title=f"{head} on {video_id}{stream}: attention of the CLS token on each token")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return table, out

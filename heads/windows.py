"""The LVU protocol of ViS4mer (Islam & Bertasius, ECCV 2022, §4–5): train on random 60 s
windows of a video's token sequence, evaluate by aggregating the predictions of every window.

Windows are cut in time, from the ``start_sec``/``end_sec`` every stored token carries, so one
window covers the same seconds in every stream of a multi-stream head. A token belongs to a
window when its span overlaps the window (a scene that straddles a boundary belongs to both).

- training: :class:`RandomWindowDataset` draws a window start uniformly in
  ``[0, max(0, duration - window_sec)]`` each time a video is fetched;
- evaluation: :func:`tile_windows` tiles ``[0, duration)`` with consecutive windows and
  :func:`predict_videos` averages the head's outputs (logits, or regression values) over a
  video's windows. ``window_sec = 0`` means the whole video is one window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from heads.data import FeatureDataset, collate

# Per video and stream, (T_i, 2) float [start_sec, end_sec] of each token.
Times = Sequence[Sequence[np.ndarray]]


def video_duration_sec(times: Sequence[np.ndarray]) -> float:
    """End of the last token over all streams of one video (0 for a video without tokens)."""
    return max((float(t[:, 1].max()) for t in times if len(t)), default=0.0)


def window_streams(
    streams: Sequence[np.ndarray], times: Sequence[np.ndarray], lo_sec: float, hi_sec: float
) -> list[np.ndarray]:
    """The tokens of every stream overlapping ``[lo_sec, hi_sec)``.

    Args:
        streams: One video's (T_i, D_i) or (T_i, N, D_i) arrays.
        times: The matching (T_i, 2) [start_sec, end_sec] arrays.
        lo_sec: Window start, seconds.
        hi_sec: Window end, seconds.

    Returns:
        Per stream, the overlapping tokens (a view when the stream is sorted by time).
    """
    out = []
    for x, t in zip(streams, times):
        # A zero-length token (start == end) overlaps when it lies inside the window.
        keep = (t[:, 0] < hi_sec) & ((t[:, 1] > lo_sec) | (t[:, 0] >= lo_sec))  # (T_i,)
        idx = np.flatnonzero(keep)
        contiguous = len(idx) and idx[-1] - idx[0] + 1 == len(idx)
        out.append(x[idx[0] : idx[-1] + 1] if contiguous else x[idx])  # a view when sorted
    return out


def tile_windows(
    streams: Sequence[np.ndarray], times: Sequence[np.ndarray], window_sec: float
) -> list[list[np.ndarray]]:
    """Consecutive windows ``[k·w, (k+1)·w)`` tiling one video; windows empty in some stream are
    dropped, and a video with no full window left is one window (the whole video).

    Args:
        streams: One video's token arrays.
        times: The matching (T_i, 2) token times.
        window_sec: Window length w in seconds; 0 for the whole video.

    Returns:
        Per window, one array per stream.
    """
    duration = video_duration_sec(times)
    if window_sec <= 0 or duration <= window_sec:
        return [list(streams)]
    windows = []
    for k in range(math.ceil(duration / window_sec)):
        cut = window_streams(streams, times, k * window_sec, (k + 1) * window_sec)
        if all(len(x) for x in cut):
            windows.append(cut)
    return windows or [list(streams)]


class RandomWindowDataset(FeatureDataset):
    """Training videos as one random ``window_sec`` window each time they are fetched.

    Args:
        tokens: Per video, one array per stream (as :class:`heads.data.FeatureDataset`).
        times: Per video, one (T_i, 2) [start_sec, end_sec] array per stream.
        targets: Encoded targets, first axis N.
        window_sec: Window length in seconds (ViS4mer: 60).
        seed: Seeds the window draws: same seed, same windows in the same order.

    Raises:
        ValueError: ``tokens``, ``times`` and ``targets`` differ in length, or ``window_sec``
            is not positive.
    """

    def __init__(self, tokens, times: Times, targets: np.ndarray, *, window_sec: float, seed: int):
        super().__init__(tokens, targets)
        if len(times) != len(tokens):
            raise ValueError(f"{len(tokens)} videos but {len(times)} token-time lists")
        if window_sec <= 0:
            raise ValueError(f"window_sec must be positive, got {window_sec}")
        self.times = [[np.asarray(t, dtype=np.float64) for t in v] for v in times]
        self.window_sec = window_sec
        self.rng = np.random.default_rng(seed)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        streams, target = super().__getitem__(i)
        times = self.times[i]
        duration = video_duration_sec(times)
        lo_sec = self.rng.uniform(0.0, max(0.0, duration - self.window_sec))
        cut = window_streams(streams, times, lo_sec, lo_sec + self.window_sec)
        if not all(len(x) for x in cut):  # a gap in some stream: fall back to the whole video
            cut = streams
        return cut, target


@torch.no_grad()
def predict_videos(
    model: nn.Module,
    tokens: Sequence[Sequence[np.ndarray]],
    times: Times | None = None,
    *,
    window_sec: float = 0.0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    autocast=None,
) -> np.ndarray:
    """Per-video head outputs, averaged over the video's windows (ViS4mer §5 evaluation).

    Args:
        model: The head (put in eval mode here).
        tokens: Per video, one (T_i, D_i) or (T_i, N, D_i) array per stream, standardised.
        times: Per video, one (T_i, 2) [start_sec, end_sec] array per stream; needed when
            ``window_sec > 0``.
        window_sec: Window length in seconds; 0 runs each video whole.
        batch_size: Windows per forward pass.
        device: Where the model lives.
        autocast: Optional context-manager factory wrapping each forward (mixed precision).

    Returns:
        (N, K) or (N, 1) float32, row i the mean of video i's window outputs.

    Raises:
        ValueError: ``window_sec > 0`` without ``times``.
    """
    if window_sec > 0 and times is None:
        raise ValueError("window_sec > 0 needs the token times of every video")
    model.eval()

    def run(batch: list) -> torch.Tensor:
        inputs, _ = collate([([torch.from_numpy(np.ascontiguousarray(x)) for x in w], dummy)
                             for w in batch])
        inputs = [t.to(device) for t in inputs]
        with autocast() if autocast is not None else nullcontext():
            return model(*inputs).float().cpu()

    # Windows are cut video by video and run batch by batch, so videos streamed from the store
    # (heads.data.StoredVideos) are read once each and never all held at once.
    dummy = torch.zeros(())  # targets are not needed to predict
    outputs, owners, pending = [], [], []
    for i in range(len(tokens)):
        streams = tokens[i]
        windows = tile_windows(streams, times[i], window_sec) if window_sec > 0 else [streams]
        for window in windows:
            pending.append(window)
            owners.append(i)
            if len(pending) == batch_size:
                outputs.append(run(pending))
                pending = []
    if pending:
        outputs.append(run(pending))
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    window_out = torch.cat(outputs).numpy()  # (num_windows, K)
    owners_arr = np.asarray(owners)
    sums = np.zeros((len(tokens), window_out.shape[1]), dtype=np.float64)
    np.add.at(sums, owners_arr, window_out)
    counts = np.bincount(owners_arr, minlength=len(tokens))[:, None]  # (N, 1)
    return (sums / counts).astype(np.float32)

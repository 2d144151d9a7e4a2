"""The LVU protocol of ViS4mer (Islam & Bertasius, ECCV 2022): train on random 60 s windows
of a video's token sequence, evaluate by aggregating the predictions of every window.

The paper says only "we use standard splits and train our model using video clips of 60
seconds" (§5.1); how a video is evaluated is not stated. The official code defines it
(``datasets/lvu_dataset.py``, ``run_lvu.py``) and longvid follows it:

- training: :class:`RandomWindowDataset` draws a window start uniformly in
  ``[0, max(0, duration - window_sec)]`` each time a video is fetched (official: a random
  integer start);
- evaluation: :func:`eval_windows` gives every full window ``[s, s + window_sec)`` with start
  ``s = 0, 1, …, duration − window_sec`` (stride ``eval_stride_sec``, official 1 s); a video no
  longer than a window is one window (official: zero-padded to 60 s). :func:`predict_videos`
  averages softmax probabilities over a video's windows for classification (official
  ``pred_agg += softmax(...)``, then argmax), sigmoid probabilities for multi-label (LVU has no
  multi-label task: longvid's extension of the same rule) and raw outputs for regression (official
  ``np.mean``), then returns logits of the averaged probabilities, so metrics and losses read
  them as any head output. ``window_sec = 0`` means the whole video is one window.

Windows are cut in time, from the ``start_sec``/``end_sec`` every stored token carries, so one
window covers the same seconds in every stream of a multi-stream head. A token belongs to a
window when its span overlaps the window (a scene that straddles a boundary belongs to both).
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


def eval_windows(duration_sec: float, window_sec: float, stride_sec: float = 1.0
                 ) -> list[tuple[float, float]]:
    """The evaluation windows of one video (official ViS4mer ``lvu_dataset.py``).

    Args:
        duration_sec: The video's duration, seconds.
        window_sec: Window length, seconds (ViS4mer: 60); 0 = the whole video.
        stride_sec: Seconds between window starts (official: 1).

    Returns:
        ``[(start_sec, end_sec), ...]``: every full window with start 0, stride, 2·stride, …
        up to ``duration_sec − window_sec``; a video no longer than one window gives
        ``[(0, window_sec)]`` (``[(0, duration_sec)]`` when ``window_sec`` is 0). E.g.
        ``eval_windows(150, 60)`` is ``[(0, 60), (1, 61), …, (90, 150)]``: 91 windows.

    Raises:
        ValueError: ``stride_sec`` is not positive or ``window_sec`` is negative.
    """
    if stride_sec <= 0:
        raise ValueError(f"eval_stride_sec must be positive, got {stride_sec}")
    if window_sec < 0:
        raise ValueError(f"window_sec must be non-negative, got {window_sec}")
    if window_sec == 0:
        return [(0.0, float(duration_sec))]
    num = int(math.floor((duration_sec - window_sec) / stride_sec + 1e-9)) + 1
    return [(k * stride_sec, k * stride_sec + window_sec) for k in range(max(1, num))]


def video_windows(streams: Sequence[np.ndarray], times: Sequence[np.ndarray], window_sec: float,
                  stride_sec: float = 1.0) -> list[list[np.ndarray]]:
    """One video's tokens cut into its :func:`eval_windows`; windows empty in some stream are
    dropped, and a video left without any is one window (the whole video).

    Args:
        streams: One video's token arrays.
        times: The matching (T_i, 2) token times.
        window_sec: Window length in seconds; 0 for the whole video.
        stride_sec: Seconds between window starts.

    Returns:
        Per window, one array per stream (views where the tokens are sorted by time).
    """
    duration = video_duration_sec(times)
    if window_sec <= 0 or duration <= window_sec:
        return [list(streams)]
    windows = []
    for lo_sec, hi_sec in eval_windows(duration, window_sec, stride_sec):
        cut = window_streams(streams, times, lo_sec, hi_sec)
        if all(len(x) for x in cut):
            windows.append(cut)
    return windows or [list(streams)]


def average_windows(outputs: np.ndarray, task_kind: str) -> np.ndarray:
    """One video's window outputs (W, K) averaged as the LVU protocol does (module docstring).

    Returns:
        (K,) float32: for W = 1 the window's output itself; else, for classification
        ``log(mean softmax)``, for multi-label ``logit(mean sigmoid)``, for regression the mean.
    """
    if task_kind not in ("classification", "multilabel", "regression"):
        raise ValueError(f"unknown task kind {task_kind!r}")
    if len(outputs) == 1:
        return outputs[0].astype(np.float32)
    x = torch.from_numpy(np.asarray(outputs, dtype=np.float64))  # (W, K)
    if task_kind == "classification":
        out = torch.softmax(x, dim=1).mean(0).clamp_min(1e-300).log()
    elif task_kind == "multilabel":
        out = torch.logit(torch.sigmoid(x).mean(0), eps=1e-12)
    else:
        out = x.mean(0)  # regression
    return out.numpy().astype(np.float32)


def clip_streams(streams: Sequence[np.ndarray], times: Sequence[np.ndarray], lo_sec: float,
                 hi_sec: float, num_frames: int) -> list[np.ndarray]:
    """``num_frames`` tokens per stream at evenly spaced instants of ``[lo_sec, hi_sec]`` (VTN
    §4.1: a clip's frames "subsampled uniformly to a fixed number of frames N"; official
    ``temporal_sampling``: ``linspace`` over the clip, clamped to the video).

    At each instant the token whose span holds it is taken (the last token starting at or before
    it; the first token before the first start). Tokens coarser than the instants repeat, as the
    official code repeats frames of a clip longer than the video.

    Args:
        streams: One video's (T_i, ...) arrays, sorted by start time.
        times: The matching (T_i, 2) [start_sec, end_sec] arrays.
        lo_sec: Clip start, seconds.
        hi_sec: Clip end, seconds.
        num_frames: N.

    Returns:
        Per stream, an (N, ...) array.
    """
    instants = np.linspace(lo_sec, hi_sec, num_frames)  # (N,)
    out = []
    for x, t in zip(streams, times):
        idx = np.searchsorted(t[:, 0], instants, side="right") - 1  # (N,)
        out.append(x[np.clip(idx, 0, len(t) - 1)])
    return out


def random_span(duration_sec: float, length_sec: float, rng: np.random.Generator
                ) -> tuple[float, float]:
    """A random ``[start, end]`` of ``length_sec`` inside a video: the start uniform in
    ``[0, max(0, duration - length)]`` (official ViS4mer and VTN), the end capped at the
    duration."""
    lo_sec = rng.uniform(0.0, max(0.0, duration_sec - length_sec))
    return lo_sec, min(lo_sec + length_sec, duration_sec)


class TimedVideos(Sequence):
    """Videos with one more stream: their first stream's token times, (T, 2) float32
    [start_sec, end_sec], for heads whose ``uses_token_times`` is true (VTN's frame-index
    positions). Attributes other than the item access come from the wrapped videos (e.g.
    :class:`heads.data.StoredVideos`'s ``parts``)."""

    def __init__(self, tokens: Sequence, times: Times):
        self.tokens, self.times = tokens, times

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> list[np.ndarray]:
        return [*self.tokens[i], np.asarray(self.times[i][0], dtype=np.float32)]

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("tokens", "times"):
            raise AttributeError(name)
        return getattr(self.tokens, name)


def with_token_times(tokens: Sequence, times: Times) -> tuple[TimedVideos, list]:
    """``(tokens, times)`` with the times stream appended to every video (see
    :class:`TimedVideos`); the new stream's own times are the first stream's, so windows and
    clips cut it exactly as they cut that stream."""
    return TimedVideos(tokens, times), [[*t, t[0]] for t in times]


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

    def _draw(self, i: int):
        """Video ``i``'s streams, target, times and a random span (:func:`random_span`)."""
        streams, target = super().__getitem__(i)
        times = self.times[i]
        lo_sec, hi_sec = random_span(video_duration_sec(times), self.window_sec, self.rng)
        return streams, target, times, lo_sec, hi_sec

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        streams, target, times, lo_sec, _ = self._draw(i)
        cut = window_streams(streams, times, lo_sec, lo_sec + self.window_sec)
        if not all(len(x) for x in cut):  # a gap in some stream: fall back to the whole video
            cut = streams
        return cut, target


class RandomClipDataset(RandomWindowDataset):
    """Training videos as one random clip each time they are fetched: VTN §4.1 ("a random
    frame as the starting point, then sampling 2.56 or 5.12 seconds as the video's temporal
    footprint ... subsampled uniformly to a fixed number of frames N (N = 16, 32)").

    The start is uniform in ``[0, max(0, duration - clip_sec)]`` (official ``random.uniform(0,
    delta)``), the clip ends at ``min(start + clip_sec, duration)``, and :func:`clip_streams`
    takes ``num_frames`` tokens of every stream.

    Args:
        tokens: Per video, one array per stream.
        times: Per video, one (T_i, 2) [start_sec, end_sec] array per stream.
        targets: Encoded targets, first axis N.
        clip_sec: The temporal footprint, seconds (VTN: 2.56 or 5.12).
        num_frames: Tokens per clip (VTN: 16 or 32).
        seed: Seeds the clip draws.

    Raises:
        ValueError: lengths differ, ``clip_sec`` is not positive or ``num_frames`` below 1.
    """

    def __init__(self, tokens, times: Times, targets: np.ndarray, *, clip_sec: float,
                 num_frames: int, seed: int):
        super().__init__(tokens, times, targets, window_sec=clip_sec, seed=seed)
        if num_frames < 1:
            raise ValueError(f"train_clip_frames must be at least 1, got {num_frames}")
        self.num_frames = num_frames

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        streams, target, times, lo_sec, hi_sec = self._draw(i)
        return clip_streams(streams, times, lo_sec, hi_sec, self.num_frames), target


@torch.no_grad()
def predict_videos(
    model: nn.Module,
    tokens: Sequence[Sequence[np.ndarray]],
    times: Times | None = None,
    *,
    task_kind: str,
    window_sec: float = 0.0,
    stride_sec: float = 1.0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    autocast=None,
) -> np.ndarray:
    """Per-video head outputs, aggregated over the video's evaluation windows (the LVU
    protocol of ViS4mer's official code: see the module docstring).

    Args:
        model: The head (put in eval mode here).
        tokens: Per video, one (T_i, D_i) or (T_i, N, D_i) array per stream, standardised.
        times: Per video, one (T_i, 2) [start_sec, end_sec] array per stream; needed when
            ``window_sec > 0``.
        task_kind: ``classification``, ``multilabel`` or ``regression``: how windows are
            averaged (:func:`average_windows`).
        window_sec: Window length in seconds; 0 runs each video whole.
        stride_sec: Seconds between evaluation window starts (official: 1).
        batch_size: Windows per forward pass.
        device: Where the model lives.
        autocast: Optional context-manager factory wrapping each forward (mixed precision).

    Returns:
        (N, K) or (N, 1) float32: row i the head's output for video i (one window), or the
        logits of its windows' averaged probabilities (regression: their mean).

    Raises:
        ValueError: ``window_sec > 0`` without ``times``, or an unknown ``task_kind``.
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
        windows = (video_windows(streams, times[i], window_sec, stride_sec) if window_sec > 0
                   else [streams])
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
    window_out = torch.cat(outputs).numpy()  # (num_windows, K), videos one after another
    counts = np.bincount(np.asarray(owners), minlength=len(tokens))  # (N,), each >= 1
    per_video = np.split(window_out, np.cumsum(counts)[:-1])
    return np.stack([average_windows(w, task_kind) for w in per_video])  # (N, K)

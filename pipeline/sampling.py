"""Sampling plans: which decoded frames each backbone sees, and the span each token covers.

Every plan cuts a video into **windows**, one per token, and samples frames inside each:
the centre frame for frame backbones, ``F`` frames spread uniformly for clip backbones.

| plan | used by | windows |
|---|---|---|
| ``scene`` | STAN §3 | one per scene (PySceneDetect cuts); clips of 12 frames |
| ``uniform`` | STAM §3 | ``num_frames`` (16) equal segments of the video |
| ``fps`` | ViS4mer §4 | one per ``1 / fps`` seconds (1 frame/s) |
| ``full`` | VTN §4 | ``full_num_frames`` (250) equal segments: full-video inference |
| ``clips`` | R(2+1)D / SlowFast | consecutive ``clip_len_sec`` clips tiled over the video |

Windows and samples are cut in **seconds**, from each frame's presentation time (PTS), never
from frame indices and the average frame rate: on a variable-frame-rate video (phone footage,
screen recordings, edited clips) ``frame_idx / fps`` can be seconds away from when the frame is
shown. A window's samples are the frames shown nearest to evenly spaced instants of it
(:func:`sample_instants`).

Frames arrive one at a time from the single decode. Fixed plans know their windows up front
(from the container's duration) and keep only the frames some window needs. Scene windows
are only known once the detector reports the next cut, so frames of the open scene are
buffered (as decoded pictures, converted only when sampled); when the buffer is full (frames
or MiB) every other frame is dropped and the keep-stride doubles, so
memory stays bounded whatever the scene length and a sample lands at most ``stride / 2`` frames
from the frame nearest its instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.decode import Frame

PLANS = ("scene", "uniform", "fps", "full", "clips")
# Two frames this close to an instant (seconds) are a tie, which goes to the earlier frame: a
# segment centre on a constant-rate video often falls exactly between two frames, and float
# rounding must not decide which one it gets.
TIE_SEC = 1e-6


@dataclass(frozen=True)
class PlanConfig:
    """A sampling plan and its knobs (only the chosen plan's knobs matter).

    Attributes:
        name: One of :data:`PLANS`.
        num_frames: ``uniform``: tokens per video (STAM uses 16).
        fps: ``fps``: tokens per second (ViS4mer uses 1).
        full_num_frames: ``full``: tokens per video (VTN's full-video inference uses 250).
        clip_len_sec: ``clips``: length of each clip window, seconds.
        frames_per_clip: Frames a clip backbone sees per window when its architecture allows
            any number (``scene``: 12, STAN §3); ``None`` = the backbone's own clip length.
        max_buffered_frames: ``scene``: frames of one scene held before decimation.
        max_buffered_mib: ``scene``: memory of the held frames before decimation, MiB. Frames
            are held as decoded pictures (YUV 4:2:0 at the source resolution: 1.4 MB at 720p,
            3.1 MB at 1080p) so that only sampled ones are ever converted; this bounds the
            buffer at high resolutions, where 256 frames would take 800 MB.
    """

    name: str = "scene"
    num_frames: int = 16
    fps: float = 1.0
    full_num_frames: int = 250
    clip_len_sec: float = 2.0
    frames_per_clip: int | None = 12
    max_buffered_frames: int = 256
    max_buffered_mib: float = 256.0

    def __post_init__(self) -> None:
        if self.name not in PLANS:
            raise ValueError(f"unknown plan {self.name!r}; valid: {', '.join(PLANS)}")
        positive = {
            "num_frames": self.num_frames,
            "fps": self.fps,
            "full_num_frames": self.full_num_frames,
            "clip_len_sec": self.clip_len_sec,
            "max_buffered_frames": self.max_buffered_frames,
            "max_buffered_mib": self.max_buffered_mib,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"plan {self.name}: {key} must be positive, got {value}")

    def identity(self) -> dict:
        """The knobs that shape this plan's tokens (fingerprinted with the feature set)."""
        own = {
            "scene": {"frames_per_clip": self.frames_per_clip,
                      "max_buffered_frames": self.max_buffered_frames,
                      "max_buffered_mib": self.max_buffered_mib},
            "uniform": {"num_frames": self.num_frames},
            "fps": {"fps": self.fps},
            "full": {"full_num_frames": self.full_num_frames},
            "clips": {"clip_len_sec": self.clip_len_sec},
        }[self.name]
        if self.name != "scene":
            own["frames_per_clip"] = self.frames_per_clip
        # Windows and samples by presentation time (before: frame index / average fps).
        return {"name": self.name, **own, "timing": "pts"}


@dataclass
class Window:
    """One token's span and the frames sampled from it.

    Attributes:
        token_idx: 0-based position of the token in the video.
        start_sec: Start time, seconds from the first frame's presentation time.
        end_sec: End time (exclusive), seconds.
        scene_idx: Scene of the window (its own index for ``scene``; filled in at the end of the
            video for the other plans; -1 until then).
        frames: Frames per requested count F: (F, H, W, 3) uint8 RGB; F = 1 is the centre frame.
        frame_idx: Per count F, the (F,) decode-order indices of the frames in ``frames``.
    """

    token_idx: int
    start_sec: float
    end_sec: float
    scene_idx: int = -1
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    frame_idx: dict[int, np.ndarray] = field(default_factory=dict)


def window_batch(windows: list[Window], count: int) -> np.ndarray:
    """The backbone input of ``windows``: (S, H, W, 3) centre frames for ``count == 1`` (frame
    backbones), else (S, F, H, W, 3) clips of ``count`` frames; uint8 RGB."""
    if count == 1:
        return np.stack([w.frames[1][0] for w in windows])
    return np.stack([w.frames[count] for w in windows])


def sample_instants(start_sec: float, end_sec: float, count: int,
                    rng: np.random.Generator | None = None,
                    offset: float | None = None) -> np.ndarray:
    """(count,) instants, seconds, sampled in ``[start_sec, end_sec)``: the centres of
    ``count`` equal segments (``count == 1``: the window's centre), or with ``rng`` one
    uniformly random instant in each segment (TSN-style training sampling: STAT's "one random
    frame per segment"), or with ``offset`` the instant that fraction of the way into each
    segment (0.5 = the centre; temporal test view k of K: ``(k + 0.5) / K``). Each instant is
    then shown by the frame whose presentation time is nearest to it.

    Instants, not frame indices: on a variable-frame-rate video frame indices are not
    evenly spaced in time, so sampling by index would crowd samples where the frame rate is
    high (e.g. 2.5 samples per second, then 0.8, for a 1-fps plan)."""
    if rng is not None and offset is not None:
        raise ValueError("sample_instants: give rng (random instants) or offset, not both")
    if offset is not None and not 0 <= offset < 1:
        raise ValueError(f"sample_instants: offset must be in [0, 1), got {offset}")
    step = (end_sec - start_sec) / count
    offsets = rng.random(count) if rng is not None else (0.5 if offset is None else offset)
    return start_sec + step * (np.arange(count) + offsets)


def fixed_windows(config: PlanConfig, duration_sec: float) -> list[tuple[float, float]]:
    """Window bounds ``(start_sec, end_sec)`` of a fixed plan over a video of
    ``duration_sec`` seconds, cut by time (never by frame count, which is wrong on
    variable-frame-rate videos).

    ``uniform`` / ``full``: ``num_frames`` / ``full_num_frames`` equal segments. ``fps``: one
    window per ``1 / fps`` s, ``clips``: one per ``clip_len_sec``; the last window ends with the
    video (it may be shorter).

    Raises:
        ValueError: ``scene`` (its windows come from cuts) or a video of no duration.
    """
    if not duration_sec > 0:
        raise ValueError(f"a video of duration {duration_sec} s has no windows")
    if config.name in ("uniform", "full"):
        count = config.num_frames if config.name == "uniform" else config.full_num_frames
        bounds = np.linspace(0.0, duration_sec, count + 1)
        return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    if config.name == "fps":
        step_sec = 1.0 / config.fps
    elif config.name == "clips":
        step_sec = config.clip_len_sec
    else:
        raise ValueError(f"plan {config.name!r} has no fixed windows")
    # A float duration a hair past a window boundary (10.000001 s) opens no empty window.
    count = max(1, int(np.ceil(duration_sec / step_sec - 1e-6)))
    starts = np.arange(count) * step_sec
    return list(zip(starts.tolist(), np.append(starts[1:], duration_sec).tolist()))


class FixedSampler:
    """Samples windows known in advance, keeping only the frames some window needs.

    Each window's instants (:func:`sample_instants`) are shown by the frame whose presentation
    time is nearest (ties: the earlier frame). Frames arrive in presentation order, so the
    sampler holds at most the previous frame (as a decoded picture) besides the sampled ones.

    Args:
        windows: ``(start_sec, end_sec)`` per token, in order.
        counts: Frame counts to sample per window (1 = centre frame, F = clip).
        rng: Draws each sample at a random instant of its segment instead of its centre
            (training-time sampling; extraction never passes one).
        offset: Samples each segment at this fraction of it instead of its centre (temporal
            test views; extraction never passes one).
    """

    def __init__(self, windows: list[tuple[float, float]], counts: set[int],
                 rng: np.random.Generator | None = None, offset: float | None = None):
        self._windows = [Window(i, s, e) for i, (s, e) in enumerate(windows)]
        targets = [
            (float(instant), i, count, slot)
            for i, (s, e) in enumerate(windows)
            for count in sorted(counts)
            for slot, instant in enumerate(sample_instants(s, e, count, rng, offset))
        ]
        targets.sort()
        self._targets = targets  # (instant, window, count, slot) by instant
        self._next_target = 0
        # A window is complete once every target up to its last one is assigned.
        self._last_target = [0] * len(windows)
        for rank, (_, i, _, _) in enumerate(targets):
            self._last_target[i] = rank
        self._got: list[dict[int, list]] = [
            {count: [None] * count for count in counts} for _ in windows
        ]
        self._next = 0  # first window not emitted yet
        self._previous: Frame | None = None

    def needed_frames(self, times_sec) -> set[int]:
        """Indices of the frames this sampler takes from a video whose frames are shown at
        ``times_sec`` ((N,) seconds, presentation order): the frame nearest each instant.

        Pushing only these frames (any superset of them, in order) yields the same windows as
        pushing every frame: the frame nearest an instant is the nearest among any subset that
        holds it (:mod:`pipeline.sparse_decode` decodes no others)."""
        times = np.asarray(times_sec, dtype=np.float64)
        return {_nearest(times, instant) for instant, _, _, _ in self._targets}

    def push(self, frame: Frame, cuts: list[int]) -> list[Window]:
        """Add a frame; returns the windows it completes. ``cuts`` are ignored."""
        previous = self._previous
        while (self._next_target < len(self._targets)
               and self._targets[self._next_target][0] <= frame.time_sec):
            instant = self._targets[self._next_target][0]
            nearer = (previous if previous is not None
                      and instant - previous.time_sec <= frame.time_sec - instant + TIE_SEC
                      else frame)
            self._assign(nearer)
        self._previous = frame
        return self._emit_complete()

    def finish(self, cuts: list[int]) -> list[Window]:
        """Emit the windows still open: instants past the last frame (a video shorter than its
        header announced) are shown by the last frame."""
        if self._previous is None:
            return []
        while self._next_target < len(self._targets):
            self._assign(self._previous)
        return self._emit_complete()

    def _assign(self, frame: Frame) -> None:
        _, window, count, slot = self._targets[self._next_target]
        self._got[window][count][slot] = frame
        self._next_target += 1

    def _emit_complete(self) -> list[Window]:
        done = []
        while (self._next < len(self._windows)
               and self._last_target[self._next] < self._next_target):
            window = self._windows[self._next]
            got = self._got[self._next]
            window.frames = {count: np.stack([f.rgb for f in frames])
                             for count, frames in got.items()}  # count -> (F, H, W, 3)
            window.frame_idx = {count: np.array([f.frame_idx for f in frames])
                                for count, frames in got.items()}  # count -> (F,)
            self._got[self._next] = {}
            done.append(window)
            self._next += 1
        return done


class SceneSampler:
    """Windows = scenes: turns a stream of frames plus cut positions into sampled windows.

    A scene runs from the presentation time of its first frame to that of the next scene's
    first frame (the last one to the end of the video); its samples are the buffered frames
    nearest to :func:`sample_instants` of that span.

    Args:
        counts: Frame counts to sample per scene (1 = centre frame, F = clip).
        fps: Average frame rate, frames/s (only to end a video whose header has no duration).
        duration_sec: The video's duration from its header (0: unknown), ends the last scene.
        max_buffered_frames: Frames of one scene held before decimation.
        max_buffered_mib: Memory of the held frames (decoded pictures) before decimation, MiB.
    """

    def __init__(self, counts: set[int], fps: float, *, duration_sec: float = 0.0,
                 max_buffered_frames: int = 256, max_buffered_mib: float = 256.0):
        self.counts = counts
        self.fps = fps
        self.duration_sec = duration_sec
        self.max_buffered_frames = max_buffered_frames
        self.max_buffered_bytes = int(max_buffered_mib * 2**20)
        # Buffered frames of the open scene (and beyond a cut), still as decoded pictures: only
        # the few a scene samples are ever converted.
        self._frames: list[Frame] = []
        self._buffered_bytes = 0
        self._stride = 1
        self._scene_start = 0
        self._num_scenes = 0
        self._times: list[float] = []  # presentation time of every frame so far, by index

    def push(self, frame: Frame, cuts: list[int]) -> list[Window]:
        """Add a frame; ``cuts`` are scene-start indices the detector just reported."""
        self._times.append(frame.time_sec)
        if (frame.frame_idx - self._scene_start) % self._stride == 0:
            self._frames.append(frame)
            self._buffered_bytes += frame.nbytes
        scenes = [self._close(cut) for cut in sorted(cuts) if cut > self._scene_start]
        while len(self._frames) > 1 and (
            len(self._frames) > self.max_buffered_frames
            or self._buffered_bytes > self.max_buffered_bytes
        ):
            self._frames = self._frames[::2]
            self._buffered_bytes = sum(f.nbytes for f in self._frames)
            self._stride *= 2
        return scenes

    def finish(self, cuts: list[int]) -> list[Window]:
        """Close the remaining scenes at the end of the video."""
        last = len(self._times) - 1
        scenes = [self._close(cut) for cut in sorted(cuts) if self._scene_start < cut <= last]
        if last >= self._scene_start:
            scenes.append(self._close(last + 1))
        return scenes

    def _time(self, frame_idx: int) -> float:
        """Presentation time of frame ``frame_idx``; past the last frame, the video's end."""
        if frame_idx < len(self._times):
            return self._times[frame_idx]
        return video_end_sec(self._times[-1], self.fps, self.duration_sec)

    def _close(self, end_frame: int) -> Window:
        inside = [f for f in self._frames if f.frame_idx < end_frame]
        self._frames = [f for f in self._frames if f.frame_idx >= end_frame]
        self._buffered_bytes = sum(f.nbytes for f in self._frames)
        if not inside:  # every frame of a short scene was decimated away: borrow the next one
            inside = self._frames[:1]
        times = np.array([f.time_sec for f in inside])
        window = Window(
            token_idx=self._num_scenes,
            start_sec=self._time(self._scene_start),
            end_sec=self._time(end_frame),
            scene_idx=self._num_scenes,
        )
        picked = {count: [inside[_nearest(times, t)]
                          for t in sample_instants(window.start_sec, window.end_sec, count)]
                  for count in self.counts}
        window.frames = {count: np.stack([f.rgb for f in frames])
                         for count, frames in picked.items()}  # count -> (F, H, W, 3)
        window.frame_idx = {count: np.array([f.frame_idx for f in frames])
                            for count, frames in picked.items()}  # count -> (F,)
        self._num_scenes += 1
        self._scene_start = end_frame
        self._stride = 1
        return window


def video_end_sec(last_frame_sec: float, fps: float, duration_sec: float = 0.0) -> float:
    """End of a video, seconds: its header's duration, unless the header has none or ends
    before the last frame's presentation time; then that time plus one average frame."""
    if duration_sec > last_frame_sec:
        return duration_sec
    return last_frame_sec + 1.0 / fps


def is_variable_frame_rate(times_sec, tolerance: float = 0.25) -> bool:
    """Whether a video's frame intervals (from its presentation times, seconds) differ from
    their median by more than ``tolerance`` (a share) anywhere."""
    gaps = np.diff(np.asarray(times_sec, dtype=np.float64))
    if len(gaps) < 2:
        return False
    median = float(np.median(gaps))
    return bool(np.abs(gaps - median).max() > tolerance * median)


def make_sampler(config: PlanConfig, *, fps: float, duration_sec: float, counts: set[int],
                 rng: np.random.Generator | None = None, offset: float | None = None):
    """The sampler of ``config``'s plan for a video of ``duration_sec`` seconds (from its
    header) at an average ``fps`` frames/s; ``rng``: random instants per segment, ``offset``:
    that fraction of each segment instead of its centre (fixed plans only,
    :class:`FixedSampler`).

    Raises:
        ValueError: ``rng`` or ``offset`` with the ``scene`` plan.
    """
    if (rng is not None or offset is not None) and config.name == "scene":
        raise ValueError("random or offset sampling instants need a fixed plan (uniform, fps, "
                         "full, clips), not scene")
    if config.name == "scene":
        return SceneSampler(counts, fps, duration_sec=duration_sec,
                            max_buffered_frames=config.max_buffered_frames,
                            max_buffered_mib=config.max_buffered_mib)
    return FixedSampler(fixed_windows(config, duration_sec), counts, rng, offset)


def stream_windows(frames, sampler, segmenter=None, cuts: list[int] | None = None,
                   times: list[float] | None = None):
    """Windows of one video in time order, each as soon as the frames it samples are decoded.

    Args:
        frames: The video's :class:`~pipeline.decode.Frame` s in decode order (a reader).
        sampler: From :func:`make_sampler`.
        segmenter: A :class:`~pipeline.scenes.SceneSegmenter` that sees every frame, or ``None``
            (no detection: no cuts).
        cuts: If given, every cut the detector reports is appended to it (first frame of each
            new scene), e.g. to assign scene indices once the video is done.
        times: If given, every frame's presentation time (seconds) is appended to it.

    Yields:
        :class:`Window` s with their sampled frames.
    """
    for _, window in stream_plan_windows(frames, {None: sampler}, segmenter, cuts, times):
        yield window


def stream_plan_windows(frames, samplers: dict, segmenter=None, cuts: list[int] | None = None,
                        times: list[float] | None = None):
    """:func:`stream_windows` for several plans over one decode: every frame and every cut goes
    to each sampler, so each plan's windows are exactly those a decode of its own would give.

    Args:
        samplers: ``{key: sampler}``, e.g. one per :class:`PlanConfig`.
        frames, segmenter, cuts, times: As for :func:`stream_windows`.

    Yields:
        ``(key, window)``: each plan's windows in time order (plans interleaved).
    """
    for frame in frames:
        if times is not None:
            times.append(frame.time_sec)
        new_cuts = segmenter.push(frame) if segmenter is not None else []
        if cuts is not None:
            cuts += new_cuts
        for key, sampler in samplers.items():
            for window in sampler.push(frame, new_cuts):
                yield key, window
    last_cuts = segmenter.finish() if segmenter is not None else []
    if cuts is not None:
        cuts += last_cuts
    for key, sampler in samplers.items():
        for window in sampler.finish(last_cuts):
            yield key, window


def _nearest(sorted_values: np.ndarray, target: float) -> int:
    """Position in ``sorted_values`` of the value nearest ``target`` (ties: the earlier)."""
    pos = int(np.searchsorted(sorted_values, target))
    if pos == 0:
        return 0
    if pos == len(sorted_values):
        return len(sorted_values) - 1
    later_nearer = sorted_values[pos] - target < target - sorted_values[pos - 1] - TIE_SEC
    return pos if later_nearer else pos - 1

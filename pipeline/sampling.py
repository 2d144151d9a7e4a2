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

Frames arrive one at a time from the single decode. Fixed plans know their windows up front
(from the container's frame count) and keep only the frames some window needs. Scene windows
are only known once the detector reports the next cut, so frames of the open scene are
buffered (as decoded pictures, converted only when sampled); when the buffer is full (frames
or MiB) every other frame is dropped and the keep-stride doubles, so
memory stays bounded whatever the scene length and a sample lands at most ``stride / 2`` frames
from its exact uniform position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.decode import Frame

PLANS = ("scene", "uniform", "fps", "full", "clips")


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
        return {"name": self.name, **own}


@dataclass
class Window:
    """One token's span and the frames sampled from it.

    Attributes:
        token_idx: 0-based position of the token in the video.
        start_frame: First frame index (inclusive).
        end_frame: Last frame index + 1 (exclusive).
        start_sec: Start time, seconds.
        end_sec: End time, seconds.
        scene_idx: Scene of the window (its own index for ``scene``; filled in at the end of the
            video for the other plans; -1 until then).
        frames: Frames per requested count F: (F, H, W, 3) uint8 RGB; F = 1 is the centre frame.
    """

    token_idx: int
    start_frame: int
    end_frame: int
    start_sec: float
    end_sec: float
    scene_idx: int = -1
    frames: dict[int, np.ndarray] = field(default_factory=dict)


def sample_positions(start_frame: int, end_frame: int, count: int) -> np.ndarray:
    """Frame indices sampled in ``[start_frame, end_frame)``: the centre for ``count == 1``,
    else ``count`` indices spread uniformly from the first to the last frame (repeats allowed
    when the window is shorter than ``count``)."""
    if count == 1:
        return np.array([(start_frame + end_frame - 1) // 2])
    return np.round(np.linspace(start_frame, end_frame - 1, count)).astype(int)


def fixed_windows(config: PlanConfig, num_frames: int, fps: float) -> list[tuple[int, int]]:
    """Window bounds ``(start_frame, end_frame)`` of a fixed plan over a video of
    ``num_frames`` frames at ``fps`` frames/s.

    Raises:
        ValueError: ``scene`` (its windows come from cuts) or an empty video.
    """
    if num_frames <= 0:
        raise ValueError("a video with no frames has no windows")
    if config.name in ("uniform", "full"):
        count = config.num_frames if config.name == "uniform" else config.full_num_frames
        bounds = np.round(np.linspace(0, num_frames, count + 1)).astype(int)
        # A video shorter than `count` frames: windows of one frame, repeated.
        return [(min(s, num_frames - 1), max(e, min(s, num_frames - 1) + 1))
                for s, e in zip(bounds[:-1], bounds[1:])]
    if config.name == "fps":
        step = fps / config.fps
    elif config.name == "clips":
        step = config.clip_len_sec * fps
    else:
        raise ValueError(f"plan {config.name!r} has no fixed windows")
    bounds = np.round(np.arange(0, num_frames, step)).astype(int).tolist() + [num_frames]
    return [(s, e) for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


class FixedSampler:
    """Samples windows known in advance, keeping only the frames some window needs.

    Args:
        windows: ``(start_frame, end_frame)`` per token, in order.
        counts: Frame counts to sample per window (1 = centre frame, F = clip).
        fps: Frame rate, frames/s (token times are ``frame_idx / fps``).
    """

    def __init__(self, windows: list[tuple[int, int]], counts: set[int], fps: float):
        self.fps = fps
        self._windows = [
            Window(i, s, e, s / fps, e / fps) for i, (s, e) in enumerate(windows)
        ]
        self._positions = [
            {count: sample_positions(w.start_frame, w.end_frame, count) for count in counts}
            for w in self._windows
        ]
        self._wanted: dict[int, list[tuple[int, int, int]]] = {}  # frame -> (window, count, slot)
        for i, per_count in enumerate(self._positions):
            for count, positions in per_count.items():
                for slot, frame_idx in enumerate(positions):
                    self._wanted.setdefault(int(frame_idx), []).append((i, count, slot))
        self._last_needed = [max(int(p.max()) for p in pc.values()) for pc in self._positions]
        self._got: list[dict[int, list]] = [
            {count: [None] * len(p) for count, p in pc.items()} for pc in self._positions
        ]
        self._next = 0  # first window not emitted yet
        self._last_frame: Frame | None = None

    def push(self, frame: Frame, cuts: list[int]) -> list[Window]:
        """Add a frame; returns the windows it completes. ``cuts`` are ignored."""
        self._last_frame = frame  # pixels converted only if a short video needs them as filler
        for window, count, slot in self._wanted.pop(frame.frame_idx, ()):
            self._got[window][count][slot] = frame.rgb
        done = []
        while self._next < len(self._windows) and frame.frame_idx >= self._last_needed[self._next]:
            done.append(self._emit(self._next))
            self._next += 1
        return done

    def finish(self, cuts: list[int]) -> list[Window]:
        """Emit the windows still open: a video shorter than its header announced fills the
        missing samples with the last frame it kept."""
        done = []
        while self._next < len(self._windows) and self._last_frame is not None:
            done.append(self._emit(self._next))
            self._next += 1
        return done

    def _emit(self, i: int) -> Window:
        window = self._windows[i]
        if any(rgb is None for slots in self._got[i].values() for rgb in slots):
            fallback = self._last_frame.rgb
        window.frames = {
            count: np.stack([fallback if rgb is None else rgb for rgb in slots])
            for count, slots in self._got[i].items()
        }  # count -> (F, H, W, 3)
        self._got[i] = {}
        return window


class SceneSampler:
    """Windows = scenes: turns a stream of frames plus cut positions into sampled windows.

    Args:
        counts: Frame counts to sample per scene (1 = centre frame, F = clip).
        fps: Frame rate, frames/s.
        max_buffered_frames: Frames of one scene held before decimation.
        max_buffered_mib: Memory of the held frames (decoded pictures) before decimation, MiB.
    """

    def __init__(self, counts: set[int], fps: float, *, max_buffered_frames: int = 256,
                 max_buffered_mib: float = 256.0):
        self.counts = counts
        self.fps = fps
        self.max_buffered_frames = max_buffered_frames
        self.max_buffered_bytes = int(max_buffered_mib * 2**20)
        # Buffered frames of the open scene (and beyond a cut), still as decoded pictures: only
        # the few a scene samples are ever converted.
        self._frames: list[Frame] = []
        self._buffered_bytes = 0
        self._stride = 1
        self._scene_start = 0
        self._num_scenes = 0
        self._last_idx = -1

    def push(self, frame: Frame, cuts: list[int]) -> list[Window]:
        """Add a frame; ``cuts`` are scene-start indices the detector just reported."""
        self._last_idx = frame.frame_idx
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
        last = self._last_idx
        scenes = [self._close(cut) for cut in sorted(cuts) if self._scene_start < cut <= last]
        if last >= self._scene_start:
            scenes.append(self._close(last + 1))
        return scenes

    def _close(self, end_frame: int) -> Window:
        inside = [f for f in self._frames if f.frame_idx < end_frame]
        self._frames = [f for f in self._frames if f.frame_idx >= end_frame]
        self._buffered_bytes = sum(f.nbytes for f in self._frames)
        if not inside:  # every frame of a short scene was decimated away: borrow the next one
            inside = self._frames[:1]
        idx = np.array([f.frame_idx for f in inside])
        start = self._scene_start
        window = Window(
            token_idx=self._num_scenes,
            start_frame=start,
            end_frame=end_frame,
            start_sec=start / self.fps,
            end_sec=end_frame / self.fps,
            scene_idx=self._num_scenes,
        )
        window.frames = {
            count: np.stack([inside[_nearest(idx, p)].rgb
                             for p in sample_positions(start, end_frame, count)])
            for count in self.counts
        }  # count -> (F, H, W, 3)
        self._num_scenes += 1
        self._scene_start = end_frame
        self._stride = 1
        return window


def make_sampler(config: PlanConfig, *, num_frames: int, fps: float, counts: set[int]):
    """The sampler of ``config``'s plan for a video of ``num_frames`` frames (as announced by
    its container) at ``fps`` frames/s."""
    if config.name == "scene":
        return SceneSampler(counts, fps, max_buffered_frames=config.max_buffered_frames,
                            max_buffered_mib=config.max_buffered_mib)
    return FixedSampler(fixed_windows(config, num_frames, fps), counts, fps)


def stream_windows(frames, sampler, segmenter=None, cuts: list[int] | None = None):
    """Windows of one video in time order, each as soon as the frames it samples are decoded.

    Args:
        frames: The video's :class:`~pipeline.decode.Frame` s in decode order (a reader).
        sampler: From :func:`make_sampler`.
        segmenter: A :class:`~pipeline.scenes.SceneSegmenter` that sees every frame, or ``None``
            (no detection: no cuts).
        cuts: If given, every cut the detector reports is appended to it (first frame of each
            new scene), e.g. to assign scene indices once the video is done.

    Yields:
        :class:`Window` s with their sampled frames.
    """
    for frame in frames:
        new_cuts = segmenter.push(frame) if segmenter is not None else []
        if cuts is not None:
            cuts += new_cuts
        yield from sampler.push(frame, new_cuts)
    last_cuts = segmenter.finish() if segmenter is not None else []
    if cuts is not None:
        cuts += last_cuts
    yield from sampler.finish(last_cuts)


def _nearest(sorted_idx: np.ndarray, target: float) -> int:
    """Position in ``sorted_idx`` of the value nearest ``target``."""
    pos = int(np.searchsorted(sorted_idx, target))
    if pos == 0:
        return 0
    if pos == len(sorted_idx):
        return len(sorted_idx) - 1
    return pos if sorted_idx[pos] - target < target - sorted_idx[pos - 1] else pos - 1

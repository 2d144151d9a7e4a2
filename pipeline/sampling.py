"""Sampling plans: which decoded frames each backbone sees.

The ``scene`` plan (STAN §3): per scene, the centre frame for the 2D backbone and
``frames_per_clip`` (12) frames uniformly spread over the scene for the 3D backbone.

Scene boundaries are only known once the detector reports the next cut, so frames of the open
scene are buffered. Memory stays bounded whatever the scene length: when the buffer is full,
every other frame is dropped and the keep-stride doubles, so a sample lands at most
``stride / 2`` frames away from its exact uniform position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.decode import Frame


@dataclass(frozen=True)
class ScenePlanConfig:
    """The ``scene`` plan's knobs.

    Attributes:
        frames_per_clip: Frames per scene for clip backbones (STAN §3 uses 12).
        max_buffered_frames: Frames of one scene held at once before decimation.
    """

    frames_per_clip: int = 12
    max_buffered_frames: int = 256


@dataclass(frozen=True)
class Scene:
    """One scene and the frames sampled from it.

    Attributes:
        scene_idx: 0-based position of the scene in the video.
        start_frame: First frame index (inclusive).
        end_frame: Last frame index + 1 (exclusive).
        start_sec: Start time, seconds.
        end_sec: End time, seconds.
        centre: (H, W, 3) uint8 RGB, the frame nearest the scene's midpoint.
        clip: (F, H, W, 3) uint8 RGB, F = ``frames_per_clip`` frames uniform over the scene.
    """

    scene_idx: int
    start_frame: int
    end_frame: int
    start_sec: float
    end_sec: float
    centre: np.ndarray
    clip: np.ndarray


class ScenePlanSampler:
    """Turns a stream of frames plus cut positions into :class:`Scene` samples.

    Args:
        config: Plan knobs.
        fps: Frame rate, frames/s (token times are ``frame_idx / fps``).
    """

    def __init__(self, config: ScenePlanConfig, fps: float):
        self.config = config
        self.fps = fps
        self._frames: list[Frame] = []  # buffered frames of the open scene (and beyond a cut)
        self._stride = 1
        self._scene_start = 0
        self._num_scenes = 0
        self._last_idx = -1

    def push(self, frame: Frame, cuts: list[int]) -> list[Scene]:
        """Add a frame; ``cuts`` are scene-start indices the detector just reported."""
        self._last_idx = frame.frame_idx
        if (frame.frame_idx - self._scene_start) % self._stride == 0:
            self._frames.append(frame)
        scenes = [self._close(cut) for cut in sorted(cuts) if cut > self._scene_start]
        if len(self._frames) > self.config.max_buffered_frames:
            self._frames = self._frames[::2]
            self._stride *= 2
        return scenes

    def finish(self, cuts: list[int]) -> list[Scene]:
        """Close the remaining scenes at the end of the video."""
        scenes = [self._close(cut) for cut in sorted(cuts) if self._scene_start < cut <= self._last_idx]
        if self._last_idx >= self._scene_start:
            scenes.append(self._close(self._last_idx + 1))
        return scenes

    def _close(self, end_frame: int) -> Scene:
        inside = [f for f in self._frames if f.frame_idx < end_frame]
        self._frames = [f for f in self._frames if f.frame_idx >= end_frame]
        if not inside:  # every frame of a short scene was decimated away: borrow the next one
            inside = self._frames[:1]
        idx = np.array([f.frame_idx for f in inside])
        start, end = self._scene_start, end_frame
        centre = inside[_nearest(idx, (start + end - 1) / 2)].rgb
        wanted = np.linspace(start, end - 1, self.config.frames_per_clip)
        clip = np.stack([inside[_nearest(idx, w)].rgb for w in wanted])  # (F, H, W, 3)
        scene = Scene(
            scene_idx=self._num_scenes,
            start_frame=start,
            end_frame=end,
            start_sec=start / self.fps,
            end_sec=end / self.fps,
            centre=centre,
            clip=clip,
        )
        self._num_scenes += 1
        self._scene_start = end_frame
        self._stride = 1
        return scene


def _nearest(sorted_idx: np.ndarray, target: float) -> int:
    """Position in ``sorted_idx`` of the value nearest ``target``."""
    pos = int(np.searchsorted(sorted_idx, target))
    if pos == 0:
        return 0
    if pos == len(sorted_idx):
        return len(sorted_idx) - 1
    return pos if sorted_idx[pos] - target < target - sorted_idx[pos - 1] else pos - 1

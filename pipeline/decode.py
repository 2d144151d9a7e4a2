"""Video decoding with PyAV: one streaming pass per video, frames resized in FFmpeg's swscale.

Decoding dominates extraction cost, so a video is decoded exactly once per run and frames are
scaled down to the working resolution inside the decoder's colour conversion (no second resize
in Python). Nothing here holds more than one frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

# Below this share of the frames the container announces, a decode is reported as truncated.
_MIN_DECODED_SHARE = 0.9


class VideoError(Exception):
    """A video cannot be decoded; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a video stream, read from the container header.

    Attributes:
        path: The file.
        fps: Average frame rate, frames/s.
        num_frames: Frame count announced by the container (0 when unknown).
        duration_sec: Duration in seconds (``num_frames / fps`` when the header has none).
        width_px: Coded width.
        height_px: Coded height.
        codec: Codec name, e.g. ``h264``.
    """

    path: str
    fps: float
    num_frames: int
    duration_sec: float
    width_px: int
    height_px: int
    codec: str


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Frames are converted to BGR, the order PySceneDetect (OpenCV) consumes, so the detector
    that sees every frame needs no copy; the few frames a plan samples are read as RGB views.

    Attributes:
        frame_idx: 0-based index in decode order.
        time_sec: Presentation time, seconds from the stream start.
        bgr: (H, W, 3) uint8 BGR at the working resolution; ``None`` for a frame the reader
            was told nobody needs (decoded, since later frames depend on it, but never
            converted).
    """

    frame_idx: int
    time_sec: float
    bgr: np.ndarray | None

    @property
    def rgb(self) -> np.ndarray | None:
        """(H, W, 3) uint8 RGB view of :attr:`bgr` (not contiguous; ``np.stack`` copies)."""
        return None if self.bgr is None else self.bgr[..., ::-1]


def _open(path: str | Path):
    import av

    path = str(path)
    if not Path(path).exists():
        raise VideoError(f"{path}: file not found")
    if Path(path).stat().st_size == 0:
        raise VideoError(f"{path}: file is empty (0 bytes)")
    try:
        container = av.open(path)
    except av.error.FFmpegError as err:
        raise VideoError(
            f"{path}: cannot open container: truncated, corrupt or not a video ({err})"
        ) from err
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream (streams: {[s.type for s in container.streams]})")
    return container


def probe(path: str | Path) -> VideoInfo:
    """Read a video's stream header without decoding.

    Raises:
        VideoError: missing, empty or unreadable file, or no video stream.
    """
    container = _open(path)
    try:
        return _info(str(path), container)
    finally:
        container.close()


def _info(path: str, container) -> VideoInfo:
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    num_frames = int(stream.frames or 0)
    if stream.duration is not None and stream.time_base is not None:
        duration_sec = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration_sec = container.duration / 1_000_000
    else:
        duration_sec = num_frames / fps
    return VideoInfo(
        path=path,
        fps=fps,
        num_frames=num_frames,
        duration_sec=duration_sec,
        width_px=stream.codec_context.width,
        height_px=stream.codec_context.height,
        codec=stream.codec_context.name,
    )


def working_size(width_px: int, height_px: int, short_side_px: int) -> tuple[int, int]:
    """(width, height) after scaling the short side down to ``short_side_px``.

    Never upscales; keeps the aspect ratio; rounds to even sizes as swscale prefers.
    """
    short = min(width_px, height_px)
    if short <= short_side_px:
        return width_px, height_px
    scale = short_side_px / short
    return 2 * round(width_px * scale / 2), 2 * round(height_px * scale / 2)


class VideoReader:
    """Streams a video's frames once, at a working resolution.

    Args:
        path: Video file.
        short_side_px: Frames are scaled so their short side is at most this (never upscaled).
        keep: ``keep(frame_idx)`` says whether a frame's pixels are needed; the others skip the
            colour conversion and resize (about a third of the decode cost). ``None``: all.

    Raises:
        VideoError: on open (missing/empty/unreadable file, no video stream) or while iterating
            (corrupt data, or a truncated file yielding under 90% of the announced frames).

    Example:
        >>> reader = VideoReader("clip.mp4")
        >>> for frame in reader:
        ...     frame.rgb.shape  # (H, W, 3)
    """

    def __init__(self, path: str | Path, *, short_side_px: int = 256, keep=None):
        self.path = str(path)
        self.keep = keep
        self._container = _open(path)
        self.info = _info(self.path, self._container)
        self.width_px, self.height_px = working_size(
            self.info.width_px, self.info.height_px, short_side_px
        )
        self.num_decoded = 0

    def __iter__(self) -> Iterator[Frame]:
        import av

        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threading: decode is the bottleneck
        time_base = float(stream.time_base) if stream.time_base else 1.0 / self.info.fps
        first_pts = None  # times are relative to the first frame: some streams start at pts > 0
        try:
            for frame in self._container.decode(stream):
                if frame.pts is None:
                    time_sec = self.num_decoded / self.info.fps
                else:
                    first_pts = frame.pts if first_pts is None else first_pts
                    time_sec = (frame.pts - first_pts) * time_base
                bgr = None
                if self.keep is None or self.keep(self.num_decoded):
                    bgr = frame.to_ndarray(
                        format="bgr24", width=self.width_px, height=self.height_px
                    )
                yield Frame(self.num_decoded, time_sec, bgr)
                self.num_decoded += 1
        except av.error.FFmpegError as err:
            raise VideoError(
                f"{self.path}: truncated or corrupt: decoding failed after "
                f"{self.num_decoded} frames ({err})"
            ) from err
        finally:
            self._container.close()
        announced = self.info.num_frames
        if self.num_decoded == 0:
            raise VideoError(f"{self.path}: no frame could be decoded")
        if announced and self.num_decoded < _MIN_DECODED_SHARE * announced:
            raise VideoError(
                f"{self.path}: truncated or corrupt: decoded {self.num_decoded} of "
                f"{announced} frames announced by the container"
            )

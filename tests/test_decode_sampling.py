"""Decoding, scene detection and the scene sampling plan on tiny synthetic videos."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.decode import Frame, VideoError, VideoReader, probe, working_size
from pipeline.sampling import ScenePlanConfig, ScenePlanSampler
from pipeline.scenes import SceneDetectConfig, SceneSegmenter
from tests.conftest import block_frames, write_video


def test_reader_decodes_every_frame_once(tmp_path):
    frames = block_frames([(200, 30, 30), (30, 30, 200)], 10)
    path = write_video(tmp_path / "v.mp4", frames)
    reader = VideoReader(path)
    decoded = list(reader)
    assert [f.frame_idx for f in decoded] == list(range(20))
    assert decoded[0].rgb.shape == (64, 96, 3)
    assert decoded[1].time_sec == pytest.approx(1 / 25)
    # colour survives the round trip (H.264 at crf 10)
    assert np.abs(decoded[0].rgb[5, 50].astype(int) - [200, 30, 30]).max() < 12
    assert probe(path).num_frames == 20


def test_working_size_only_downscales():
    assert working_size(1280, 720, 256) == (456, 256)
    assert working_size(320, 180, 256) == (320, 180)


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("missing", "file not found"),
        ("empty", "empty (0 bytes)"),
        ("text", "cannot open container: truncated, corrupt or not a video"),
        ("audio_only", "no video stream"),
        ("truncated", "truncated or corrupt"),
    ],
)
def test_bad_files_raise_video_error_naming_the_file(bad_videos, kind, reason):
    path = bad_videos[kind]
    with pytest.raises(VideoError) as info:
        for _ in VideoReader(path):
            pass
    assert str(path) in str(info.value)
    assert reason in str(info.value)


def test_content_detector_finds_block_cuts():
    # colours far apart in hue, saturation and value: ContentDetector scores all three
    frames = block_frames([(200, 30, 30), (20, 20, 90), (60, 230, 60), (240, 240, 240)], 20)
    seg = SceneSegmenter(SceneDetectConfig("content"), fps=25)
    cuts = [c for i, rgb in enumerate(frames) for c in seg.push(i, rgb)] + seg.finish()
    assert cuts == [20, 40, 60]


def test_unknown_detector_lists_valid_ones():
    with pytest.raises(ValueError, match="content"):
        SceneDetectConfig("nope")


def _frames(n: int):
    return [Frame(i, i / 25, np.full((4, 4, 3), i % 256, np.uint8)) for i in range(n)]


def test_scene_plan_centre_and_uniform_clip():
    sampler = ScenePlanSampler(ScenePlanConfig(frames_per_clip=4), fps=25)
    scenes = []
    for frame in _frames(30):
        scenes += sampler.push(frame, [10] if frame.frame_idx == 10 else [])
    scenes += sampler.finish([])
    assert [(s.start_frame, s.end_frame) for s in scenes] == [(0, 10), (10, 30)]
    first, second = scenes
    assert first.centre[0, 0, 0] in (4, 5)  # midpoint of frames 0..9
    assert list(first.clip[:, 0, 0, 0]) == [0, 3, 6, 9]
    assert list(second.clip[:, 0, 0, 0]) == [10, 16, 23, 29]
    assert second.start_sec == pytest.approx(0.4) and second.end_sec == pytest.approx(1.2)


def test_scene_plan_memory_is_bounded_by_the_buffer():
    sampler = ScenePlanSampler(ScenePlanConfig(frames_per_clip=12, max_buffered_frames=16), fps=25)
    for frame in _frames(1000):  # one 40 s scene
        sampler.push(frame, [])
        assert len(sampler._frames) <= 16
    (scene,) = sampler.finish([])
    wanted = np.linspace(0, 999, 12)
    got = scene.clip[:, 0, 0, 0].astype(int)
    # decimated to stride 64 at most: every sample within half a stride of its exact position
    assert np.all(np.abs((wanted % 256) - got) <= 64)
    assert (scene.start_frame, scene.end_frame) == (0, 1000)

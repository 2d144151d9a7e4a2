"""The CPU cuts of the per-frame path change no number: detector scores, cuts and pixels are
the same as PySceneDetect's and swscale's own, on real footage."""

from __future__ import annotations

import numpy as np
import pytest
import scenedetect
from scenedetect import FrameTimecode

from pipeline.decode import VideoReader
from pipeline.scene_detectors import FastAdaptiveDetector, FastContentDetector
from pipeline.scenes import SceneDetectConfig, SceneSegmenter


def _thumbnails(path, width_px=160, limit=None):
    frames = []
    for frame in VideoReader(path, decode_threads=1):
        frames.append(frame.thumbnail(width_px).copy())  # (h, w, 3) BGR
        if limit and len(frames) == limit:
            break
    return frames


def _scores_and_cuts(detector, frames, fps=25.0):
    scores, cuts = [], []
    for i, bgr in enumerate(frames):
        cuts += [c.frame_num for c in detector.process_frame(FrameTimecode(i, fps=fps), bgr)]
        scores.append(detector._frame_score)
    cuts += [c.frame_num for c in detector.post_process(FrameTimecode(len(frames) - 1, fps=fps))]
    return scores, cuts


@pytest.mark.parametrize("ours, theirs, kwargs", [
    (FastContentDetector, scenedetect.ContentDetector, {}),
    (FastContentDetector, scenedetect.ContentDetector, {"threshold": 12.0, "min_scene_len": 5}),
    (FastContentDetector, scenedetect.ContentDetector,
     {"weights": scenedetect.ContentDetector.Components(1.0, 0.5, 2.0, 0.0)}),
    (FastAdaptiveDetector, scenedetect.AdaptiveDetector, {}),
    # adaptive_luma, the detector closest to STAN §3's cuts
    (FastAdaptiveDetector, scenedetect.AdaptiveDetector, {"luma_only": True}),
])
def test_fast_detectors_score_as_pyscenedetect_on_real_footage(demo_small, ours, theirs, kwargs):
    path = demo_small.videos.sort("video_id")["path"][0]
    frames = _thumbnails(path)
    our_scores, our_cuts = _scores_and_cuts(ours(**kwargs), frames)
    their_scores, their_cuts = _scores_and_cuts(theirs(**kwargs), frames)
    assert len(our_scores) == len(frames) > 100
    assert our_scores == their_scores  # bit for bit, every frame
    assert our_cuts == their_cuts and len(their_cuts) >= 2


def test_fast_content_detector_defers_to_pyscenedetect_for_edges(demo_small):
    path = demo_small.videos.sort("video_id")["path"][1]
    frames = _thumbnails(path, limit=120)
    weights = scenedetect.ContentDetector.Components(1.0, 1.0, 1.0, 1.0)
    ours, _ = _scores_and_cuts(FastContentDetector(weights=weights), frames)
    theirs, _ = _scores_and_cuts(scenedetect.ContentDetector(weights=weights), frames)
    assert ours == theirs and max(theirs) > 0


def test_segmenter_uses_the_fast_detectors_for_content_and_adaptive():
    assert isinstance(SceneSegmenter(SceneDetectConfig("content"), 25)._detector, FastContentDetector)
    assert isinstance(SceneSegmenter(SceneDetectConfig("adaptive"), 25)._detector, FastAdaptiveDetector)
    assert type(SceneSegmenter(SceneDetectConfig("histogram"), 25)._detector) is scenedetect.HistogramDetector


def test_single_thread_conversion_gives_the_same_pixels(demo_small):
    # decode_threads=1 also makes swscale convert in the calling thread (a worker's setting);
    # the default (0) lets FFmpeg and swscale thread: pixels must not depend on it.
    path = demo_small.videos.sort("video_id")["path"][2]
    one = [(f.thumbnail(160).copy(), f.thumbnail(64).copy(), f.bgr) for f, _ in
           zip(VideoReader(path, decode_threads=1), range(60))]
    auto = [(f.thumbnail(160).copy(), f.thumbnail(64).copy(), f.bgr) for f, _ in
            zip(VideoReader(path, decode_threads=0), range(60))]
    assert len(one) == len(auto) == 60
    for a, b in zip(one, auto):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_frame_nbytes_matches_the_decoded_planes(demo_small):
    path = demo_small.videos.sort("video_id")["path"][0]
    for frame, _ in zip(VideoReader(path), range(5)):
        planes = sum(p.buffer_size for p in frame._picture.planes)
        assert frame.nbytes == planes > 320 * 180 * 3 // 2


@pytest.mark.parametrize("interpolation, swscale", [("area", "AREA"), ("fast_bilinear", "FAST_BILINEAR")])
def test_thumbnail_is_swscale_scaling_with_the_chosen_interpolation(demo_small, interpolation, swscale):
    path = demo_small.videos.sort("video_id")["path"][3]
    for frame, _ in zip(VideoReader(path, decode_threads=1), range(10)):
        # reference: PyAV's own one-shot conversion (a fresh swscale context per frame)
        expected = frame._picture.to_ndarray(width=160, height=90, format="bgr24",
                                             interpolation=swscale)
        np.testing.assert_array_equal(frame.thumbnail(160, interpolation), expected)


def test_fast_bilinear_thumbnail_finds_the_cuts_area_does(demo_small):
    # The evidence behind the default (see SceneDetectConfig.detect_interpolation), small demo.
    found = {"area": [], "fast_bilinear": []}
    for path in demo_small.videos.sort("video_id")["path"]:
        segmenters = {k: SceneSegmenter(SceneDetectConfig(detect_interpolation=k), 25.0) for k in found}
        cuts = {k: [] for k in found}
        for frame in VideoReader(path, decode_threads=1):
            for k, segmenter in segmenters.items():
                cuts[k] += segmenter.push(frame)
        for k, segmenter in segmenters.items():
            found[k] += [(path, c) for c in cuts[k] + segmenter.finish()]
    area, fast = found["area"], found["fast_bilinear"]
    assert len(area) >= 25
    near = sum(any(p == q and abs(c - d) <= 2 for q, d in fast) for p, c in area)
    assert near >= 0.95 * len(area) and abs(len(fast) - len(area)) <= 0.05 * len(area)


def test_detect_interpolation_is_in_the_fingerprint_only_with_a_detector():
    import polars as pl

    from catalogs.base import Catalog
    from pipeline.extract import ExtractConfig, feature_set_name, feature_set_spec

    catalog = Catalog(name="demo", root=".", videos=pl.DataFrame({"video_id": ["a"], "path": ["a.mp4"],
                                                                  "split": ["train"]}))

    def name(**kw):
        spec = feature_set_spec(ExtractConfig(**kw), catalog, "resnet18", {"kind": "none"}, "fp32")
        return feature_set_name(spec), spec["scene_detection"]

    fast, area = name(plan="scene"), name(plan="scene", detect_interpolation="area")
    assert fast[0] != area[0] and area[1]["detect_interpolation"] == "area"
    off_fast = name(plan="uniform", detector="none")
    off_area = name(plan="uniform", detector="none", detect_interpolation="area")
    assert off_fast == off_area
    # the keys fingerprinted before the option existed: such feature sets keep their names
    assert off_fast[1] == {"detector": "none", "threshold": None, "min_scene_len": 15,
                           "detect_width_px": 160}


def test_unknown_interpolation_lists_valid_ones():
    with pytest.raises(ValueError, match="fast_bilinear"):
        SceneDetectConfig(detect_interpolation="cubic")

"""Every backbone × sampling plan on a tiny video (in-process extraction, ``--weights none``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from catalogs.base import Catalog
from pipeline.backbones import backbone_spec, list_backbones
from pipeline.extract import ExtractConfig, run_extract
from pipeline.sampling import PLANS
from pipeline.store import FeatureStore
from tests.conftest import block_frames, fast_backbones, write_video

# Three 1-second shots at 25 fps: 2 hard cuts, 75 frames.
COLOURS = [(200, 30, 30), (20, 20, 90), (60, 230, 60)]
# Plan knobs shrunk so that each plan gives 2-4 tokens on the 3 s video.
KNOBS = dict(num_frames=3, fps=1.0, full_num_frames=4, clip_len_sec=1.5, weights=("none",))
EXPECTED_TOKENS = {"scene": 3, "uniform": 3, "fps": 3, "full": 4, "clips": 2}


@pytest.fixture(scope="module")
def tiny_catalog(tmp_path_factory) -> Catalog:
    root = tmp_path_factory.mktemp("tiny")
    path = write_video(root / "shots.mp4", block_frames(COLOURS, 25))
    videos = pl.DataFrame({"video_id": ["shots"], "path": [str(path)], "split": ["train"]})
    return Catalog(name="tiny", root=Path(root), videos=videos)


def _extract(catalog, store: Path, plan: str, backbones, tokens="pooled"):
    config = ExtractConfig(dataset="tiny", store=str(store), plan=plan, backbones=tuple(backbones),
                           tokens=tokens, num_workers=0, **KNOBS)
    summary = run_extract(config, catalog=catalog, progress=False)
    assert summary.num_failed == 0, summary.failed
    return FeatureStore(store)


def _check(store: FeatureStore, plan: str, backbones, tokens="pooled") -> None:
    for name in backbones:
        (fs,) = store.find(backbone=name, plan=plan)
        spec = backbone_spec(name)
        got = fs.read("shots")
        assert got.tokens.shape == (EXPECTED_TOKENS[plan], *spec.token_shape(tokens)), name
        assert got.tokens.dtype == np.float16 and np.isfinite(got.tokens.astype(np.float32)).all()
        assert got.start_sec[0] == 0 and np.all(np.diff(got.start_sec) > 0)
        assert np.all(got.end_sec > got.start_sec) and got.end_sec[-1] == pytest.approx(3.0)
        # every plan knows which scene each token lies in (3 shots → scenes 0, 1, 2)
        assert got.scene_idx[0] == 0 and got.scene_idx[-1] == 2
        assert fs.spec["token_kind"] == tokens and fs.spec["plan"] == plan


@pytest.mark.parametrize("plan", PLANS)
def test_every_plan_with_a_frame_and_a_clip_backbone(plan, tiny_catalog, tmp_path):
    backbones = ["resnet18", "r2plus1d_18"]
    _check(_extract(tiny_catalog, tmp_path, plan, backbones), plan, backbones)


def test_every_backbone_shares_one_decode(tiny_catalog, tmp_path, monkeypatch):
    import pipeline.worker as worker

    opened = []
    real_reader = worker.VideoReader

    def counting_reader(path, **kwargs):
        opened.append(path)
        return real_reader(path, **kwargs)

    monkeypatch.setattr(worker, "VideoReader", counting_reader)
    backbones = fast_backbones(list_backbones())  # the large timm ViTs: -m slow, below
    _check(_extract(tiny_catalog, tmp_path, "uniform", backbones), "uniform", backbones)
    assert len(opened) == 1 and len(backbones) >= 6  # every backbone, one decode


def test_patch_tokens_of_vits(tiny_catalog, tmp_path):
    backbones = ["vit_b16"]
    store = _extract(tiny_catalog, tmp_path, "fps", backbones, tokens="patch")
    _check(store, "fps", backbones, tokens="patch")
    (fs,) = store.find(backbone="vit_b16")
    assert "-patch__" in fs.name and fs.attrs["token_kind"] == "patch"


def test_patch_tokens_of_a_cnn_are_an_error(tiny_catalog, tmp_path):
    with pytest.raises(ValueError, match="resnet18 gives pooled tokens"):
        _extract(tiny_catalog, tmp_path, "fps", ["resnet18"], tokens="patch")


@pytest.mark.slow
@pytest.mark.parametrize("plan", PLANS)
def test_every_backbone_times_every_plan(plan, tiny_catalog, tmp_path):
    backbones = list_backbones()
    _check(_extract(tiny_catalog, tmp_path, plan, backbones), plan, backbones)
    vits = ["vit_b16", "vit_l16"]
    _check(_extract(tiny_catalog, tmp_path / "patch", plan, vits, "patch"), plan, vits, "patch")


def test_without_a_detector_only_sampled_frames_are_converted(tiny_catalog, tmp_path, monkeypatch):
    import pipeline.worker as worker

    frames = []
    real_reader = worker.VideoReader

    class Spy(real_reader):
        def __iter__(self):
            for frame in super().__iter__():
                frames.append(frame)
                yield frame

    monkeypatch.setattr(worker, "VideoReader", Spy)
    # A full decode (tests/test_sparse_decode.py: sparse decoding skips most frames outright).
    config = ExtractConfig(dataset="tiny", store=str(tmp_path), plan="fps", backbones=("resnet18",),
                           detector="none", num_workers=0, decode="full", **KNOBS)
    assert run_extract(config, catalog=tiny_catalog, progress=False).num_ok == 1
    (fs,) = FeatureStore(tmp_path).feature_sets()
    got = fs.read("shots")
    assert len(got.tokens) == 3 and list(got.scene_idx) == [-1, -1, -1]
    converted = [f.converted for f in frames]
    assert len(converted) == 75 and sum(converted) == 3  # the 3 centre frames
    with pytest.raises(ValueError, match="needs a scene detector"):
        ExtractConfig(plan="scene", detector="none")

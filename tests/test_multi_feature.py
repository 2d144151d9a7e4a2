"""One ``pipeline extract`` run, several feature sets: one decode per video (issue 19, item 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from catalogs.base import Catalog
from pipeline.cli import app
from pipeline.extract import ExtractConfig, run_extract
from pipeline.extract_config import Feature
from pipeline.store import FeatureStore
from tests.conftest import block_frames, write_video

FEATURES = ("resnet18:scene", "resnet18:uniform", "r2plus1d_18:clips")
KNOBS = dict(num_frames=3, clip_len_sec=1.5, weights=("none",), precision="fp32",
             short_side_px=64, num_workers=0, dataset="tiny")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Catalog:
    root = tmp_path_factory.mktemp("videos")
    paths = [write_video(root / "a.mp4", block_frames([(200, 30, 30), (20, 20, 90)], 25)),
             write_video(root / "b.mp4", block_frames([(60, 230, 60), (240, 240, 240)], 20))]
    videos = pl.DataFrame({"video_id": ["a", "b"], "path": [str(p) for p in paths],
                           "split": ["train", "train"]})
    return Catalog(name="tiny", root=Path(root), videos=videos)


@pytest.fixture
def count_decodes(monkeypatch):
    import pipeline.worker as worker

    opened = []

    class Counting(worker.VideoReader):
        def __init__(self, path, **kwargs):
            opened.append(path)
            super().__init__(path, **kwargs)

    monkeypatch.setattr(worker, "VideoReader", Counting)
    return opened


def test_one_run_writes_what_separate_runs_write_from_one_decode(catalog, tmp_path,
                                                                 count_decodes):
    together = run_extract(ExtractConfig(store=str(tmp_path / "one"), features=FEATURES, **KNOBS),
                           catalog=catalog, progress=False)
    assert together.num_ok == 2 and together.num_failed == 0
    assert len(count_decodes) == 2  # each video decoded once for the three feature sets
    separate = []
    for text in FEATURES:
        feature = Feature.parse(text)
        config = ExtractConfig(store=str(tmp_path / text.replace(":", "_")),
                               backbones=(feature.backbone,), plan=feature.plan, **KNOBS)
        separate += run_extract(config, catalog=catalog, progress=False).feature_sets
    assert together.feature_sets == separate  # same specs, same fingerprints
    one = FeatureStore(tmp_path / "one")
    for name, text in zip(separate, FEATURES):
        alone = FeatureStore(tmp_path / text.replace(":", "_")).open(name)
        for video_id in ("a", "b"):
            want, got = alone.read(video_id), one.open(name).read(video_id)
            np.testing.assert_array_equal(got.tokens, want.tokens)
            np.testing.assert_array_equal(got.start_sec, want.start_sec)
            np.testing.assert_array_equal(got.scene_idx, want.scene_idx)
    assert [one.open(n).read("a").tokens.shape[0] for n in separate] == [2, 3, 2]


def test_a_new_feature_resumes_alone(catalog, tmp_path, count_decodes):
    store = str(tmp_path / "store")
    first = run_extract(ExtractConfig(store=store, features=FEATURES[:2], **KNOBS),
                        catalog=catalog, progress=False)
    rows = FeatureStore(store).open(first.feature_sets[0]).index()
    count_decodes.clear()
    second = run_extract(ExtractConfig(store=store, features=FEATURES, **KNOBS),
                         catalog=catalog, progress=False)
    assert second.feature_sets[:2] == first.feature_sets and second.num_ok == 2
    assert len(count_decodes) == 2  # decoded for the new feature set only ...
    unchanged = FeatureStore(store).open(first.feature_sets[0]).index()
    assert unchanged["updated_at"].to_list() == rows["updated_at"].to_list()  # ... not rewritten
    third = run_extract(ExtractConfig(store=store, features=FEATURES, **KNOBS),
                        catalog=catalog, progress=False)
    assert third.num_skipped == 2 and third.num_ok == 0


def test_each_feature_may_have_its_own_resize(catalog, tmp_path):
    features = ("resnet18:uniform", "resnet18:uniform:pooled:squash")
    both = run_extract(ExtractConfig(store=str(tmp_path / "both"), features=features, **KNOBS),
                       catalog=catalog, progress=False)
    squash = run_extract(ExtractConfig(store=str(tmp_path / "squash"), backbones=("resnet18",),
                                       plan="uniform", resize="squash", **KNOBS),
                         catalog=catalog, progress=False)
    crop_name, squash_name = both.feature_sets
    assert squash.feature_sets == [squash_name] != [crop_name]
    store = FeatureStore(tmp_path / "both")
    cropped, squashed = (store.open(n).read("a").tokens for n in both.feature_sets)
    assert not np.allclose(cropped, squashed)
    np.testing.assert_array_equal(
        squashed, FeatureStore(tmp_path / "squash").open(squash_name).read("a").tokens)


@pytest.mark.parametrize("features, message", [
    (("resnet18",), "BACKBONE:PLAN"),
    (("resnet18:nope",), "unknown plan 'nope'"),
    (("vit_b16:fps:cls",), "unknown token kind 'cls'"),
    (("vit_b16:fps:patch:stretch",), "unknown resize 'stretch'"),
    (("resnet18:scene", "resnet18:scene:pooled:crop"), "given twice"),
    (("resnet18:scene", "resnet18:scene"), "given twice"),
])
def test_bad_features_are_refused(features, message):
    with pytest.raises(ValueError, match=message):
        ExtractConfig(features=features)


def test_the_cli_takes_features_and_refuses_them_with_backbone(tmp_path):
    result = CliRunner().invoke(app, ["extract", "--feature", "resnet18:scene", "--backbone",
                                      "resnet18", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "not both" in result.output
    result = CliRunner().invoke(app, ["extract", "--feature", "resnet18:scene:x",
                                      "--store", str(tmp_path)])
    assert result.exit_code == 2 and "error:" in result.output and "token kind" in result.output
    config = ExtractConfig(features=("vit_b16:fps:patch", "resnet18:scene"))
    assert config.backbones == ("vit_b16", "resnet18") and config.plan == "fps"
    assert config.feature_list()[1] == Feature("resnet18", "scene", "pooled", "crop")

"""``pipeline extract`` end to end on the small demo (real footage) plus broken files."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from catalogs.base import Catalog
from catalogs.demo import load_cuts
from pipeline.cli import app
from pipeline.decode import VideoReader
from pipeline.extract import ExtractConfig, run_extract
from pipeline.scenes import SceneDetectConfig, SceneSegmenter
from pipeline.store import FeatureStore

pytestmark = pytest.mark.integration


def _detect_cuts(path) -> list[int]:
    reader = VideoReader(path)
    segmenter = SceneSegmenter(SceneDetectConfig("content"), fps=reader.info.fps)
    cuts = [c for frame in reader for c in segmenter.push(frame)]
    return cuts + segmenter.finish()


def test_scene_detection_finds_90_percent_of_true_hard_cuts(demo_small):
    truth = load_cuts(demo_small.root).filter(pl.col("kind") == "hard")
    found = total = 0
    for row in demo_small.videos.iter_rows(named=True):
        detected = np.array(_detect_cuts(row["path"]))
        true_idx = truth.filter(pl.col("video_id") == row["video_id"])["frame_idx"].to_list()
        total += len(true_idx)
        found += sum(bool(len(detected)) and np.abs(detected - t).min() <= 2 for t in true_idx)
    assert total >= 10
    assert found / total >= 0.9, f"found {found} of {total} hard cuts within ±2 frames"


@pytest.fixture(scope="module")
def catalog_with_bad_files(demo_small, bad_videos) -> Catalog:
    bad = ["missing", "empty", "text", "audio_only", "truncated"]
    extra = pl.DataFrame(
        {"video_id": bad, "path": [str(bad_videos[k]) for k in bad], "split": ["train"] * 5}
    )
    videos = pl.concat([demo_small.videos.select("video_id", "path", "split"), extra])
    return Catalog(name="demo", root=demo_small.root, videos=videos, meta=demo_small.meta)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, catalog_with_bad_files, ray_local):
    store = tmp_path_factory.mktemp("store")
    config = ExtractConfig(dataset="demo", store=str(store), weights=("none",))
    summary = run_extract(config, catalog=catalog_with_bad_files, progress=False)
    return config, summary


def test_every_good_video_is_stored_and_each_bad_one_fails_alone(extracted, demo_small):
    config, summary = extracted
    assert (summary.num_ok, summary.num_failed) == (demo_small.videos.height, 5)
    assert 0 < summary.startup_sec < summary.wall_sec  # the workers' start-up, measured in the run
    store = FeatureStore(config.store)
    sets = store.feature_sets()
    assert sorted(fs.spec["backbone"] for fs in sets) == ["r2plus1d_18", "resnet18"]
    for fs in sets:
        index = fs.index()
        failed = dict(index.filter(pl.col("status") == "failed").select("video_id", "error").iter_rows())
        assert set(failed) == {"missing", "empty", "text", "audio_only", "truncated"}
        assert "file not found" in failed["missing"] and "missing.mp4" in failed["missing"]
        assert "no video stream" in failed["audio_only"]
        assert "truncated or corrupt" in failed["truncated"]
        assert fs.ok_ids() == set(demo_small.videos["video_id"])
        assert fs.attrs["dim"] == 512 and fs.attrs["dtype"] == "float16"
        assert fs.spec["weights"] == {"kind": "none", "seed": 0}


def test_tokens_are_per_scene_with_times(extracted, demo_small):
    config, _ = extracted
    store = FeatureStore(config.store)
    (spatial,) = store.find(backbone="resnet18")
    (temporal,) = store.find(backbone="r2plus1d_18")
    for row in demo_small.videos.iter_rows(named=True):
        s, t = spatial.read(row["video_id"]), temporal.read(row["video_id"])
        assert s.tokens.shape[0] == t.tokens.shape[0] >= 2
        np.testing.assert_array_equal(s.start_sec, t.start_sec)  # one decode, one scene list
        assert s.start_sec[0] == 0 and np.all(s.start_sec[1:] == s.end_sec[:-1])
        assert s.end_sec[-1] == pytest.approx(row["duration_sec"], abs=0.1)
        assert list(s.scene_idx) == list(range(len(s.scene_idx)))
        assert np.isfinite(s.tokens.astype(np.float32)).all()


def test_rerun_retries_only_failed_videos(extracted, catalog_with_bad_files, bad_videos, tmp_path):
    config, _ = extracted
    again = run_extract(config, catalog=catalog_with_bad_files, progress=False)
    assert again.num_skipped == catalog_with_bad_files.videos.height - 5
    assert again.num_failed == 5 and again.num_ok == 0


def test_complete_store_does_no_backbone_work(extracted, demo_small, monkeypatch):
    import pipeline.execution as execution

    config, _ = extracted

    def must_not_run(*args, **kwargs):
        raise AssertionError("a complete store started extraction work")

    monkeypatch.setattr(execution, "run_on_ray", must_not_run)
    monkeypatch.setattr(execution, "run_here", must_not_run)
    summary = run_extract(config, catalog=demo_small, progress=False)
    assert summary.num_skipped == demo_small.videos.height
    assert summary.wall_sec < 10


def test_a_different_config_makes_a_new_feature_set(extracted, demo_small):
    config, _ = extracted
    store = FeatureStore(config.store)
    before = {fs.name for fs in store.feature_sets()}
    other = ExtractConfig(dataset="demo", store=config.store, backbones=("resnet18",), seed=1,
                          limit=1, weights=("none",))
    summary = run_extract(other, catalog=demo_small, progress=False)
    assert summary.num_ok == 1
    after = {fs.name for fs in store.feature_sets()}
    assert before < after and len(after - before) == 1


def test_cli_exits_non_zero_and_names_failures(bad_videos, tmp_path, ray_local):
    result = CliRunner().invoke(
        app,
        ["extract", "--dataset", "folder", "--data-root", str(bad_videos["good"].parent),
         "--backbone", "resnet18", "--weights", "none", "--store", str(tmp_path / "store")],
    )
    assert result.exit_code == 1, result.output
    assert "failed" in result.output
    assert "empty.mp4: file is empty" in result.output
    listing = CliRunner().invoke(app, ["ls", "--store", str(tmp_path / "store")])
    assert listing.exit_code == 0, listing.output
    (line,) = [line for line in listing.output.splitlines() if "resnet18" in line]
    row = line.replace("random(seed 0)", "random(seed=0)").split()
    # token shape, dtype, weights (random: said so), ok, failed
    assert row[1:6] == ["T×512", "float16", "random(seed=0)", "2", "3"]


def test_heads_train_runs_on_the_extracted_store(extracted, demo_small, tmp_path):
    """Both stages wired together: the STAN head trains on what `pipeline extract` wrote."""
    import json

    from heads.cli import app as heads_app

    config, summary = extracted
    spatial, temporal = summary.feature_sets  # exact names: other tests add look-alike sets
    result = CliRunner().invoke(
        heads_app,
        ["train", "--dataset", "demo", "--data-root", str(demo_small.root), "--variant", "small",
         "--head", "stan", "--task", "most_screen_time", "--store", config.store,
         "--features", spatial, "--features", temporal,
         "--runs-dir", str(tmp_path), "--epochs", "2", "--head-kwarg", "d_model=32",
         "--head-kwarg", "ff_dim=64", "--head-kwarg", "num_heads=2"],
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"train", "val", "test"}
    assert metrics["num_videos"] == {"train": 4, "val": 2, "test": 2}
    saved = (run_dir / "config.json").read_text()
    assert spatial in saved and temporal in saved

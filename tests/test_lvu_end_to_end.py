"""LVU end to end: a few videos named by real LVU ids (made from demo footage) under a video
root, the other 9,99x catalog videos missing; `pipeline extract --dataset lvu` stores the few and
reports the rest, `heads train --dataset lvu --task relationship` trains on what was stored."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import block_frames, write_video
from test_catalogs_benchmarks import LVU_LABELS, needs_lvu

pytestmark = [pytest.mark.integration, needs_lvu]
# relationship: two train videos, one val, one test (rows of the official files).
RELATIONSHIP_IDS = {"-e6lEsIUf3U": "train", "-it68CFJkNg": "train", "0QbMWpwr7FM": "val",
                    "0IWdfqsImMU": "test"}
EXTRACT_FLAGS = ["--backbone", "resnet18", "--plan", "uniform", "--num-frames", "4",
                 "--detector", "none", "--weights", "none"]


def test_extract_skips_missing_videos_without_touching_the_index(tmp_path):
    """Fast path of the contract: one tiny video on disk, 9,995 missing: one index row, the
    missing ids in the summary and the run record, no failure."""
    from pipeline.extract import ExtractConfig, run_extract
    from pipeline.store import FeatureStore

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "-e6lEsIUf3U.mp4", block_frames([(200, 30, 30), (30, 30, 200)], 10))
    config = ExtractConfig(
        dataset="lvu", backbones=("resnet18",), plan="uniform", num_frames=2, detector="none",
        store=str(tmp_path / "store"), num_workers=0, weights=("none",),
        catalog_options={"labels": str(LVU_LABELS), "video_root": str(videos)},
    )
    summary = run_extract(config, progress=False)
    assert (summary.num_videos, summary.num_ok, summary.num_failed) == (1, 1, 0)
    assert len(summary.missing) == 9995 and "-e6lEsIUf3U" not in summary.missing
    (fs,) = FeatureStore(config.store).feature_sets()
    assert fs.index()["video_id"].to_list() == ["-e6lEsIUf3U"]
    (record,) = (fs.path / "runs").glob("*.json")
    assert len(json.loads(record.read_text())["summary"]["missing"]) == 9995
    again = run_extract(config, progress=False)  # resume: nothing to do, nothing failed
    assert (again.num_skipped, again.num_ok, len(again.missing)) == (1, 0, 9995)


@pytest.mark.slow
def test_lvu_extract_then_train_relationship(demo_small, tmp_path, ray_local):
    from heads.cli import app as heads_app
    from pipeline.cli import app as pipeline_app

    videos = tmp_path / "videos"
    videos.mkdir()
    for video_id, source in zip(RELATIONSHIP_IDS, demo_small.videos["path"]):
        shutil.copy(source, videos / f"{video_id}.mp4")
    store, runs = tmp_path / "store", tmp_path / "runs"
    result = CliRunner().invoke(pipeline_app, [
        "extract", "--dataset", "lvu", "--labels", str(LVU_LABELS), "--video-root", str(videos),
        "--store", str(store), *EXTRACT_FLAGS])
    assert result.exit_code == 0, result.output
    assert "4 videos: 4 extracted, 0 already stored, 0 failed" in result.output
    assert "9992 catalog videos have no file on disk and were not extracted" in result.output

    result = CliRunner().invoke(heads_app, [
        "train", "--dataset", "lvu", "--data-root", str(LVU_LABELS), "--task", "relationship",
        "--head", "mean", "--features", "resnet18", "--plan", "uniform", "--store", str(store),
        "--runs-dir", str(runs), "--epochs", "2", "--head-kwarg", "hidden_dim=16"])
    assert result.exit_code == 0, result.output
    assert "task relationship (classification): train 2, val 1, test 1 videos" in result.output
    assert "dropped 240 of 244 videos: 240 missing on disk (no features)" in result.output
    (run_dir,) = runs.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_videos"] == {"train": 2, "val": 1, "test": 1}
    assert set(metrics["metrics"]["test"]) == {"top1"}

    # A task none of the stored videos belongs to fails with a message, not a traceback.
    result = CliRunner().invoke(heads_app, [
        "train", "--dataset", "lvu", "--data-root", str(LVU_LABELS), "--task", "view_count",
        "--head", "mean", "--features", "resnet18", "--plan", "uniform", "--store", str(store),
        "--runs-dir", str(runs)])
    assert result.exit_code == 2
    assert "no usable train video for task 'view_count'" in result.output

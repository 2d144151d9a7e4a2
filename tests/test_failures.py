"""Failures survived: killed workers, a killed driver, crashes mid-part, damage found by verify.

Crashes are injected with ``LONGVID_FAULT`` (:mod:`pipeline.faults`): the process exits with
``os._exit`` at a chosen point of a chosen video, which is what a SIGKILL or an OOM kill does
there, but deterministic. Videos are tiny (48 frames at 64×96) so each test takes seconds.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from catalogs.base import Catalog
from pipeline.cli import app
from pipeline import execution
from pipeline.extract import ExtractConfig, run_extract
from pipeline.store import FeatureStore
from pipeline.verify import mark_for_redo, verify_feature_set
from tests.conftest import TINY_EXTRACT_OPTIONS
from tests.conftest import TINY_NUM_VIDEOS as NUM_VIDEOS

pytestmark = pytest.mark.integration

OPTIONS = TINY_EXTRACT_OPTIONS
CLI_OPTIONS = ["--backbone", "resnet18", "--plan", "uniform", "--num-frames", "2",
               "--detector", "none", "--precision", "fp32", "--weights", "none"]


@pytest.fixture(scope="module")
def reference_store(tiny_catalog, tmp_path_factory):
    """(feature set, config) of an undisturbed in-process run over the six videos."""
    store = tmp_path_factory.mktemp("reference")
    # One part per video (no compaction): the damage tests below break single videos' parts.
    config = ExtractConfig(store=str(store), num_workers=0, compact=False, **OPTIONS)
    summary = run_extract(config, catalog=tiny_catalog, progress=False)
    assert summary.num_ok == NUM_VIDEOS
    (fs,) = FeatureStore(store).feature_sets()
    return fs, config


@pytest.fixture(scope="module")
def reference(reference_store) -> dict[str, np.ndarray]:
    """Tokens of the undisturbed run: what every recovered store must hold."""
    fs, _ = reference_store
    return {vid: f.tokens for vid, f in fs.read_many(sorted(fs.ok_ids())).items()}


def assert_complete(store, reference, *, failed=frozenset()) -> None:
    """Every video stored exactly once (one index row, its own slice of a part), no gaps, the
    reference's tokens, and verify finds nothing to redo; ``failed`` ids are recorded failed."""
    (fs,) = FeatureStore(store).feature_sets()
    index = fs.index()
    assert index["video_id"].to_list() == sorted([*reference, *failed])  # one row each
    ok = index.filter(pl.col("status") == "ok")
    assert ok["video_id"].to_list() == sorted(reference)
    assert ok.select("part", "offset").n_unique() == len(reference)
    for video_id, features in fs.read_many(sorted(reference)).items():
        np.testing.assert_allclose(
            features.tokens.astype(np.float32), reference[video_id].astype(np.float32), atol=2e-3
        )
    report = verify_feature_set(fs)
    assert report.ok and report.num_checked == len(reference), report


def test_killed_workers_cost_no_video_and_a_poison_video_fails_alone(
    tiny_catalog, reference, tmp_path, monkeypatch, ray_local
):
    """Workers die once at each point of writing (v1 before writing, v2 mid-part, v3 after
    publishing the part), and on every attempt at v4. The driver redoes v1-v3 on fresh workers
    and records v4 failed after one retry, while a reader polls the store and never sees a
    half-written video."""
    store = tmp_path / "store"
    faults = [("start", "v1"), ("mid_part", "v2"), ("after_part", "v3")]
    monkeypatch.setenv("LONGVID_FAULT", ",".join(
        [f"{point}:{vid}:{tmp_path / point}" for point, vid in faults] + ["start:v4"]))
    seen, errors, done = set(), [], threading.Event()

    def read_while_writing() -> None:
        while not done.wait(0.05):
            for fs in FeatureStore(store).feature_sets():
                try:
                    ok = sorted(fs.ok_ids())
                    for video_id, f in fs.read_many(ok).items():
                        assert f.tokens.shape == (2, 512), (video_id, f.tokens.shape)
                    seen.update(ok)
                except Exception as err:  # collected: the assertion below reports it
                    errors.append(repr(err))

    reader = threading.Thread(target=read_while_writing)
    reader.start()
    try:
        config = ExtractConfig(store=str(store), num_workers=2, crash_retries=1, **OPTIONS)
        summary = run_extract(config, catalog=tiny_catalog, progress=False)
    finally:
        done.set()
        reader.join()
    assert all((tmp_path / point).exists() for point, _ in faults), "a fault never fired"
    assert summary.num_worker_crashes == 3 + 2  # once each, and v4's first try and retry
    assert (summary.num_ok, summary.num_failed) == (NUM_VIDEOS - 1, 1), summary.failed
    assert "worker process died" in summary.failed["v4"] and "2 time(s)" in summary.failed["v4"]
    assert errors == [] and seen
    assert sum(summary.videos_per_node.values()) == NUM_VIDEOS - 1

    (fs,) = FeatureStore(store).feature_sets()
    row = fs.index().filter(pl.col("video_id") == "v4").row(0, named=True)
    assert row["status"] == "failed" and "v4.mp4" in row["error"]
    assert_complete(store, {k: v for k, v in reference.items() if k != "v4"}, failed={"v4"})
    report = verify_feature_set(fs)
    # What the dead workers left: v2's unpublished part, v3's published but unindexed one.
    assert [p.split("-")[1] for p in report.temporaries] == ["v2"]
    assert [p.split("-")[0] for p in report.orphan_parts] == ["v3"]
    gc = CliRunner().invoke(app, ["verify", "--store", str(store), "--gc"])
    assert "1 orphan part(s), 1 unpublished part(s)" in gc.output
    assert "removed 2 orphan/unpublished part(s)" in gc.output
    after = verify_feature_set(fs)
    assert after.ok and not after.orphan_parts and not after.temporaries
    assert fs.ok_ids() == set(reference) - {"v4"}


def _extract_command(catalog: Catalog, store: Path, num_workers: int = 0) -> list[str]:
    """``pipeline extract`` over ``catalog`` as a command line run with this Python."""
    return [sys.executable, "-c", "from pipeline.cli import app; app(prog_name='pipeline')",
            "extract", "--dataset", "folder", "--data-root", str(catalog.root), "--store",
            str(store), "--num-workers", str(num_workers), *CLI_OPTIONS]


def test_a_killed_driver_resumes_and_its_half_part_stays_invisible(tiny_catalog, reference,
                                                                   tmp_path):
    """The driver (extracting in its own process) dies while writing v3's part; readers see
    exactly v0-v2; the same command run again extracts only v3-v5."""
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]),
           "LONGVID_FAULT": "mid_part:v3"}
    killed = subprocess.run(_extract_command(tiny_catalog, store), env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == 137, killed.stderr[-2000:]

    (fs,) = FeatureStore(store).feature_sets()
    assert fs.ok_ids() == {"v0", "v1", "v2"}
    assert [p.name.startswith(".tmp-v3") for p in (fs.path / "parts").iterdir()].count(True) == 1
    assert set(fs.read_many(["v0", "v1", "v2"])) == {"v0", "v1", "v2"}
    with pytest.raises(KeyError, match="v3"):
        fs.read("v3")
    listing = CliRunner().invoke(app, ["ls", "--store", str(store)])
    row = listing.output.splitlines()[1].replace("random(seed 0)", "random(seed=0)").split()
    assert row[3:6] == ["random(seed=0)", "3", "0"]  # weights, ok, failed

    env.pop("LONGVID_FAULT")
    again = subprocess.run(_extract_command(tiny_catalog, store), env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "6 videos: 3 extracted, 3 already stored, 0 failed" in again.stdout
    assert_complete(store, reference)


@pytest.mark.slow
def test_a_sigkilled_ray_driver_resumes(tiny_catalog, reference, tmp_path):
    """SIGKILL to a driver running Ray extractors (its whole process group: the local Ray goes
    with it) once two videos are committed; the same command then does only the rest.
    Slow: two Ray start-ups in subprocesses."""
    store = tmp_path / "store"
    command = _extract_command(tiny_catalog, store, num_workers=1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    driver = subprocess.Popen(command, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list(store.glob("*/index/v*.parquet"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    # An extractor busy with a video may outlive its driver for a moment and commit it (a whole,
    # atomic write); wait until the store is quiet.
    seen, quiet_since = None, time.monotonic()
    while time.monotonic() - quiet_since < 5:
        now = sorted(p.name for p in store.glob("*/index/*"))
        seen, quiet_since = now, quiet_since if now == seen else time.monotonic()
        time.sleep(0.2)
    (fs,) = FeatureStore(store).feature_sets()
    committed = fs.ok_ids()
    assert 2 <= len(committed) < NUM_VIDEOS, committed
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (f"{NUM_VIDEOS - len(committed)} extracted, {len(committed)} already stored"
            in again.stdout)
    assert_complete(store, reference)


def _damage(fs) -> dict[str, str]:
    """Four kinds of damage, one per video; returns video_id -> words the report must use."""
    rows = {r["video_id"]: r for r in fs.index().iter_rows(named=True)}
    parts = fs.path / "parts"
    chunk = parts / rows["v0"]["part"] / "tokens" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])  # truncated chunk file
    for name in ("tokens", "start_sec", "end_sec", "scene_idx"):
        shutil.rmtree(parts / rows["v1"]["part"] / name / "c")  # chunks gone, metadata kept
    shutil.rmtree(parts / rows["v2"]["part"])  # index row pointing at a missing part
    fs._write_index_row("v3", status="ok", num_tokens=3, part=rows["v3"]["part"], offset=0)
    return {"v0": "cannot be decoded", "v1": "chunk(s) of tokens are missing",
            "v2": "is missing", "v3": "token count mismatch"}


def test_verify_names_damaged_videos_and_fix_gets_them_redone(tiny_catalog, reference,
                                                              reference_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(reference_store[1].store, store)
    config = dataclasses.replace(reference_store[1], store=str(store))
    (fs,) = FeatureStore(store).feature_sets()
    assert verify_feature_set(fs).ok and mark_for_redo(fs, verify_feature_set(fs)) == []
    expected = _damage(fs)
    (fs.path / "index" / "v5-junk.parquet").write_bytes(b"PAR1 not parquet")

    report = verify_feature_set(fs)
    assert report.redo == sorted(expected)
    for video_id, words in expected.items():
        assert words in report.damaged[video_id], report.damaged[video_id]
    assert list(report.bad_index_files) == ["v5-junk.parquet"]
    quick = verify_feature_set(fs, quick=True)  # metadata only: misses the chunk-level damage
    assert quick.redo == ["v2", "v3"]

    result = CliRunner().invoke(app, ["verify", "--store", str(store)])
    assert result.exit_code == 1
    assert "redo: v0 v1 v2 v3" in result.output
    result = CliRunner().invoke(app, ["verify", "--store", str(store), "--fix"])
    assert result.exit_code == 0 and "marked for redo" in result.output
    assert fs.ok_ids() == {"v4", "v5"}
    assert "verify: part" in fs.index().filter(pl.col("video_id") == "v2")["error"][0]

    summary = run_extract(config, catalog=tiny_catalog, progress=False)
    assert (summary.num_ok, summary.num_skipped) == (4, 2)
    assert_complete(store, reference)
    clean = CliRunner().invoke(app, ["verify", "--store", str(store)])
    assert clean.exit_code == 0 and "0 damaged" in clean.output


def test_a_rerun_packs_the_parts_a_killed_run_left(tiny_catalog, tmp_path):
    """Issue 16 item 10: one-video parts left unpacked (a driver killed before it compacted)
    are packed by the next run, even when it has no video left to extract."""
    from pipeline.compact import is_packed

    store = tmp_path / "store"
    left = run_extract(ExtractConfig(store=str(store), num_workers=0, compact=False, **OPTIONS),
                       catalog=tiny_catalog, progress=False)
    (fs,) = FeatureStore(store).feature_sets()
    assert left.num_ok == NUM_VIDEOS and not any(map(is_packed, fs.index()["part"].to_list()))
    rerun = run_extract(ExtractConfig(store=str(store), num_workers=0, **OPTIONS),
                        catalog=tiny_catalog, progress=False)
    assert (rerun.num_ok, rerun.num_skipped) == (0, NUM_VIDEOS) and rerun.compact_sec > 0
    assert all(map(is_packed, fs.index()["part"].to_list()))
    quiet = run_extract(ExtractConfig(store=str(store), num_workers=0, **OPTIONS),
                        catalog=tiny_catalog, progress=False)
    assert quiet.compact_sec == 0  # nothing small left: no compaction


def test_a_failure_never_replaces_a_newer_success(tiny_catalog, tmp_path):
    """Issue 16 item 7: run B started, run A committed the video ok, then B's attempt failed:
    the ok row stays. An ok row older than the run (a video being redone) is replaced."""
    import time

    from pipeline.worker import FeatureSetJob, VideoExtractor

    store = tmp_path / "store"
    run_extract(ExtractConfig(store=str(store), num_workers=0, compact=False, **OPTIONS),
                catalog=tiny_catalog, progress=False)  # "run A" stores v0 ... v5
    (fs,) = FeatureStore(store).feature_sets()
    config = ExtractConfig(store=str(store), **OPTIONS)
    job = FeatureSetJob(fs.name, "resnet18", "none", 0, "fp32", "pooled")
    before_a = time.time() - 3600  # run B began before A committed
    run_b = VideoExtractor(str(store), [job], run_started_at=before_a,
                           **execution._extractor_kwargs(config))
    result = run_b.process("v0", str(tmp_path / "gone.mp4"), [fs.name])  # a transient failure
    assert result.status == "failed" and "another run stored the video" in result.error
    assert fs.index().filter(pl.col("video_id") == "v0")["status"].to_list() == ["ok"]
    later = VideoExtractor(str(store), [job], run_started_at=time.time() + 1,
                           **execution._extractor_kwargs(config))
    later.process("v1", str(tmp_path / "gone.mp4"), [fs.name])  # v1's ok row predates the run
    assert fs.index().filter(pl.col("video_id") == "v1")["status"].to_list() == ["failed"]

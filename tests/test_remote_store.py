"""Stores addressed by fsspec URLs: ``memory://`` (object-store semantics: no rename, one put
per object) in one process, ``file://`` across Ray worker processes."""

from __future__ import annotations

import uuid

import fsspec
import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.extract import ExtractConfig, run_extract
from pipeline.store import FeatureStore
from pipeline.verify import verify_feature_set
from tests.conftest import TINY_EXTRACT_OPTIONS, TINY_NUM_VIDEOS

SPEC = {"dataset": "toy", "backbone": "resnet18", "plan": "scene"}


@pytest.fixture
def memory_url():
    """A fresh ``memory://`` store URL, removed afterwards (the filesystem is process-wide)."""
    url = f"memory://longvid-test-{uuid.uuid4().hex[:8]}/store"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path.rsplit("/", 1)[0]):
        fs.rm(path.rsplit("/", 1)[0], recursive=True)


def test_memory_store_round_trips_without_renames(memory_url):
    store = FeatureStore(memory_url)
    assert not store.loc.is_local and store.url == memory_url.replace("memory://", "memory:///")
    fs = store.create("toy__x", spec=SPEC, token_kind="pooled", dim=8, dtype="float16")
    rng = np.random.default_rng(0)
    tokens = {"a": rng.normal(size=(3, 8)), "b/c": rng.normal(size=(5, 8))}
    for vid, t in tokens.items():
        fs.write_video(vid, t, start_sec=np.arange(len(t)), end_sec=np.arange(len(t)) + 1.0)
    fs.write_status("bad", "failed", "boom")

    again = FeatureStore(memory_url)  # a second handle sees what the first wrote
    assert [f.name for f in again.feature_sets()] == ["toy__x"]
    assert again.find(backbone="resnet18")[0].spec == SPEC
    reopened = again.open("toy__x")
    assert reopened.ok_ids() == {"a", "b/c"} and reopened.index().height == 3
    got = reopened.read("b/c")
    np.testing.assert_allclose(got.tokens, tokens["b/c"], atol=2e-3)
    np.testing.assert_array_equal(got.end_sec, np.arange(5) + 1.0)
    with pytest.raises(KeyError, match="failed"):
        reopened.read("bad")
    # Parts are written under their final names (no .tmp- + rename on object stores).
    memfs, root = fsspec.core.url_to_fs(memory_url)
    parts = memfs.ls(f"{root}/toy__x/parts", detail=False)
    assert len([p for p in parts if not p.endswith("zarr.json")]) == 2
    assert not any(".tmp-" in p for p in memfs.find(root))
    assert reopened.size_bytes() > 0
    with pytest.raises(ValueError, match="different config"):
        again.create("toy__x", spec={**SPEC, "plan": "fps"}, token_kind="pooled", dim=8,
                     dtype="float16")


def test_verify_finds_a_lost_object_in_a_memory_store(memory_url):
    fs = FeatureStore(memory_url).create("toy__x", spec=SPEC, token_kind="pooled", dim=8,
                                         dtype="float16")
    for vid in ("a", "b"):
        fs.write_video(vid, np.ones((4, 8)), start_sec=np.arange(4), end_sec=np.arange(4) + 1.0)
    assert verify_feature_set(fs).ok
    part = fs.index().filter(fs.index()["video_id"] == "b")["part"][0]
    memfs, root = fsspec.core.url_to_fs(memory_url)
    memfs.rm(f"{root}/toy__x/parts/{part}/tokens/c/0/0")
    report = verify_feature_set(fs)
    assert report.redo == ["b"] and "chunk(s) of tokens are missing" in report.damaged["b"]


def test_extract_into_memory_store_in_process(tiny_catalog, memory_url):
    config = ExtractConfig(store=memory_url, num_workers=0, limit=2, **TINY_EXTRACT_OPTIONS)
    summary = run_extract(config, catalog=tiny_catalog, progress=False)
    assert (summary.num_ok, summary.num_failed) == (2, 0)
    (fs,) = FeatureStore(memory_url).feature_sets()
    assert fs.read("v1").tokens.shape == (2, 512)
    memfs, root = fsspec.core.url_to_fs(memory_url)
    assert memfs.find(f"{root}/{fs.name}/runs")  # the run's record went to the store too
    again = run_extract(config, catalog=tiny_catalog, progress=False)
    assert again.num_skipped == 2 and again.num_ok == 0
    listing = CliRunner().invoke(app, ["ls", "--store", memory_url])
    assert listing.exit_code == 0 and fs.name in listing.output
    from heads.data import resolve_feature_sets  # stage 2 reads the same URL

    (found,) = resolve_feature_sets(memory_url, "folder", ["resnet18"], plan="uniform")
    assert found.name == fs.name and set(found.read_many(["v0", "v1"])) == {"v0", "v1"}


def test_memory_store_refused_for_ray_workers(tiny_catalog, memory_url):
    config = ExtractConfig(store=memory_url, num_workers=2, **TINY_EXTRACT_OPTIONS)
    with pytest.raises(ValueError, match="Ray workers cannot reach it"):
        run_extract(config, catalog=tiny_catalog, progress=False)


@pytest.mark.integration
def test_file_url_store_with_ray_workers(tiny_catalog, tmp_path, ray_local):
    url = f"file://{tmp_path}/store"
    config = ExtractConfig(store=url, num_workers=2, **TINY_EXTRACT_OPTIONS)
    summary = run_extract(config, catalog=tiny_catalog, progress=False)
    assert (summary.num_ok, summary.num_failed) == (TINY_NUM_VIDEOS, 0)
    by_url, by_path = FeatureStore(url).feature_sets(), FeatureStore(tmp_path / "store").feature_sets()
    assert [f.name for f in by_url] == [f.name for f in by_path]
    assert by_url[0].loc.is_local  # file:// takes the local fast path (atomic renames)
    assert by_path[0].ok_ids() == {f"v{i}" for i in range(TINY_NUM_VIDEOS)}
    result = CliRunner().invoke(app, ["verify", "--store", url])
    assert result.exit_code == 0 and f"{TINY_NUM_VIDEOS} ok videos checked, 0 damaged" in result.output

"""``--topology gpu-server`` on the CPU: the backbone server (pipeline/backbone_server.py) on
device ``cpu`` stands in for the GPU. Workers decode, the server batches their frames across
videos; the videos are committed, failed and resumed exactly as in the per-worker topology."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import polars as pl
import pytest

from catalogs.base import Catalog
from pipeline.backbone_server import BackboneServer, model_key, plan_placement
from pipeline.extract import ExtractConfig, run_extract
from pipeline.store import FeatureStore
from pipeline.worker import FeatureSetJob
from tests.conftest import TINY_EXTRACT_OPTIONS

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = {**TINY_EXTRACT_OPTIONS, "dtype": "float32", "compact": False}
JOB = FeatureSetJob("fs", "resnet18", "none", 0, "fp32")


def _subset(catalog: Catalog, ids: list[str], extra: dict[str, str] | None = None) -> Catalog:
    videos = catalog.videos.filter(pl.col("video_id").is_in(ids))
    if extra:
        videos = pl.concat([videos, pl.DataFrame({"video_id": list(extra), "path": list(
            extra.values()), "split": ["train"] * len(extra)})])
    return dataclasses.replace(catalog, videos=videos)


def _tokens(store) -> dict[str, np.ndarray]:
    (fs,) = FeatureStore(store).feature_sets()
    return {vid: f.tokens for vid, f in fs.read_many(sorted(fs.ok_ids())).items()}


@pytest.fixture(scope="module")
def server():
    return BackboneServer([JOB], device="cpu", batch_size=8, max_wait_sec=0.05)


def _frames(seed: int, num: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num, 64, 96, 3), dtype=np.uint8)


def test_requests_of_two_workers_share_one_forward(server):
    a, b = _frames(0, 4), _frames(1, 4)

    async def both():
        return await asyncio.gather(server.embed(model_key(JOB), a, "pooled"),
                                    server.embed(model_key(JOB), b, "pooled"))

    before = len(server.batch_sizes)
    out_a, out_b = asyncio.run(both())
    assert server.batch_sizes[before:] == [8]  # one forward of both batches, not two
    model = server.models[model_key(JOB)]
    # Each request gets its own tokens: the same as a forward of its batch alone.
    np.testing.assert_allclose(out_a, model(a), atol=1e-5)
    np.testing.assert_allclose(out_b, model(b), atol=1e-5)


def test_a_batch_never_passes_batch_size_and_a_bad_request_fails_alone(server):
    async def three():
        return await asyncio.gather(
            server.embed(model_key(JOB), _frames(0, 5), "pooled", "float16"),
            server.embed(model_key(JOB), _frames(1, 5), "pooled"),
            server.embed(("nope",), _frames(2, 1), "pooled"), return_exceptions=True)

    before = len(server.batch_sizes)
    out_a, out_b, bad = asyncio.run(three())
    assert server.batch_sizes[before:] == [5, 5]  # 10 frames > batch_size 8: two forwards
    assert out_a.dtype == np.float16 and out_a.shape == (5, 512) and out_b.shape == (5, 512)
    assert isinstance(bad, KeyError) and "no model" in str(bad)


def test_gpu_server_run_gives_the_per_worker_tokens_and_resumes(ray_local, tiny_catalog,
                                                                tmp_path):
    catalog = _subset(tiny_catalog, ["v0", "v1", "v2"])
    per_worker = ExtractConfig(store=str(tmp_path / "a"), num_workers=2, **OPTIONS)
    run_extract(per_worker, catalog=catalog, progress=False)
    config = dataclasses.replace(per_worker, store=str(tmp_path / "b"), topology="gpu-server")
    summary = run_extract(config, catalog=catalog, progress=False)
    assert summary.num_ok == 3 and summary.server_num_forwards > 0
    assert summary.server_num_samples == 3 * 2  # the uniform plan's 2 frames per video
    # Same feature set name: the topology is not fingerprinted.
    assert ([fs.name for fs in FeatureStore(tmp_path / "a").feature_sets()]
            == [fs.name for fs in FeatureStore(tmp_path / "b").feature_sets()])
    a, b = _tokens(tmp_path / "a"), _tokens(tmp_path / "b")
    assert sorted(a) == sorted(b) == ["v0", "v1", "v2"]
    for vid in a:  # batched with other videos' frames: float rounding at most
        np.testing.assert_allclose(a[vid], b[vid], atol=1e-5)
    again = run_extract(config, catalog=_subset(tiny_catalog, ["v0", "v1", "v2", "v3"]),
                        progress=False)
    assert again.num_skipped == 3 and again.num_ok == 1


def test_a_bad_video_is_recorded_as_failed_and_the_others_are_stored(ray_local, tiny_catalog,
                                                                     bad_videos, tmp_path,
                                                                     caplog):
    catalog = _subset(tiny_catalog, ["v4"], {"broken": str(bad_videos["text"])})
    config = ExtractConfig(store=str(tmp_path), topology="gpu-server", **OPTIONS)
    with caplog.at_level("WARNING", logger="pipeline.execution"):
        summary = run_extract(config, catalog=catalog, progress=False)
    # Without a GPU the user is told the topology is slower there, and what to use.
    assert any("no GPU" in r.message and "per-worker" in r.message for r in caplog.records)
    assert summary.num_ok == 1 and summary.num_failed == 1 and "broken" in summary.failed
    (fs,) = FeatureStore(tmp_path).feature_sets()
    index = fs.index()
    assert dict(zip(index["video_id"], index["status"])) == {"v4": "ok", "broken": "failed"}


@pytest.mark.parametrize("bad, match", [
    (dict(topology="ring"), "--topology 'ring'"),
    (dict(topology="gpu-server", num_workers=0), "needs Ray workers"),
    (dict(topology="gpu-server", gpus_per_worker=0.5), "hold no GPU"),
    (dict(server_batch_size=0), "--server-batch-size"),
    (dict(topology="gpu-server", precision="auto"), "give --precision bf16"),
])
def test_bad_topology_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ExtractConfig(**{**OPTIONS, **bad})


def _node(node_id, cpus, gpus=0, alive=True):
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus}}


def test_each_gpu_node_s_workers_use_the_server_on_their_own_node():
    nodes = [_node("a", 4, gpus=1), _node("b", 4, gpus=2), _node("c", 2), _node("d", 8, 1, False)]
    placement = plan_placement(nodes, num_workers=7)
    assert placement.server_nodes == ["a", "b", "b"]  # one per GPU of a live node
    # a: 3 free CPUs, b: 2, c: 2; the nodes take turns, each as long as it has free CPUs
    assert placement.worker_nodes == ["a", "b", "c", "a", "b", "c", "a"]
    servers = [placement.server_nodes[placement.server_of(i)] for i in range(7)]
    assert servers[0::3] == ["a"] * 3  # a's workers: a's server
    assert [placement.server_of(i) for i in (1, 4)] == [1, 2]  # b's two servers in turn
    assert [placement.server_of(i) for i in (2, 5)] == [0, 1]  # c has none: all in turn


def test_without_gpus_every_worker_shares_the_one_cpu_server_anywhere():
    placement = plan_placement([_node("a", 2), _node("b", 2)], num_workers=3)
    assert placement.server_nodes == [] and placement.worker_nodes == [None] * 3
    assert {placement.server_of(i) for i in range(3)} == {0}


def test_more_workers_than_free_cpus_wrap_around_the_nodes():
    placement = plan_placement([_node("a", 1, gpus=1), _node("b", 2)], num_workers=4)
    assert placement.worker_nodes == ["b", "b", "b", "b"]  # a's one CPU is its server's
    placement = plan_placement([_node("a", 1, gpus=1)], num_workers=2)
    assert placement.worker_nodes == ["a", "a"]  # no free CPU anywhere: the server's node


def test_a_worker_with_a_server_never_imports_torch(tiny_catalog, tmp_path):
    """Its backbones run in the server: importing torch (1.6 s of CPU on 2 cores) would only
    slow every gpu-server worker's start-up."""
    import pickle
    import subprocess
    import sys

    from pipeline import execution

    store = tmp_path / "store"
    config = ExtractConfig(store=str(store), num_workers=0, **OPTIONS)
    run_extract(config, catalog=_subset(tiny_catalog, ["v0"]), progress=False)
    (fs,) = FeatureStore(store).feature_sets()
    job = FeatureSetJob(fs.name, "resnet18", "none", 0, "fp32", "pooled")
    args = tmp_path / "args.pkl"  # as Ray hands them to the actor: pickled
    args.write_bytes(pickle.dumps(([str(store), [job]], {
        **execution._extractor_kwargs(config), "device": "cpu", "num_threads": 1})))
    script = f"""
import pickle, sys
from pipeline.worker import VideoExtractor
args, kwargs = pickle.loads(open({str(args)!r}, "rb").read())
VideoExtractor(*args, server=object(), **kwargs)
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True)
    assert out.stdout.split() == ["False"], out.stderr

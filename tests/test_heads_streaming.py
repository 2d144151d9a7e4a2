"""Training straight from the store: StoredVideos, PartCache, PartLocalSampler, the trainer's
``data_loading`` modes, on a toy store before and after `pipeline compact`."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from heads.data import (
    PartCache,
    PartLocalSampler,
    StoredVideos,
    load_task_data,
    resolve_feature_sets,
)
from heads.models import create_head
from heads.train import train
from heads.windows import predict_videos
from pipeline.compact import compact_feature_set
from pipeline.store import FeatureStore
from tests.test_heads_train import DATASET, small_config, toy_catalog, write_toy_store

pytestmark = pytest.mark.usefixtures("one_thread")
FEATURES = ("resnet18", "r2plus1d_18")
QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    """The toy store as extraction leaves it (one part per video) and compacted."""
    single = tmp_path_factory.mktemp("single")
    write_toy_store(single)
    packed = tmp_path_factory.mktemp("packed") / "store"
    shutil.copytree(single, packed)
    for fs in FeatureStore(packed).feature_sets():
        compact_feature_set(fs, target_mib=1e-3)  # ~1 KiB parts: several videos each
    return {"single": single, "packed": packed}


def _data(store, loading, **kw):
    sets = resolve_feature_sets(store, DATASET, FEATURES)
    return load_task_data(toy_catalog(), "genre", sets, loading=loading, **QUIET, **kw)


@pytest.mark.parametrize("layout", ["single", "packed"])
def test_streamed_videos_equal_the_preloaded_ones(stores, layout):
    memory, stream = _data(stores[layout], "preload"), _data(stores[layout], "stream")
    assert isinstance(stream.tokens["train"], StoredVideos)
    for split in ("train", "val", "test"):
        assert sorted(stream.video_ids[split]) == sorted(memory.video_ids[split])
        where = {v: i for i, v in enumerate(memory.video_ids[split])}
        for i, video_id in enumerate(stream.video_ids[split]):
            j = where[video_id]
            for got, want in zip(stream.tokens[split][i], memory.tokens[split][j]):
                assert got.dtype == np.float32
                np.testing.assert_array_equal(got, want)
            for got, want in zip(stream.times[split][i], memory.times[split][j]):
                np.testing.assert_array_equal(got, want)
            assert stream.targets[split][i] == memory.targets[split][j]
    assert stream.num_dropped == memory.num_dropped  # toy/unlabelled, toy/broken


def test_sampler_reads_each_part_once_per_epoch(stores):
    data = _data(stores["packed"], "stream")
    videos = data.tokens["train"]
    parts = videos.parts()
    assert len(set(parts)) < len(parts)  # several train videos per part
    sampler = PartLocalSampler(videos, block_bytes=1, seed=0)  # a block per part
    epochs = [list(sampler) for _ in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(len(videos)))  # a permutation
        runs = [parts[i] for i in order]
        changes = sum(a != b for a, b in zip(runs, runs[1:]))
        assert changes == len(set(parts)) - 1  # each part's videos come together
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    assert list(PartLocalSampler(videos, block_bytes=1, seed=0)) == epochs[0]  # seeded

    cache = videos.cache
    before = cache.num_reads
    for i in epochs[0]:
        videos[i]
    # stream 0 follows the sampler: one read per part; stream 1 is packed in the same video
    # order, so its parts are read at most once each too (the cache holds the whole toy set)
    r2_parts = {row["part"] for row in videos.rows[1]}
    assert cache.num_reads - before <= len(set(parts)) + len(r2_parts)


def test_a_small_cache_reads_lone_slices_and_evicts(stores):
    sets = resolve_feature_sets(stores["packed"], DATASET, FEATURES[:1])
    fs = sets[0]
    rows = [r for r in fs.index().iter_rows(named=True) if r["status"] == "ok"]
    tiny = PartCache(max_bytes=1)  # smaller than any part: never keeps one
    tokens, unchecked = tiny.slice(fs, rows[0])
    assert unchecked and tokens.dtype == np.float32
    np.testing.assert_array_equal(tokens, fs.read(rows[0]["video_id"]).tokens)
    tiny.slice(fs, rows[0])
    assert tiny.num_reads == 2 and not tiny._parts
    one_part = PartCache(max_bytes=1500)  # holds one ~1 KiB part at a time
    by_part = {}
    for row in rows:
        by_part.setdefault(row["part"], row)
    first, second = list(by_part.values())[:2]
    one_part.slice(fs, first)
    one_part.slice(fs, first)
    one_part.slice(fs, second)
    one_part.slice(fs, first)  # evicted by the second part: read again
    assert one_part.num_reads == 3 and len(one_part._parts) == 1


def test_windowed_predictions_are_the_same_streamed_or_preloaded(stores):
    memory, stream = _data(stores["packed"], "preload"), _data(stores["packed"], "stream")
    torch.manual_seed(0)
    model = create_head("mean", in_dim=[16, 16], num_outputs=3, hidden_dim=8)
    order = [memory.video_ids["test"].index(v) for v in stream.video_ids["test"]]
    kw = {"task_kind": "classification", "window_sec": 8.0, "batch_size": 3}
    want = predict_videos(model, memory.tokens["test"], memory.times["test"], **kw)[order]
    got = predict_videos(model, stream.tokens["test"], stream.times["test"], **kw)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_auto_streams_only_over_the_memory_limit(stores):
    lines = []
    data = load_task_data(toy_catalog(), "genre",
                          resolve_feature_sets(stores["packed"], DATASET, FEATURES),
                          loading="auto", max_preload_bytes=100, log=lines.append)
    assert isinstance(data.tokens["train"], StoredVideos)
    assert any("streaming them from the store" in line for line in lines)
    assert isinstance(_data(stores["packed"], "auto").tokens["train"], list)  # toy set: tiny
    with pytest.raises(ValueError, match="preload, stream or auto"):
        _data(stores["packed"], "lazy")


def test_non_finite_tokens_raise_naming_the_video_when_read(tmp_path):
    root = tmp_path / "store"
    write_toy_store(root)
    (fs,) = [s for s in FeatureStore(root).feature_sets() if "resnet18" in s.name]
    fs.write_video("toy/v03", np.full((2, 16), np.nan), start_sec=[0, 4], end_sec=[4, 8])
    data = _data(root, "stream")
    split = next(s for s, ids in data.video_ids.items() if "toy/v03" in ids)
    with pytest.raises(ValueError, match="'toy/v03' has NaN or inf tokens in feature set"):
        data.tokens[split][data.video_ids[split].index("toy/v03")]


@pytest.mark.parametrize("task", ["genre", "tags", "score"])
def test_training_from_the_store_learns_like_training_from_ram(stores, tmp_path, task):
    runs = {}
    for loading in ("preload", "stream"):
        config = small_config("mean", task, stores["packed"], tmp_path / loading, epochs=15,
                              data_loading=loading)
        runs[loading] = train(config, catalog=toy_catalog(), **QUIET)
    again = train(small_config("mean", task, stores["packed"], tmp_path / "again", epochs=15,
                               data_loading="stream"), catalog=toy_catalog(), **QUIET)
    assert again["metrics"] == runs["stream"]["metrics"]  # deterministic
    metric = {"genre": "top1", "tags": "mAP", "score": "mse"}[task]
    memory, stream = (runs[k]["metrics"]["test"][metric] for k in ("preload", "stream"))
    baseline = runs["stream"]["baseline"]["test"][metric]
    if metric == "mse":
        assert stream < baseline and memory < baseline
    else:
        assert stream > baseline and memory > baseline


def test_eval_of_a_streamed_run_streams_and_reproduces_its_metrics(stores, tmp_path):
    from heads.evaluate import evaluate_run

    config = small_config("mean", "genre", stores["packed"], tmp_path, epochs=3,
                          data_loading="stream")
    result = train(config, catalog=toy_catalog(), **QUIET)
    again = evaluate_run(result["run_dir"], catalog=toy_catalog(), **QUIET)
    for split in ("train", "val", "test"):
        for name, value in result["metrics"][split].items():
            assert again["metrics"][split][name] == pytest.approx(value, abs=1e-6)

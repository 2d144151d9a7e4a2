"""The feature store contract: ragged parts, atomic publication, index, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.store import FeatureStore, fingerprint, video_key

SPEC = {"dataset": "toy", "backbone": "resnet18", "plan": "scene"}


def _fs(tmp_path, **kw):
    return FeatureStore(tmp_path / "store").create(
        "toy__resnet18__scene__x", spec=kw.get("spec", SPEC), token_kind="pooled", dim=8,
        dtype="float16",
    )


def test_ragged_videos_round_trip_and_read_alone(tmp_path):
    fs = _fs(tmp_path)
    rng = np.random.default_rng(0)
    lengths = {"a": 3, "b": 11, "c/with/slash": 1}
    written = {}
    for vid, n in lengths.items():
        tokens = rng.normal(size=(n, 8)).astype(np.float32)
        written[vid] = tokens
        fs.write_video(vid, tokens, start_sec=np.arange(n), end_sec=np.arange(n) + 1.0,
                       scene_idx=np.arange(n), duration_sec=float(n))
    got = fs.read("b")
    assert got.tokens.dtype == np.float16 and got.tokens.shape == (11, 8)
    np.testing.assert_allclose(got.tokens, written["b"], atol=2e-3)
    np.testing.assert_array_equal(got.end_sec, np.arange(11) + 1.0)
    assert set(fs.read_many(list(lengths))) == set(lengths)
    index = fs.index()
    assert index["num_tokens"].to_list() == [3, 11, 1]
    assert fs.ok_ids() == set(lengths)


def test_failed_video_is_indexed_but_not_readable(tmp_path):
    fs = _fs(tmp_path)
    fs.write_status("bad", "failed", "/x/bad.mp4: file not found")
    row = fs.index().row(0, named=True)
    assert (row["status"], row["error"]) == ("failed", "/x/bad.mp4: file not found")
    with pytest.raises(KeyError, match="failed"):
        fs.read("bad")
    assert fs.ok_ids() == set()


def test_retry_replaces_the_index_row(tmp_path):
    fs = _fs(tmp_path)
    fs.write_status("v", "failed", "boom")
    fs.write_video("v", np.ones((2, 8)), start_sec=[0, 1], end_sec=[1, 2])
    assert fs.index().height == 1 and fs.ok_ids() == {"v"}


def test_unpublished_parts_are_invisible(tmp_path):
    fs = _fs(tmp_path)
    fs.write_video("v", np.ones((2, 8)), start_sec=[0, 1], end_sec=[1, 2])
    # a writer that crashed mid-part leaves only a .tmp- directory and no index row
    (fs.path / "parts" / ".tmp-crashed").mkdir()
    (fs.path / "index" / ".tmp-1234-w.parquet").write_bytes(b"partial")
    assert fs.ok_ids() == {"v"}


def test_shape_mismatch_is_an_error_naming_the_video(tmp_path):
    fs = _fs(tmp_path)
    with pytest.raises(ValueError, match="v1"):
        fs.write_video("v1", np.ones((2, 7)), start_sec=[0, 1], end_sec=[1, 2])
    with pytest.raises(ValueError, match="v2"):
        fs.write_video("v2", np.ones((2, 8)), start_sec=[0], end_sec=[1, 2])


def test_a_different_config_never_overwrites(tmp_path):
    _fs(tmp_path)
    with pytest.raises(ValueError, match="different config"):
        _fs(tmp_path, spec={**SPEC, "dtype": "float32"})
    store = FeatureStore(tmp_path / "store")
    assert [fs.name for fs in store.find(backbone="resnet18")] == ["toy__resnet18__scene__x"]
    assert store.find(backbone="r2plus1d_18") == []
    with pytest.raises(KeyError, match="toy__resnet18__scene__x"):
        store.open("nope")


def test_fingerprint_and_keys_are_stable():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert video_key("a/b") != video_key("a_b")
    assert "/" not in video_key("a/b")

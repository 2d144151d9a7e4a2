"""Import of foreign feature dumps and export of feature sets: round trips, failures, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.export import export_features
from pipeline.interop import import_features
from pipeline.store import FeatureStore, fingerprint

KINDS = {"pooled": (8,), "patch": (5, 8)}  # token kind -> per-token shape (D,) or (N, D)
LENGTHS = {"a": 3, "show/ep1": 7, "show/s2/ep3": 1, "z": 12}  # nested ids on purpose


def _dump(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    for video_id, array in arrays.items():
        path = root / f"{video_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
    return root


def _arrays(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # float64 on purpose: the common dump dtype that the store must never keep
    return {v: rng.normal(size=(n, *KINDS[kind])) for v, n in LENGTHS.items()}


def _import(store, source, **kw):
    kw = {"dataset": "toy", "backbone": "vit_b16", "plan": "fps", **kw}
    return import_features(store, source, **kw)


def _read_all(store, name):
    fs = FeatureStore(store).open(name)
    return fs.read_many(sorted(fs.ok_ids()))


@pytest.mark.parametrize("kind", list(KINDS))
def test_npy_to_store_to_h5_to_store_round_trip(tmp_path, kind):
    arrays = _arrays(kind)
    source = _dump(tmp_path / "dump", arrays)
    store = tmp_path / "store"
    first = _import(store, source, fps=2.0)
    assert (first.num_ok, first.num_failed, first.num_skipped) == (len(LENGTHS), 0, 0)
    fs = FeatureStore(store).open(first.feature_set)
    assert fs.attrs["token_kind"] == kind and fs.attrs["dim"] == 8
    stored = _read_all(store, first.feature_set)
    for video_id, array in arrays.items():
        got = stored[video_id]
        assert got.tokens.dtype == np.float16 and got.tokens.shape == array.shape
        np.testing.assert_allclose(got.tokens, array, rtol=1e-3, atol=1e-3)
        # fps-derived: token t covers [t / fps, (t + 1) / fps)
        np.testing.assert_allclose(got.start_sec, np.arange(len(array)) / 2.0)
        np.testing.assert_allclose(got.end_sec, (np.arange(len(array)) + 1) / 2.0)

    h5_path = export_features(store, first.feature_set, tmp_path / "out" / "feats.h5")
    import h5py

    with h5py.File(h5_path, "r") as f:
        assert f["show/s2/ep3/features"].shape == (1, *KINDS[kind])  # '/' nests groups
        assert f["show/ep1/features"].dtype == np.float16
        assert json.loads(f.attrs["spec"]) == fs.spec
        assert f.attrs["schema_version"] == 1
    assert not list((tmp_path / "out").glob(".tmp-*"))

    second = _import(store, h5_path)  # no fps: the h5 carries timestamps
    assert second.feature_set != first.feature_set and second.num_ok == len(LENGTHS)
    spec = FeatureStore(store).open(second.feature_set).spec
    assert spec["imported_from"]["format"] == "h5" and spec["token_kind"] == kind
    again = _read_all(store, second.feature_set)
    assert sorted(again) == sorted(stored) == sorted(LENGTHS)
    for video_id, video in stored.items():
        np.testing.assert_array_equal(again[video_id].tokens, video.tokens)
        np.testing.assert_array_equal(again[video_id].start_sec, video.start_sec)
        np.testing.assert_array_equal(again[video_id].end_sec, video.end_sec)


def test_npy_export_round_trip_keeps_timestamps_and_scenes(tmp_path):
    store = tmp_path / "store"
    fs = FeatureStore(store).create("src", spec={"x": 1}, token_kind="pooled", dim=4,
                                    dtype="float16")
    tokens = np.arange(12, dtype=np.float32).reshape(3, 4)
    fs.write_video("clip/1", tokens, start_sec=[0.0, 1.5, 4.0], end_sec=[1.5, 4.0, 6.25],
                   scene_idx=[0, 0, 1])
    fs.write_status("broken", "failed", "decode error")
    out = export_features(store, "src", tmp_path / "npy", format="npy")
    assert (out / "clip" / "1.npy").is_file() and not (out / "broken.npy").exists()
    assert json.loads((out / "spec.json").read_text())["spec"] == {"x": 1}
    summary = _import(store, out)
    got = FeatureStore(store).open(summary.feature_set).read("clip/1")
    np.testing.assert_array_equal(got.tokens, tokens)
    np.testing.assert_array_equal(got.end_sec, [1.5, 4.0, 6.25])
    np.testing.assert_array_equal(got.scene_idx, [0, 0, 1])


def test_malformed_videos_fail_alone_with_reasons_and_resume_retries_them(tmp_path):
    good = _arrays("pooled")
    bad = {
        "flat": np.ones(8),  # wrong ndim
        "narrow": np.ones((4, 7)),  # D differs from the first video's
        "nan": np.where(np.eye(4, 8) > 0, np.nan, 0.0),
        "empty": np.ones((0, 8)),
        "huge": np.full((2, 8), 1e6),  # finite, but beyond float16
    }
    source = _dump(tmp_path / "dump", {**good, **bad})
    (source / "corrupt.npy").write_bytes(b"not an array")
    store = tmp_path / "store"
    summary = _import(store, source)
    assert summary.num_ok == len(good) and summary.num_failed == len(bad) + 1
    index = FeatureStore(store).open(summary.feature_set).index()
    errors = dict(index.filter(index["status"] == "failed").select("video_id", "error").iter_rows())
    assert set(errors) == {*bad, "corrupt"}
    reasons = {"flat": "not (T, D)", "narrow": "differs", "nan": "NaN", "empty": "empty",
               "huge": "float32", "corrupt": "not a readable"}
    for video_id, reason in reasons.items():
        assert str(source / f"{video_id}.npy") in errors[video_id] and reason in errors[video_id]

    np.save(source / "nan.npy", np.zeros((5, 8)))  # the user fixes one file
    again = _import(store, source)
    assert again.feature_set == summary.feature_set  # same ids: the same feature set
    assert (again.num_skipped, again.num_ok, again.num_failed) == (len(good), 1, len(bad))
    assert FeatureStore(store).open(summary.feature_set).read("nan").tokens.shape == (5, 8)


def test_reimport_skips_stored_videos_without_rewriting(tmp_path):
    source = _dump(tmp_path / "dump", _arrays("pooled"))
    store = tmp_path / "store"
    first = _import(store, source)
    parts = sorted((FeatureStore(store).open(first.feature_set).path / "parts").iterdir())
    second = _import(store, source)
    assert second.feature_set == first.feature_set
    assert (second.num_skipped, second.num_ok, second.num_failed) == (len(LENGTHS), 0, 0)
    assert sorted((FeatureStore(store).open(first.feature_set).path / "parts").iterdir()) == parts


def test_spec_and_name_follow_the_extract_convention(tmp_path):
    source = _dump(tmp_path / "dump", _arrays("patch"))
    summary = _import(tmp_path / "store", source)
    fs = FeatureStore(tmp_path / "store").open(summary.feature_set)
    spec = fs.spec
    assert summary.feature_set == f"toy__vit_b16__fps__{fingerprint(spec)[:10]}"
    assert spec["timestamps"] == "index" and spec["fps"] is None and spec["dtype"] == "float16"
    assert spec["imported_from"]["format"] == "npy"
    assert spec["imported_from"]["path"] == str(source.resolve())
    assert len(spec["imported_from"]["sha256"]) == 64
    got = fs.read("z")
    np.testing.assert_array_equal(got.start_sec, np.arange(12))
    np.testing.assert_array_equal(got.end_sec, np.arange(12) + 1)
    assert json.loads(fs.index().row(0, named=True)["info_json"])["timestamps"] == "index"


def test_h5_with_one_dataset_per_video_and_nested_groups(tmp_path):
    import h5py

    path = tmp_path / "vis4mer.hdf5"
    arrays = _arrays("pooled")
    with h5py.File(path, "w") as f:
        for video_id, array in arrays.items():
            f.create_dataset(video_id, data=array)  # float64, as many releases store it
        f.create_dataset("bad", data=np.ones((3, 8, 2, 2)))
        f.create_dataset("nan", data=np.full((3, 8), np.nan))
        f.create_dataset("huge", data=np.full((3, 8), 1e6))
    wanted = ["a", "show/ep1", "bad", "nan", "huge", "nope"]
    summary = _import(tmp_path / "store", path, fps=1.0, video_ids=wanted)
    assert summary.num_ok == 2 and set(summary.failed) == {"bad", "nan", "huge", "nope"}
    assert f"{path}:/bad" in summary.failed["bad"] and "(T, D)" in summary.failed["bad"]
    assert "NaN" in summary.failed["nan"] and "float32" in summary.failed["huge"]
    assert "not in the import source" in summary.failed["nope"]
    got = FeatureStore(tmp_path / "store").open(summary.feature_set).read("show/ep1")
    np.testing.assert_allclose(got.tokens, arrays["show/ep1"], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(got.end_sec, np.arange(1, 8))


def test_export_refuses_existing_output_and_unknown_videos(tmp_path):
    source = _dump(tmp_path / "dump", _arrays("pooled"))
    store = tmp_path / "store"
    name = _import(store, source).feature_set
    (tmp_path / "taken.h5").write_bytes(b"")
    with pytest.raises(FileExistsError, match="taken.h5"):
        export_features(store, name, tmp_path / "taken.h5")
    with pytest.raises(KeyError, match="nope"):
        export_features(store, name, tmp_path / "x.h5", video_ids=["a", "nope"])
    with pytest.raises(ValueError, match="format"):
        export_features(store, name, tmp_path / "x.zip", format="zip")
    out = export_features(store, name, tmp_path / "x.h5", video_ids=["a"])
    import h5py

    with h5py.File(out, "r") as f:
        assert list(f) == ["a"]


def test_unusable_sources_are_errors_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        _import(tmp_path / "store", tmp_path / "missing")
    (tmp_path / "feats.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="feats.pt"):
        _import(tmp_path / "store", tmp_path / "feats.pt")
    source = _dump(tmp_path / "dump", {"only": np.ones(3)})
    with pytest.raises(ValueError, match="only.npy"):
        _import(tmp_path / "store", source)


def test_h5_group_layout_takes_timestamps_from_the_file(tmp_path):
    import h5py

    path = tmp_path / "groups.h5"
    with h5py.File(path, "w") as f:
        f["v1/features"] = np.ones((3, 4, 6), np.float32)  # patch tokens (T, N, D)
        f["v1/start_sec"] = [0.0, 2.0, 4.0]
        f["v1/end_sec"] = [2.0, 4.0, 6.0]
        f["v2/features"] = np.ones((2, 4, 6), np.float32)  # no timestamps: fps applies
        f["v3/features"] = np.ones((2, 4, 6), np.float32)
        f["v3/start_sec"] = [0.0]  # one value for two tokens
        f["v3/end_sec"] = [1.0]
    summary = _import(tmp_path / "store", path, fps=4.0)
    assert summary.num_ok == 2 and "start_sec (1,) is not 2" in summary.failed["v3"]
    fs = FeatureStore(tmp_path / "store").open(summary.feature_set)
    assert fs.attrs["token_kind"] == "patch" and fs.spec["timestamps"] == "fps"
    np.testing.assert_array_equal(fs.read("v1").end_sec, [2.0, 4.0, 6.0])
    np.testing.assert_array_equal(fs.read("v2").end_sec, [0.25, 0.5])


def test_token_kind_given_fails_videos_of_the_other_kind(tmp_path):
    source = _dump(tmp_path / "dump", {"p": np.ones((2, 3, 4)), "q": np.ones((2, 4))})
    summary = _import(tmp_path / "store", source, token_kind="pooled")
    assert summary.num_ok == 1 and "not (T, D)" in summary.failed["p"]
    with pytest.raises(ValueError, match="token_kind"):
        _import(tmp_path / "store", source, token_kind="frames")


@pytest.mark.parametrize("fmt", ["npy", "h5"])
def test_float64_input_is_never_held_whole(tmp_path, fmt):
    import tracemalloc

    import h5py

    array = np.random.default_rng(0).normal(size=(4000, 256))  # 7.8 MiB as float64
    if fmt == "npy":
        source = _dump(tmp_path / "dump", {"v": array})
    else:
        source = tmp_path / "f.h5"
        with h5py.File(source, "w") as f:
            f["v"] = array
    _import(tmp_path / "warm", source)  # first-call imports and caches out of the measurement
    tracemalloc.start()
    try:
        summary = _import(tmp_path / "store", source)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.num_ok == 1
    # float16 tokens + finiteness mask + zarr's encode buffer stay well under one float64 copy
    assert peak_bytes < 0.8 * array.nbytes, peak_bytes / array.nbytes


def test_cli_import_export_round_trip(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.store import FeatureStore

    src = tmp_path / "dump"
    src.mkdir()
    for i in range(3):
        np.save(src / f"v{i}.npy", np.random.default_rng(i).normal(size=(4 + i, 8)))
    store = str(tmp_path / "store")
    runner = CliRunner()
    result = runner.invoke(app, ["import", str(src), "--dataset", "ext", "--backbone", "vit_l16",
                                 "--plan", "fps", "--fps", "1", "--store", store])
    assert result.exit_code == 0, result.output
    (fs,) = FeatureStore(store).feature_sets()
    out = tmp_path / "out.h5"
    result = runner.invoke(app, ["export", fs.name, str(out), "--store", store])
    assert result.exit_code == 0, result.output
    import h5py

    with h5py.File(out) as f:
        assert sorted(f) == ["v0", "v1", "v2"] and f["v2/features"].shape == (6, 8)

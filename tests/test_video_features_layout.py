"""The v-iashin/video_features output layout: import unchanged, one stream per feature set,
timestamps from its files, export back to the same layout, and token shapes in `pipeline ls`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.export import export_features
from pipeline.interop import import_features
from pipeline.store import FeatureStore

LENGTHS = {"v_a": 4, "clip2": 1, "long_video_name": 6}  # '_' in ids on purpose
FPS = 25.0


def _write_video(folder: Path, video: str, keys: dict[str, int], num_tokens: int,
                 rng, meta: bool = True) -> None:
    """One video as video_features' `save_numpy` writes it: `<video>_<key>.npy` per output key,
    float64 like its `np.array(list_of_floats)`, plus fps (a scalar) and timestamps_ms (T,)."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, dim in keys.items():
        np.save(folder / f"{video}_{key}.npy", rng.normal(size=(num_tokens, dim)))
    if meta:
        np.save(folder / f"{video}_fps.npy", np.array(FPS))
        # frame timestamps at 25 fps, every 16th frame: ms not exact in binary on purpose
        np.save(folder / f"{video}_timestamps_ms.npy", np.arange(num_tokens) * 16 * 1000 / FPS)


def _dump(root: Path, feature_dir: str, keys: dict[str, int], meta: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for video, num_tokens in LENGTHS.items():
        _write_video(root / feature_dir, video, keys, num_tokens, rng, meta)
    return root


def _import(store, source, **kw):
    kw = {"dataset": "toy", "backbone": "resnet50", "plan": "fps", **kw}
    return import_features(store, source, **kw)


def _read_all(store, name):
    fs = FeatureStore(store).open(name)
    return fs.read_many(sorted(fs.ok_ids()))


def _expected_times(num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    start_sec = (np.arange(num_tokens) * 16 * 1000 / FPS / 1000).astype(np.float32)
    step = 16 / FPS if num_tokens > 1 else 1 / FPS
    end_sec = np.append(start_sec[1:], np.float32(np.float64(start_sec[-1]) + step))
    return start_sec, end_sec


@pytest.mark.parametrize("source_level", ["out", "feature_type", "model"])
def test_resnet_dump_imports_unchanged_with_plain_ids_and_its_timestamps(tmp_path, source_level):
    out = _dump(tmp_path / "out", "resnet/resnet50", {"resnet": 2048})
    source = {"out": out, "feature_type": out / "resnet",
              "model": out / "resnet" / "resnet50"}[source_level]
    summary = _import(tmp_path / "store", source, dtype="float32")
    assert (summary.num_ok, summary.num_failed) == (len(LENGTHS), 0), summary.failed
    fs = FeatureStore(tmp_path / "store").open(summary.feature_set)
    assert sorted(fs.ok_ids()) == sorted(LENGTHS)  # no `_resnet`, and fps/timestamps no videos
    assert fs.spec["imported_from"]["format"] == "video_features"
    assert fs.spec["imported_from"]["stream"] == "resnet"
    assert fs.spec["imported_from"]["feature_dir"] == "resnet/resnet50"
    assert fs.spec["token_shape"] == [2048]
    for video, got in _read_all(tmp_path / "store", summary.feature_set).items():
        array = np.load(out / "resnet" / "resnet50" / f"{video}_resnet.npy")
        np.testing.assert_array_equal(got.tokens, array.astype(np.float32))
        start_sec, end_sec = _expected_times(LENGTHS[video])
        np.testing.assert_array_equal(got.start_sec, start_sec)
        np.testing.assert_array_equal(got.end_sec, end_sec)
    info = json.loads(fs.index().row(0, named=True)["info_json"])
    assert info["timestamps"] == "file" and info["fps"] == FPS


def test_i3d_streams_are_never_merged_and_one_is_chosen(tmp_path):
    out = _dump(tmp_path / "out", "i3d", {"rgb": 1024, "flow": 1024})
    with pytest.raises(ValueError, match=r"2 video_features streams \(flow, rgb\).*--stream"):
        _import(tmp_path / "store", out)
    with pytest.raises(ValueError, match="no video_features stream 'depth'.*flow, rgb"):
        _import(tmp_path / "store", out, stream="depth")
    names = set()
    for stream in ("rgb", "flow"):
        summary = _import(tmp_path / "store", out, stream=stream, backbone="i3d")
        assert summary.num_ok == len(LENGTHS) and summary.num_failed == 0
        got = FeatureStore(tmp_path / "store").open(summary.feature_set).read("v_a")
        assert got.tokens.shape == (4, 1024)
        np.testing.assert_allclose(got.tokens, np.load(out / "i3d" / f"v_a_{stream}.npy"),
                                   rtol=1e-3, atol=1e-3)
        names.add(summary.feature_set)
    assert len(names) == 2  # one feature set per stream


@pytest.mark.parametrize("feature_dir, key, dim", [
    ("clip/ViT-B_32", "clip", 512),  # video_features turns the model's '/' into '_'
    ("r21d/r2plus1d_18_16_kinetics", "r21d", 512),
    ("s3d", "s3d", 1024),
    ("vggish", "vggish", 128),
])
def test_other_extractors_keys_are_detected(tmp_path, feature_dir, key, dim):
    # r21d, s3d and vggish write no fps/timestamps: the directory names the feature type
    out = _dump(tmp_path / "out", feature_dir, {key: dim}, meta=key == "clip")
    summary = _import(tmp_path / "store", out, fps=2.0)
    fs = FeatureStore(tmp_path / "store").open(summary.feature_set)
    assert sorted(fs.ok_ids()) == sorted(LENGTHS) and fs.attrs["dim"] == dim
    assert fs.spec["imported_from"]["feature_dir"] == feature_dir
    if key != "clip":  # no timestamps file: --fps applies
        np.testing.assert_allclose(fs.read("v_a").start_sec, np.arange(4) / 2.0)


def test_explicit_layout_wins_over_detection(tmp_path):
    out = _dump(tmp_path / "out", "resnet/resnet50", {"resnet": 8})
    summary = _import(tmp_path / "store", out, layout="npy")
    ids = FeatureStore(tmp_path / "store").open(summary.feature_set).index()["video_id"]
    assert "resnet/resnet50/v_a_resnet" in ids.to_list()  # read as plain files, as asked
    plain = tmp_path / "plain"
    plain.mkdir()
    np.save(plain / "x.npy", np.ones((2, 8)))
    with pytest.raises(ValueError, match="x.npy is not named <video>_<key>.npy"):
        _import(tmp_path / "store", plain, layout="video_features")
    with pytest.raises(ValueError, match="--stream rgb applies to the video_features layout"):
        _import(tmp_path / "store", plain, stream="rgb")


def test_bad_fps_or_timestamps_fail_that_video_alone(tmp_path):
    out = _dump(tmp_path / "out", "resnet/resnet50", {"resnet": 8})
    folder = out / "resnet" / "resnet50"
    np.save(folder / "v_a_timestamps_ms.npy", np.arange(3.0))  # 3 stamps for 4 tokens
    (folder / "clip2_fps.npy").unlink()  # one token: its end needs the fps
    np.save(folder / "long_video_name_timestamps_ms.npy", np.array([0, 5, 4, 6, 7, 8.0]))
    summary = _import(tmp_path / "store", out)
    assert summary.num_ok == 0 and set(summary.failed) == set(LENGTHS)
    assert "v_a_timestamps_ms.npy" in summary.failed["v_a"]
    assert "(3,) is not numeric (4,)" in summary.failed["v_a"]
    assert "no clip2_fps.npy" in summary.failed["clip2"]
    assert "decrease" in summary.failed["long_video_name"]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_export_writes_the_layout_and_reimports_bit_identically(tmp_path, dtype):
    out = _dump(tmp_path / "out", "resnet/resnet50", {"resnet": 16})
    store = tmp_path / "store"
    first = _import(store, out, dtype=dtype)
    exported = export_features(store, first.feature_set, tmp_path / "again",
                               format="video_features")
    folder = exported / "resnet" / "resnet50"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{v}_{k}.npy" for v in LENGTHS for k in ("resnet", "fps", "timestamps_ms"))
    assert np.load(folder / "v_a_fps.npy").shape == () and (exported / "spec.json").is_file()
    np.testing.assert_allclose(np.load(folder / "v_a_timestamps_ms.npy"),
                               np.load(out / "resnet" / "resnet50" / "v_a_timestamps_ms.npy"))
    second = _import(store, exported, dtype=dtype)
    assert second.feature_set != first.feature_set and second.num_ok == len(LENGTHS)
    before, after = _read_all(store, first.feature_set), _read_all(store, second.feature_set)
    assert sorted(before) == sorted(after) == sorted(LENGTHS)
    for video, got in before.items():
        for part in ("tokens", "start_sec", "end_sec", "scene_idx"):
            a, b = getattr(got, part), getattr(after[video], part)
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (video, part)
    # a second export is byte-identical to the first
    again = export_features(store, second.feature_set, tmp_path / "third",
                            format="video_features")
    for path in folder.iterdir():
        twin = again / "resnet" / "resnet50" / path.name
        assert path.read_bytes() == twin.read_bytes(), path.name


def test_export_of_an_extracted_style_set_and_its_refusals(tmp_path):
    store = tmp_path / "store"
    fs = FeatureStore(store).create("src", spec={"backbone": "resnet18"}, token_kind="pooled",
                                    dim=4, dtype="float16")
    fs.write_video("solo", np.ones((1, 4), np.float32), start_sec=[2.0], end_sec=[2.5],
                   scene_idx=[0])
    out = export_features(store, "src", tmp_path / "vf", format="video_features")
    assert float(np.load(out / "resnet18" / "solo_fps.npy")) == 2.0  # 1 / last token's 0.5 s
    summary = _import(store, out)
    got = FeatureStore(store).open(summary.feature_set).read("solo")
    np.testing.assert_array_equal(got.end_sec, [2.5])
    with pytest.raises(ValueError, match="neither a video_features key"):
        export_features(store, "src", tmp_path / "x", format="video_features", stream="foo",
                        feature_dir="resnet/resnet18")
    with pytest.raises(ValueError, match="apply to format='video_features' only"):
        export_features(store, "src", tmp_path / "y", format="npy", stream="rgb")
    fs.write_video("show/ep1", np.ones((2, 4), np.float32), start_sec=[0, 1], end_sec=[1, 2],
                   scene_idx=[0, 0])
    with pytest.raises(ValueError, match="'show/ep1'.*plain video name"):
        export_features(store, "src", tmp_path / "z", format="video_features")


def test_cli_round_trip_stream_error_and_ls_token_shape(tmp_path):
    runner = CliRunner()
    out = _dump(tmp_path / "out", "i3d", {"rgb": 8, "flow": 8})
    store = str(tmp_path / "store")
    base = ["import", str(out), "--dataset", "toy", "--backbone", "i3d", "--plan", "stack",
            "--store", store]
    result = runner.invoke(app, base)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()  # one line, no traceback
    assert line.startswith("error:") and "(flow, rgb)" in line and "--stream" in line
    result = runner.invoke(app, [*base, "--stream", "rgb", "--layout", "video_features"])
    assert result.exit_code == 0, result.output
    (fs,) = FeatureStore(store).feature_sets()
    result = runner.invoke(app, ["export", fs.name, str(tmp_path / "back"), "--layout",
                                 "video_features", "--store", store])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "back" / "i3d" / "v_a_rgb.npy").is_file()

    # the ViS4mer release: per-video (T, 197, 1024) arrays; ls shows the whole token shape
    vis4mer = tmp_path / "vis4mer"
    vis4mer.mkdir()
    np.save(vis4mer / "vid1.npy", np.zeros((2, 197, 1024), np.float32))
    result = runner.invoke(app, ["import", str(vis4mer), "--dataset", "lvu", "--backbone",
                                 "vit_l16_in21k", "--plan", "fps", "--fps", "1", "--store", store])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["ls", "--store", store])
    assert result.exit_code == 0, result.output
    assert "T×197×1024" in result.output and "T×8" in result.output

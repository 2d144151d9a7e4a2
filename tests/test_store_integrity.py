"""Nothing wrong is read silently (issue 16 items 2, 3, 8, 13): a real small store is damaged
(a deleted chunk, one flipped bit, a truncated index fragment, garbage ``zarr.json``) and every
reader refuses it with an error naming the video, the feature set and the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import pipeline.compact as compact_module
from pipeline.cli import app
from pipeline.compact import compact_feature_set
from pipeline.store import FeatureStore, video_key
from pipeline.verify import verify_feature_set

NAME = "toy__resnet18__scene__x"
LENGTHS = {f"v{i}": n for i, n in enumerate([3, 11, 1, 7, 5, 2])}  # 29 tokens in all
FIX = r"pipeline verify --fix"


def _store(tmp_path, *, packed: bool, monkeypatch=None):
    """A feature set of six videos; ``packed``: compacted into one part of 4-token chunks."""
    fs = FeatureStore(tmp_path / "store").create(
        NAME, spec={"dataset": "toy"}, token_kind="pooled", dim=8, dtype="float16"
    )
    rng = np.random.default_rng(0)
    tokens = {}
    for vid, n in LENGTHS.items():
        tokens[vid] = rng.normal(size=(n, 8)).astype(np.float16)
        fs.write_video(vid, tokens[vid], start_sec=np.arange(n) * 2.0,
                       end_sec=np.arange(n) * 2.0 + 1.5, scene_idx=np.arange(n))
    if packed:
        monkeypatch.setattr(compact_module, "_CHUNK_BYTES", 4 * 8 * 2)  # 4 tokens a chunk
        compact_feature_set(fs)
    return fs, tokens


def _row(fs, video_id) -> dict:
    return fs.read_index_file(f"{video_key(video_id)}.parquet").row(0, named=True)


def _chunk(fs, video_id, array="tokens", chunk=0):
    row = _row(fs, video_id)
    return fs.path / "parts" / row["part"] / array / "c" / str(chunk) / "0"


def _stream(fs, video_ids):
    from heads.data import PartCache, StoredVideos

    rows = [_row(fs, v) for v in video_ids]
    return StoredVideos([fs], [rows], cache=PartCache(2**20))


def _refused(call, video_id, fs_name=NAME):
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert video_id in message and fs_name in message and FIX in message, message
    return message


def _verify_cli(store, *args):
    return CliRunner().invoke(app, ["verify", "--store", str(store), *args])


# ------------------------------------------------------------- item 2: a lost chunk


def test_arrays_have_impossible_fill_values(tmp_path):
    fs, _ = _store(tmp_path, packed=False)
    group = fs.open_part(_row(fs, "v1")["part"])
    for name in ("tokens", "start_sec", "end_sec"):
        assert np.isnan(group[name].fill_value), name
    assert group["scene_idx"].fill_value == np.iinfo(np.int32).min


@pytest.mark.parametrize("packed", [False, True])
def test_a_deleted_chunk_is_refused_by_every_reader_and_named_by_verify(
    tmp_path, monkeypatch, packed
):
    fs, tokens = _store(tmp_path, packed=packed, monkeypatch=monkeypatch)
    # v1 holds tokens 3..13 of the packed part: chunk 1 (tokens 4..7) lies inside it
    _chunk(fs, "v1", chunk=1 if packed else 0).unlink()
    _refused(lambda: fs.read("v1"), "v1")
    _refused(lambda: fs.read_many(["v0", "v1"]), "v1")
    message = _refused(lambda: _stream(fs, ["v1"])[0], "v1")
    assert "0.0" not in message
    np.testing.assert_array_equal(fs.read("v0").tokens, tokens["v0"])  # its neighbour is fine
    report = verify_feature_set(fs)
    assert set(report.damaged) == {"v1"}
    result = _verify_cli(tmp_path / "store")
    assert result.exit_code == 1 and "v1:" in result.output and "redo: v1" in result.output


# ------------------------------------------------------------- item 3: bit rot


def test_every_chunk_carries_a_checksum_and_every_video_a_content_hash(tmp_path, monkeypatch):
    fs, _ = _store(tmp_path, packed=True, monkeypatch=monkeypatch)
    group = fs.open_part(_row(fs, "v1")["part"])
    for name in ("tokens", "start_sec", "end_sec", "scene_idx"):
        codecs = [c["name"] for c in group[name].metadata.to_dict()["codecs"]]
        assert "crc32c" in codecs, (name, codecs)
    hashes = json.loads(_row(fs, "v1")["content_hash"])
    assert set(hashes) >= {"algo", "tokens", "start_sec", "end_sec", "scene_idx"}


def _flip_bit(path, byte=None):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 if byte is None else byte] ^= 0x10
    path.write_bytes(bytes(raw))


def test_a_flipped_bit_in_a_packed_chunk_is_caught_and_named(tmp_path, monkeypatch):
    fs, tokens = _store(tmp_path, packed=True, monkeypatch=monkeypatch)
    _flip_bit(_chunk(fs, "v1", chunk=2))  # tokens 8..11: inside v1 (3..13) alone
    _refused(lambda: fs.read("v1"), "v1")
    _refused(lambda: fs.read_many(sorted(LENGTHS)), "v1")
    with pytest.raises(ValueError, match=FIX):
        _stream(fs, ["v1"])[0]
    got = fs.read_many(["v0", "v3"])  # videos in other chunks still read
    np.testing.assert_array_equal(got["v3"].tokens, tokens["v3"])
    report = verify_feature_set(fs)
    assert set(report.damaged) == {"v1"}, report.damaged
    result = _verify_cli(tmp_path / "store")
    assert result.exit_code == 1 and "redo: v1" in result.output


def test_a_wrong_value_with_a_valid_checksum_fails_the_content_hash(tmp_path, monkeypatch):
    fs, _ = _store(tmp_path, packed=True, monkeypatch=monkeypatch)
    part = _row(fs, "v3")["part"]
    array = zarr.open_group(str(fs.path / "parts" / part), mode="r+")["tokens"]
    offset = _row(fs, "v3")["offset"]
    array[offset + 1, 2] = 34908.0  # rewritten with a fresh (valid) chunk checksum
    message = _refused(lambda: fs.read("v3"), "v3")
    assert "hash" in message
    _refused(lambda: fs.read_many(["v3", "v4"]), "v3")
    assert set(verify_feature_set(fs).damaged) == {"v3"}
    streamed = _stream(fs, ["v3", "v4"])  # heads train --data-loading stream checks it too
    _refused(lambda: streamed[0], "v3")
    assert streamed[1][0].shape[0] > 0  # its neighbour in the part still reads


def _make_legacy(fs) -> None:
    """Rewrite ``fs`` as longvid wrote it before checksums: zstd without checksum, fill 0, no
    content hash in the index rows."""
    import io

    import polars as pl

    for name in fs.index_files():
        row = fs.read_index_file(name).drop("content_hash", strict=False)
        group = zarr.open_group(str(fs.path / "parts" / row["part"][0]), mode="r")
        values = {n: group[n][:] for n in ("tokens", "start_sec", "end_sec", "scene_idx")}
        old = zarr.open_group(str(fs.path / "parts" / row["part"][0]), mode="w")
        for n, v in values.items():
            old.create_array(n, data=v, chunks=v.shape, fill_value=0,
                             config={"write_empty_chunks": True})
        buffer = io.BytesIO()
        row.write_parquet(buffer)
        (fs.path / "index" / name).write_bytes(buffer.getvalue())
    assert pl.read_parquet(fs.path / "index" / name).columns[-1] == "info_json"


def test_feature_sets_from_before_checksums_read_and_verify_says_unchecked(tmp_path):
    fs, tokens = _store(tmp_path, packed=False)
    _make_legacy(fs)
    fs.write_video("new", tokens["v1"], start_sec=np.arange(11), end_sec=np.arange(11) + 1.0)
    got = fs.read_many(sorted(LENGTHS) + ["new"])
    np.testing.assert_array_equal(got["v1"].tokens, tokens["v1"])
    np.testing.assert_array_equal(fs.read("v2").tokens, tokens["v2"])
    report = verify_feature_set(fs)
    assert report.ok
    assert "no checksums" in report.integrity and "6 of 7" in report.integrity
    result = _verify_cli(tmp_path / "store")
    assert result.exit_code == 0 and "no checksums" in result.stdout  # a line of the report


# ------------------------------------------------------------- item 8: hidden keys


def test_keys_of_ordinary_ids_are_unchanged():
    assert video_key("v1") == "v1-5a6df720"
    assert video_key("c/with/slash") == "c_with_slash-7cedb797"


@pytest.mark.parametrize("video_id", ["..", ".hidden", "./x", "...."])
def test_ids_starting_with_a_dot_get_visible_keys(tmp_path, video_id):
    key = video_key(video_id)
    assert not key.startswith(".") and "/" not in key
    assert key != video_key("_" + video_id.lstrip("."))
    fs, _ = _store(tmp_path, packed=False)
    fs.write_video(video_id, np.ones((2, 8)), start_sec=[0, 1], end_sec=[1, 2])
    assert video_id in fs.ok_ids()
    report = verify_feature_set(fs)
    assert report.num_checked == 7 and not report.orphan_parts and report.ok
    assert fs.read(video_id).tokens.shape == (2, 8)


def test_verify_sees_the_hidden_parts_and_fragments_of_older_stores(tmp_path):
    fs, _ = _store(tmp_path, packed=False)
    (fs.path / "parts" / "..-hidden-part").mkdir()  # as an older longvid keyed id '..'
    (fs.path / "index" / "..-5c8bc1b6.parquet").write_bytes(b"x")
    report = verify_feature_set(fs)
    assert report.orphan_parts == ["..-hidden-part"]
    assert "hidden" in report.bad_index_files["..-5c8bc1b6.parquet"]
    result = _verify_cli(tmp_path / "store", "--fix", "--gc")
    assert result.exit_code == 0, result.output
    assert verify_feature_set(fs).ok and not verify_feature_set(fs).orphan_parts


@pytest.mark.parametrize("name", ["../../X", "a/b", "..", ".hidden", "", "a\\b", "x..y"])
def test_feature_set_names_are_validated(tmp_path, name):
    store = FeatureStore(tmp_path / "store")
    with pytest.raises(ValueError, match="feature-set name") as err:
        store.create(name, spec={"x": 1}, token_kind="pooled", dim=4, dtype="float16")
    assert repr(name) in str(err.value)
    with pytest.raises(ValueError, match="feature-set name"):
        store.open(name)
    assert not (tmp_path / "X").exists()


def test_import_with_a_path_as_name_is_refused(tmp_path):
    source = tmp_path / "dump"
    source.mkdir()
    np.save(source / "a.npy", np.ones((3, 4)))
    store = tmp_path / "deep" / "store"
    result = CliRunner().invoke(app, [
        "import", str(source), "--store", str(store), "--dataset", "toy", "--backbone", "b",
        "--plan", "fps", "--name", "../../X",
    ])
    assert result.exit_code == 2 and "error:" in result.output and "../../X" in result.output
    assert not (tmp_path / "X").exists()


# ------------------------------------------------------------- item 13: damaged metadata


def test_a_truncated_index_fragment_is_an_error_naming_the_file(tmp_path):
    fs, _ = _store(tmp_path, packed=False)
    fragment = fs.path / "index" / f"{video_key('v2')}.parquet"
    fragment.write_bytes(fragment.read_bytes()[:40])
    with pytest.raises(ValueError, match="pipeline verify") as err:
        fs.index()
    assert fragment.name in str(err.value)
    with pytest.raises(ValueError, match=fragment.name):
        fs.read("v2")
    for command in ("compact", "ls", "status"):  # one `error:` line, no traceback
        result = CliRunner().invoke(app, [command, "--store", str(tmp_path / "store")])
        assert result.exit_code == 2 and "error:" in result.output, (command, result.output)
        assert fragment.name in result.output
    report = verify_feature_set(fs)
    assert fragment.name in report.bad_index_files


def test_garbage_zarr_json_is_an_error_and_verify_reports_it(tmp_path):
    fs, _ = _store(tmp_path, packed=False)
    (fs.path / "zarr.json").write_bytes(b"\x00garbage{")
    reopened = FeatureStore(tmp_path / "store").open(NAME)
    with pytest.raises(ValueError, match="pipeline verify") as err:
        reopened.attrs
    assert "zarr.json" in str(err.value) and NAME in str(err.value)
    report = verify_feature_set(reopened)
    assert not report.ok and "zarr.json" in report.metadata_error
    result = _verify_cli(tmp_path / "store")
    assert result.exit_code == 1 and "zarr.json" in result.stdout
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["compact", "--store", str(tmp_path / "store")])
    assert result.exit_code == 2 and "error:" in result.output and "zarr.json" in result.output


def test_garbage_part_zarr_json_is_refused_on_read(tmp_path):
    fs, _ = _store(tmp_path, packed=False)
    (fs.path / "parts" / _row(fs, "v4")["part"] / "tokens" / "zarr.json").write_text("{")
    _refused(lambda: fs.read("v4"), "v4")
    _refused(lambda: fs.read_many(["v3", "v4"]), "v4")
    assert set(verify_feature_set(fs).damaged) == {"v4"}

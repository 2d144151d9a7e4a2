"""`pipeline compact`: one-video parts packed into large parts, crash-safe and repeatable."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.compact import compact_feature_set, is_packed
from pipeline.store import FeatureStore
from pipeline.verify import verify_feature_set

LENGTHS = {f"v{i}": n for i, n in enumerate([3, 11, 1, 7, 5, 2])}


def _written(tmp_path, dim=8):
    """A feature set with one part per video (as extraction writes it) and its tokens."""
    fs = FeatureStore(tmp_path / "store").create(
        "toy__resnet18__scene__x", spec={"dataset": "toy"}, token_kind="pooled", dim=dim,
        dtype="float16",
    )
    rng = np.random.default_rng(0)
    tokens = {}
    for vid, n in LENGTHS.items():
        tokens[vid] = rng.normal(size=(n, dim)).astype(np.float16)
        fs.write_video(vid, tokens[vid], start_sec=np.arange(n) * 2.0,
                       end_sec=np.arange(n) * 2.0 + 1.5, scene_idx=np.arange(n),
                       duration_sec=2.0 * n, info={"fps": 25})
    return fs, tokens


def _parts(fs) -> list[str]:
    return sorted(p for p in fs.loc.listdir("parts") if p != "zarr.json")


def _assert_reads(fs, tokens) -> None:
    got = fs.read_many(sorted(tokens))
    for vid, expected in tokens.items():
        np.testing.assert_array_equal(got[vid].tokens, expected)
        np.testing.assert_array_equal(got[vid].start_sec, np.arange(len(expected)) * 2.0)
        np.testing.assert_array_equal(fs.read(vid).tokens, expected)


def test_compaction_packs_parts_and_keeps_every_video_and_row(tmp_path):
    fs, tokens = _written(tmp_path)
    before = fs.index()
    report = compact_feature_set(fs)
    assert (report.parts_before, report.parts_after, report.videos_moved) == (6, 1, 6)
    assert report.bytes_written == sum(LENGTHS.values()) * 8 * 2  # float16, D = 8
    (part,) = _parts(fs)
    assert is_packed(part)
    after = fs.index()
    # videos in id order, contiguous slices; every other column of the rows unchanged
    assert after["offset"].to_list() == [0, 3, 14, 15, 22, 27]
    for column in ("video_id", "status", "num_tokens", "duration_sec", "info_json"):
        assert after[column].to_list() == before[column].to_list()
    _assert_reads(fs, tokens)
    assert verify_feature_set(fs).ok
    assert compact_feature_set(fs).videos_moved == 0  # nothing left to do
    # only some videos asked for: read_many slices them out of the one part
    some = fs.read_many(["v4", "v1"], arrays=("tokens",))
    np.testing.assert_array_equal(some["v4"].tokens, tokens["v4"])
    assert list(some) == ["v4", "v1"] and some["v1"].start_sec is None


def test_target_size_splits_packs_and_leaves_large_videos_alone(tmp_path):
    fs, tokens = _written(tmp_path)
    # 11 tokens x 16 B = 176 B fill a part of 160 B alone; the rest, in id order, pack greedily
    # into parts of <= 160 B: v0 + v2 (64 B), v3 (112 B), v4 + v5 (112 B)
    report = compact_feature_set(fs, target_mib=160 / 2**20)
    assert report.videos_moved == 5
    rows = {r["video_id"]: r for r in fs.index().iter_rows(named=True)}
    assert not is_packed(rows["v1"]["part"])
    assert rows["v0"]["part"] == rows["v2"]["part"] and rows["v4"]["part"] == rows["v5"]["part"]
    assert len({rows[v]["part"] for v in rows if v != "v1"}) == 3
    _assert_reads(fs, tokens)
    with pytest.raises(ValueError, match="target_mib"):
        compact_feature_set(fs, target_mib=0)


def test_an_interrupted_compaction_leaves_everything_readable_and_a_rerun_finishes(
    tmp_path, monkeypatch
):
    fs, tokens = _written(tmp_path)
    relocate, calls = fs.relocate, []

    def crash_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies between two index rewrites
        calls.append(args)
        relocate(*args, **kwargs)

    monkeypatch.setattr(fs, "relocate", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        compact_feature_set(fs)
    monkeypatch.undo()
    parts = {r["video_id"]: r["part"] for r in fs.index().iter_rows(named=True)}
    assert sum(map(is_packed, parts.values())) == 2  # v0, v1 moved; v2..v5 not yet
    _assert_reads(fs, tokens)
    report = verify_feature_set(fs)  # the packed part has unnamed slices: allowed
    assert report.ok and len(report.orphan_parts) == 2  # v0's and v1's old parts

    again = compact_feature_set(fs)  # the packed part is 2/6 live: repacked with the rest
    assert again.videos_moved == 6
    assert len(_parts(fs)) == 1
    _assert_reads(fs, tokens)
    final = verify_feature_set(fs)
    assert final.ok and final.orphan_parts == [] and final.temporaries == []


def test_a_video_extracted_again_after_compaction_wins(tmp_path):
    fs, tokens = _written(tmp_path)
    compact_feature_set(fs)
    tokens["v3"] = np.full((4, 8), 0.5, dtype=np.float16)
    fs.write_video("v3", tokens["v3"], start_sec=np.arange(4) * 2.0,
                   end_sec=np.arange(4) * 2.0 + 1.5)
    _assert_reads(fs, tokens)
    assert verify_feature_set(fs).ok  # the packed part's old v3 slice is a harmless gap


def test_verify_blames_only_the_damaged_video_of_a_packed_part(tmp_path):
    fs, _ = _written(tmp_path)
    compact_feature_set(fs)
    import zarr

    (part,) = _parts(fs)
    group = zarr.open_group(store=str(fs.path / "parts" / part), mode="r+")
    row = {r["video_id"]: r for r in fs.index().iter_rows(named=True)}["v3"]
    group["tokens"][row["offset"] + 1] = np.nan
    report = verify_feature_set(fs)
    assert list(report.damaged) == ["v3"] and "NaN" in report.damaged["v3"]


def test_the_compact_command_reports_what_it_did(tmp_path):
    fs, tokens = _written(tmp_path)
    result = CliRunner().invoke(app, ["compact", "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert f"{fs.name}: 6 -> 1 parts, 6 videos moved" in result.output
    missing = CliRunner().invoke(app, ["compact", "nope", "--store", str(tmp_path / "store")])
    assert missing.exit_code == 2 and "nope" in missing.output

"""The store read by other tools (issue 20, item 2): every part array has zarr v3
``dimension_names`` and units, xarray opens a part (packed or not) to the values
``FeatureSet.read`` gives, the readers documented in docs/store.md run as written, and parts
written before the names existed still read."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import pipeline.store
from pipeline.compact import compact_feature_set, is_packed
from pipeline.store import FeatureStore

xr = pytest.importorskip("xarray")
DOC = Path(__file__).resolve().parent.parent / "docs" / "store.md"
LENGTHS = {"toy/a": 3, "toy/b": 11, "toy/c": 1, "toy/d": 6}


def _written(tmp_path, *, token_kind="pooled", shape=(8,)):
    """A feature set with one part per video (as extraction writes it) and what was written."""
    fs = FeatureStore(tmp_path / "store").create(
        f"toy-resnet18-scene-{token_kind}", spec={"dataset": "toy", "kind": token_kind},
        token_kind=token_kind, dim=shape[-1], dtype="float16")
    rng = np.random.default_rng(0)
    written = {}
    for vid, n in LENGTHS.items():
        written[vid] = rng.normal(size=(n, *shape)).astype(np.float16)
        fs.write_video(vid, written[vid], start_sec=np.arange(n) * 2.0,
                       end_sec=np.arange(n) * 2.0 + 1.5, scene_idx=np.arange(n))
    return fs, written


def _row(fs, video_id) -> dict:
    import polars as pl

    return fs.index().row(by_predicate=pl.col("video_id") == video_id, named=True)


def test_every_array_has_dimension_names_and_units(tmp_path):
    import zarr

    fs, _ = _written(tmp_path)
    row = _row(fs, "toy/b")
    group = zarr.open_group(str(fs.loc.path / "parts" / row["part"]), mode="r")
    assert group["tokens"].metadata.dimension_names == ("token", "channel")
    for name in ("start_sec", "end_sec", "scene_idx"):
        assert group[name].metadata.dimension_names == ("token",)
    assert group["start_sec"].attrs["units"] == group["end_sec"].attrs["units"] == "s"
    assert "long_name" in group["tokens"].attrs


@pytest.mark.parametrize("token_kind, shape, dims", [
    ("pooled", (8,), ("token", "channel")),
    ("patch", (5, 4), ("token", "patch", "channel")),
])
def test_xarray_opens_a_packed_part_to_the_values_read_gives(tmp_path, token_kind, shape, dims):
    fs, written = _written(tmp_path, token_kind=token_kind, shape=shape)
    compact_feature_set(fs)
    rows = {vid: _row(fs, vid) for vid in LENGTHS}
    (part_id,) = {row["part"] for row in rows.values()}  # all packed into one part
    assert is_packed(part_id)
    part = xr.open_zarr(fs.loc.path / "parts" / part_id, consolidated=False)
    assert part.tokens.dims == dims and part.start_sec.dims == ("token",)
    assert part.sizes["token"] == sum(LENGTHS.values())
    assert part.start_sec.attrs["units"] == "s" and part.start_sec.dtype == np.float32
    assert part.scene_idx.dtype == np.int32  # the int fill value masks nothing (zarr v3)
    for vid, row in rows.items():
        video = part.isel(token=slice(row["offset"], row["offset"] + row["num_tokens"]))
        stored = fs.read(vid)
        np.testing.assert_array_equal(video.tokens.values, stored.tokens)
        np.testing.assert_array_equal(stored.tokens, written[vid])
        for name in ("start_sec", "end_sec", "scene_idx"):
            np.testing.assert_array_equal(video[name].values, getattr(stored, name))


def doc_snippet(marker: str) -> str:
    """The fenced Python block after ``<!-- test: marker -->`` in docs/store.md."""
    match = re.search(rf"<!-- test: {marker} -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"docs/store.md has no block marked <!-- test: {marker} -->"
    return match.group(1)


@pytest.mark.parametrize("compacted", [False, True])
def test_the_documented_readers_run(tmp_path, compacted):
    fs, written = _written(tmp_path)
    (fs.loc.path / "index" / ".tmp-0000-toy_b.parquet").write_bytes(b"a write in progress")
    if compacted:
        compact_feature_set(fs)
    reader = doc_snippet("reader")
    assert len(reader.strip().splitlines()) == 3  # as the page says
    for video_id in ("toy/b", "toy/c"):
        scope = {"fs_dir": str(fs.loc.path), "video_id": video_id}
        exec(reader, scope)
        np.testing.assert_array_equal(scope["tokens"], fs.read(video_id).tokens)
        exec(doc_snippet("xarray"), scope)
        np.testing.assert_array_equal(scope["video"].tokens.values, written[video_id])


def test_parts_without_dimension_names_still_read(tmp_path, monkeypatch):
    """A store written before the arrays had names and units (issue 20) reads as before, and
    compacting it gives parts with them."""
    import zarr

    new_options = pipeline.store.array_options

    def old_options(name, ndim):
        options = new_options(name, ndim)
        del options["dimension_names"], options["attributes"]
        return options

    monkeypatch.setattr(pipeline.store, "array_options", old_options)
    fs, written = _written(tmp_path)
    monkeypatch.setattr(pipeline.store, "array_options", new_options)
    row = _row(fs, "toy/b")
    group = zarr.open_group(str(fs.loc.path / "parts" / row["part"]), mode="r")
    assert group["tokens"].metadata.dimension_names is None
    for vid, tokens in written.items():
        np.testing.assert_array_equal(fs.read(vid).tokens, tokens)
    assert set(fs.read_many(list(LENGTHS))) == set(LENGTHS)
    compact_feature_set(fs)
    part = xr.open_zarr(fs.loc.path / "parts" / _row(fs, "toy/b")["part"], consolidated=False)
    assert part.tokens.dims == ("token", "channel")

"""Issue 16 item 4: a changed source file is noticed and re-extracted, and two tables that map
the same ids to other files never share a feature set."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from catalogs.base import Catalog
from pipeline.extract import ExtractConfig, feature_set_spec, run_extract
from pipeline.sources import compare_source, source_identity
from pipeline.store import FeatureStore
from tests.conftest import TINY_EXTRACT_OPTIONS


def test_compare_source_tells_a_changed_file_from_a_touched_or_moved_one(tmp_path):
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x" * 5000)
    recorded = source_identity(path)
    assert recorded["size"] == 5000 and compare_source(recorded, path) is None
    os.utime(path, ns=(1, 1))  # touched, same bytes: one more read, the same file
    assert compare_source(recorded, path) is None
    moved = tmp_path / "moved.mp4"
    shutil.copy(path, moved)  # a copy elsewhere (new mtime, same bytes) is the same source
    assert compare_source(recorded, moved) is None
    path.write_bytes(b"y" * 5000)  # same size, other bytes
    assert compare_source(recorded, path) == "content changed (first MiB)"
    path.write_bytes(b"y" * 6000)
    assert compare_source(recorded, path) == "size 5,000 → 6,000 bytes"
    assert compare_source(None, path) is None  # rows stored before identities: unchanged
    assert source_identity("s3://bucket/v.mp4") is None


def test_a_swapped_file_is_re_extracted_and_says_why(tiny_catalog, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    ids = ["v0", "v1", "v2"]
    for vid in ids:
        shutil.copy(Path(tiny_catalog.root) / f"{vid}.mp4", videos / f"{vid}.mp4")
    catalog = Catalog(name="folder", root=videos, videos=pl.DataFrame(
        {"video_id": ids, "path": [str(videos / f"{v}.mp4") for v in ids], "split": ["train"] * 3}))
    config = ExtractConfig(store=str(tmp_path / "store"), num_workers=0, compact=False,
                           **TINY_EXTRACT_OPTIONS)
    first = run_extract(config, catalog=catalog, progress=False)
    assert first.num_ok == 3 and not first.changed
    again = run_extract(config, catalog=catalog, progress=False)
    assert (again.num_skipped, again.num_ok) == (3, 0)  # nothing changed: nothing redone

    shutil.copy(Path(tiny_catalog.root) / "v4.mp4", videos / "v1.mp4")  # other pixels, same id
    swapped = run_extract(config, catalog=catalog, progress=False)
    assert (swapped.num_skipped, swapped.num_ok) == (2, 1)
    assert set(swapped.changed) == {"v1"}
    (fs,) = FeatureStore(tmp_path / "store").feature_sets()
    reference = run_extract(  # v4 alone, into another store: what v1 must now hold
        ExtractConfig(store=str(tmp_path / "ref"), num_workers=0, compact=False,
                      **TINY_EXTRACT_OPTIONS),
        catalog=Catalog(name="folder", root=videos, videos=pl.DataFrame(
            {"video_id": ["v1"], "path": [str(videos / "v1.mp4")], "split": ["train"]})),
        progress=False)
    assert reference.num_ok == 1
    (ref,) = FeatureStore(tmp_path / "ref").feature_sets()
    np.testing.assert_array_equal(fs.read("v1").tokens, ref.read("v1").tokens)


def test_two_tables_mapping_the_same_ids_to_other_files_get_two_feature_sets(tmp_path):
    config = ExtractConfig(**TINY_EXTRACT_OPTIONS)
    videos = pl.DataFrame({"video_id": ["a"], "path": ["x.mp4"], "split": ["train"]})
    specs = [feature_set_spec(config, Catalog(name="csv", root=tmp_path, videos=videos,
                                              meta={"labels": str(tmp_path / f"{t}.csv")}),
                              "resnet18", {"kind": "none", "seed": 0}, "fp32")
             for t in ("first", "second")]
    assert specs[0]["dataset_source"]["labels"].endswith("first.csv")
    assert specs[0] != specs[1]
    # A named benchmark's spec is unchanged by this (its ids are its identity).
    lvu = feature_set_spec(config, Catalog(name="lvu", root=tmp_path, videos=videos),
                           "resnet18", {"kind": "none", "seed": 0}, "fp32")
    assert "dataset_source" not in lvu

"""Benchmark catalogs: LVU from the shared official label files, and Kinetics-400, Breakfast,
COIN, MMX-Trailer-20 and the generic csv/parquet catalog from small fixture files written in
each official format (tests/fixtures/). Catalogs never decode: video files here are empty."""

from __future__ import annotations

import math
import os
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from catalogs import get_catalog
from catalogs.lvu import LIKE_RATIO_OFFSET, NUM_CLASSES, VIEW_COUNT_OFFSET
from pipeline.cli import app

FIXTURES = Path(__file__).parent / "fixtures"


def find_lvu_labels() -> Path | None:
    """The official LVU 1.0 label folder: $LVU_LABELS, else shared/data/lvu_1.0 next to an
    ancestor of this checkout (the project's shared data folder), else the byte-identical copy
    in tests/fixtures/lvu_1.0 (1 MB, MIT; see its PROVENANCE-lvu.md), so CI always runs these."""
    if os.environ.get("LVU_LABELS"):
        return Path(os.environ["LVU_LABELS"])
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data" / "lvu_1.0"
        if candidate.is_dir():
            return candidate
    vendored = FIXTURES / "lvu_1.0"
    return vendored if vendored.is_dir() else None


LVU_LABELS = find_lvu_labels()
needs_lvu = pytest.mark.skipif(LVU_LABELS is None, reason="LVU 1.0 label files not found; "
                               "set LVU_LABELS to the lvu_1.0 folder")
# Exact per-task train/val/test sizes of LVU 1.0 (rows of the official files).
LVU_SPLIT_SIZES = {
    "relationship": (149, 53, 42), "way_speaking": (939, 205, 201), "scene": (557, 120, 86),
    "director": (680, 163, 107), "writer": (769, 174, 168), "year": (770, 165, 143),
    "genre": (3063, 597, 647), "like_ratio": (658, 142, 140), "view_count": (577, 124, 126),
}


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


# --- lvu ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lvu(tmp_path_factory):
    videos = tmp_path_factory.mktemp("lvu_videos")
    # Two real ids in nested folders and mixed extensions; one unrelated file and a partial
    # download that must be ignored.
    touch(videos, "a/-e6lEsIUf3U.mp4", "0QbMWpwr7FM.MKV", "notes.txt", "0IWdfqsImMU.mp4.part")
    return get_catalog("lvu", labels=LVU_LABELS, video_root=videos), videos


@needs_lvu
def test_lvu_has_exact_per_task_split_sizes(lvu):
    catalog, _ = lvu
    assert catalog.videos.height == 9996
    for task, sizes in LVU_SPLIT_SIZES.items():
        splits = catalog.task_split(task)["split"].drop_nulls().value_counts()
        assert tuple(dict(splits.iter_rows())[s] for s in ("train", "val", "test")) == sizes, task


@needs_lvu
def test_lvu_declares_its_five_seed_protocol(lvu):
    from heads.experiments import protocol_seeds

    catalog, _ = lvu
    assert protocol_seeds(catalog, 3) == 5  # STAN §4 Metrics: standard error over five runs


@needs_lvu
def test_lvu_tasks_kinds_and_class_counts(lvu):
    catalog, _ = lvu
    assert list(catalog.tasks) == [*NUM_CLASSES, "like_ratio", "view_count"]
    for task, num in NUM_CLASSES.items():
        assert (catalog.tasks[task].kind, len(catalog.tasks[task].classes)) == ("classification", num)
    assert catalog.tasks["relationship"].classes == (
        "friend", "ex_boyfriend_ex_girlfriend", "husband_wife", "boyfriend_girlfriend")
    # Ids that no file uses keep their slot, so class index = LVU's class_id.
    assert catalog.tasks["director"].classes[2:4] == ("unused_2", "unused_3")
    assert catalog.tasks["like_ratio"].kind == catalog.tasks["view_count"].kind == "regression"


@needs_lvu
def test_lvu_labels_and_target_normalisation(lvu):
    catalog, _ = lvu
    labels = {r["video_id"]: r for r in catalog.labels.iter_rows(named=True)}
    # First rows of the official files: like_ratio/train "100061 3801 29VjYkPPY2s",
    # view_count/train "100124 gFKba_Esjt0", relationship/train "0 friend -e6lEsIUf3U".
    assert labels["29VjYkPPY2s"]["like_ratio"] == pytest.approx(
        10 * 100061 / (100061 + 3801) - LIKE_RATIO_OFFSET)
    assert labels["gFKba_Esjt0"]["view_count"] == pytest.approx(math.log(100124) - VIEW_COUNT_OFFSET)
    assert labels["-e6lEsIUf3U"]["relationship"] == "friend"
    # The offsets make LVU's targets roughly zero-mean over the whole release.
    assert abs(catalog.labels["like_ratio"].mean()) < 0.05
    assert abs(catalog.labels["view_count"].mean()) < 0.05


@needs_lvu
def test_lvu_video_split_is_null_where_tasks_disagree(lvu):
    catalog, _ = lvu
    mixed = catalog.videos.filter(pl.col("split").is_null())["video_id"].to_list()
    assert len(mixed) == 723
    per_task = catalog.task_splits.filter(pl.col("video_id") == mixed[0]).row(0, named=True)
    assert len({v for k, v in per_task.items() if k != "video_id" and v is not None}) > 1


@needs_lvu
def test_lvu_finds_videos_by_id_and_lists_the_rest_as_missing(lvu):
    catalog, videos = lvu
    found = catalog.videos.filter(pl.col("path").is_not_null())
    assert dict(zip(found["video_id"], found["path"])) == {
        "-e6lEsIUf3U": str(videos / "a" / "-e6lEsIUf3U.mp4"),
        "0QbMWpwr7FM": str(videos / "0QbMWpwr7FM.MKV"),
    }
    assert catalog.missing().height == 9994


@needs_lvu
def test_lvu_errors(tmp_path):
    with pytest.raises(ValueError, match="lvu_1.0.tar.gz"):
        get_catalog("lvu", root=tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        get_catalog("lvu", labels=LVU_LABELS, video_root=tmp_path / "nope")
    touch(tmp_path, "v/-e6lEsIUf3U.mp4", "v/x/-e6lEsIUf3U.webm")
    with pytest.raises(ValueError, match="two files for video '-e6lEsIUf3U'"):
        get_catalog("lvu", labels=LVU_LABELS, video_root=tmp_path / "v")
    with pytest.raises(ValueError, match="takes no option.*fold"):
        get_catalog("lvu", labels=LVU_LABELS, fold="2")


@needs_lvu
def test_cli_catalog_summary_and_manifest(lvu, tmp_path):
    _, videos = lvu
    out = tmp_path / "lvu.parquet"
    result = CliRunner().invoke(app, ["catalog", "lvu", "--labels", str(LVU_LABELS),
                                      "--video-root", str(videos), "--write-manifest", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "lvu: 9996 videos, 2 found on disk, 9994 missing"
    (row,) = [line.split() for line in lines if line.startswith("relationship ")]
    assert row[1:] == ["classification", "4", "149", "(1)", "53", "(1)", "42", "(0)"]
    manifest = pl.read_parquet(out)
    assert manifest.height == 9996 and manifest["found"].sum() == 2
    assert manifest.filter(pl.col("split_relationship") == "val")["video_id"].len() == 53


# --- kinetics400 -------------------------------------------------------------------------------


def test_kinetics400_reads_the_official_csvs(tmp_path):
    touch(tmp_path, "train/abseiling/0347ZoDXyP0_000002_000012.mp4", "0wR5jVB-WPk.mp4")
    catalog = get_catalog("kinetics400", labels=FIXTURES / "kinetics400", video_root=tmp_path)
    videos = {r["video_id"]: r for r in catalog.videos.iter_rows(named=True)}
    assert len(videos) == 9
    assert catalog.tasks["action"].classes == ("abseiling", "air drumming", "riding a bike")
    assert dict(catalog.videos["split"].value_counts().iter_rows()) == {
        "train": 5, "val": 2, "test": 2}
    clip = videos["0347ZoDXyP0_000002_000012"]
    assert (clip["start_sec"], clip["end_sec"], clip["split"]) == (2.0, 12.0, "train")
    assert clip["path"].endswith("0347ZoDXyP0_000002_000012.mp4")
    # A bare <youtube_id> file names the only clip of that video.
    assert videos["0wR5jVB-WPk_000417_000427"]["path"] == str(tmp_path / "0wR5jVB-WPk.mp4")
    assert catalog.missing().height == 7
    labels = dict(zip(catalog.labels["video_id"], catalog.labels["action"]))
    assert labels["03V2idM7_KY_000030_000040"] == "air drumming"
    assert labels["--_EwYHL2rk_000000_000010"] is None  # the test CSV has no labels


def test_kinetics400_rejects_a_csv_without_the_official_columns(tmp_path):
    (tmp_path / "train.csv").write_text("label,youtube_id,start,end\nabseiling,x,0,10\n")
    with pytest.raises(ValueError, match=r"train.csv: no column\(s\) \['time_start'"):
        get_catalog("kinetics400", labels=tmp_path)


# --- breakfast ---------------------------------------------------------------------------------


def test_breakfast_reads_the_release_layout_and_official_folds(tmp_path):
    touch(tmp_path, "P03/cam01/P03_coffee.avi", "P03/stereo/P03_coffee_ch0.avi",
          "P16/webcam02/P16_scrambledegg.avi", "P54/cam02/P54_salat.avi",
          "P54/cam02/P54_salat.labels")
    catalog = get_catalog("breakfast", video_root=tmp_path, fold="2")
    assert len(catalog.tasks["activity"].classes) == 10
    rows = {r["video_id"]: r for r in catalog.videos.iter_rows(named=True)}
    assert set(rows) == {"P03/cam01/P03_coffee", "P03/stereo/P03_coffee_ch0",
                         "P16/webcam02/P16_scrambledegg", "P54/cam02/P54_salat"}
    assert {v: r["split"] for v, r in rows.items()} == {
        "P03/cam01/P03_coffee": "train", "P03/stereo/P03_coffee_ch0": "train",
        "P16/webcam02/P16_scrambledegg": "test", "P54/cam02/P54_salat": "train"}
    labels = dict(zip(catalog.labels["video_id"], catalog.labels["activity"]))
    assert labels["P03/stereo/P03_coffee_ch0"] == "coffee"
    fold4 = get_catalog("breakfast", video_root=tmp_path, fold=4)
    assert fold4.videos.filter(pl.col("split") == "test")["video_id"].to_list() == [
        "P54/cam02/P54_salat"]


def test_breakfast_errors(tmp_path):
    touch(tmp_path, "P03/cam01/P03_waffles.avi")
    with pytest.raises(ValueError, match="P03_waffles.avi names activity 'waffles'"):
        get_catalog("breakfast", video_root=tmp_path)
    with pytest.raises(ValueError, match="fold 5"):
        get_catalog("breakfast", video_root=tmp_path, fold=5)


# --- coin --------------------------------------------------------------------------------------


def test_coin_reads_the_official_json(tmp_path):
    touch(tmp_path, "12/-0Y8Qfum1Bs.mp4")
    catalog = get_catalog("coin", labels=FIXTURES / "coin" / "COIN.json", video_root=tmp_path)
    classes = catalog.tasks["task"].classes
    assert len(classes) == 180
    assert (classes[0], classes[12], classes[179], classes[1]) == (
        "AssembleBed", "MakeCoffee", "ReplaceCarFuse", "recipe_type_1")
    rows = {r["video_id"]: r for r in catalog.videos.iter_rows(named=True)}
    assert {v: r["split"] for v, r in rows.items()} == {
        "-0Y8Qfum1Bs": "train", "0AjOp6bxVZ4": "test", "1UqHhUtPN8c": "train",
        "5sUi4SZzbA8": "test"}
    assert rows["-0Y8Qfum1Bs"]["path"] == str(tmp_path / "12" / "-0Y8Qfum1Bs.mp4")
    assert rows["-0Y8Qfum1Bs"]["num_steps"] == 2 and rows["0AjOp6bxVZ4"]["path"] is None
    assert dict(zip(catalog.labels["video_id"], catalog.labels["task"]))["5sUi4SZzbA8"] == (
        "ReplaceCarFuse")


def test_coin_rejects_an_out_of_range_task(tmp_path):
    (tmp_path / "COIN.json").write_text(
        '{"database": {"abc": {"recipe_type": 180, "class": "X", "subset": "training"}}}')
    with pytest.raises(ValueError, match="video 'abc': recipe_type 180 outside 0..179"):
        get_catalog("coin", root=tmp_path)


# --- mmx_trailer_20 ----------------------------------------------------------------------------


def test_mmx_trailer_20_reads_the_documented_columns(tmp_path):
    touch(tmp_path, "tt0110912.mp4")
    labels = FIXTURES / "mmx_trailer_20" / "labels.csv"
    catalog = get_catalog("mmx_trailer_20", labels=labels, video_root=tmp_path)
    task = catalog.tasks["genres"]
    assert task.kind == "multilabel"
    assert task.classes == ("Action", "Crime", "Drama", "Mystery", "Romance", "Sci-Fi", "Thriller")
    genres = dict(zip(catalog.labels["video_id"], catalog.labels["genres"].to_list()))
    assert genres["tt0133093"] == ["Action", "Sci-Fi"] and genres["tt0109830"] == ["Drama", "Romance"]
    assert genres["tt0050083"] is None
    splits = dict(zip(catalog.videos["video_id"], catalog.videos["split"]))
    assert (splits["tt0110912"], splits["tt0109830"], splits["tt0114369"]) == ("train", "val", "test")
    # Rows without a split get a stable hash split; the same on every build.
    again = get_catalog("mmx_trailer_20", labels=labels)
    assert splits["tt0120338"] in ("train", "val", "test")
    assert again.videos["split"].to_list() == catalog.videos["split"].to_list()
    assert catalog.videos.filter(pl.col("path").is_not_null())["video_id"].to_list() == ["tt0110912"]


def test_mmx_trailer_20_fixed_vocabulary(tmp_path):
    labels = FIXTURES / "mmx_trailer_20" / "labels.csv"
    vocabulary = "Action,Crime,Drama,Mystery,Romance,Sci-Fi,Thriller,Western"
    catalog = get_catalog("mmx_trailer_20", labels=labels, genres=vocabulary)
    assert catalog.tasks["genres"].classes[-1] == "Western"
    with pytest.raises(ValueError, match=r"column 'genres': class\(es\) \['Mystery'"):
        get_catalog("mmx_trailer_20", labels=labels, genres="Action,Crime,Drama,Romance,Sci-Fi")


# --- csv / parquet -----------------------------------------------------------------------------


def _table() -> pl.DataFrame:
    return pl.DataFrame({
        "video_id": ["a", "b", "c"],
        "path": ["clips/a.mp4", None, "/elsewhere/c.mp4"],
        "split": ["train", "val", None],
        "genre": ["comedy", "drama", None],
        "tags": [["x", "y"], ["y"], []],
        "score": [1.5, 2.0, None],
        "ignored": [1, 2, 3],
    })


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_generic_table_catalog_with_declared_kinds(tmp_path, fmt):
    table = _table()
    path = tmp_path / f"labels.{fmt}"
    if fmt == "csv":
        table.with_columns(pl.col("tags").list.join(";")).write_csv(path)
    else:
        table.write_parquet(path)
    touch(tmp_path, "videos/b.webm")
    catalog = get_catalog(fmt, labels=path, video_root=tmp_path / "videos",
                          tasks="genre:classification,tags:multilabel,score:regression")
    assert {n: t.kind for n, t in catalog.tasks.items()} == {
        "genre": "classification", "tags": "multilabel", "score": "regression"}
    assert catalog.tasks["tags"].classes == ("x", "y")
    assert catalog.videos["path"].to_list() == [
        str(tmp_path / "clips" / "a.mp4"), str(tmp_path / "videos" / "b.webm"), "/elsewhere/c.mp4"]
    assert catalog.videos["split"].to_list() == ["train", "val", "train"]
    assert catalog.labels["tags"].to_list() == [["x", "y"], ["y"], []]
    assert catalog.labels["score"].dtype == pl.Float64


def test_generic_table_catalog_errors(tmp_path):
    path = tmp_path / "labels.csv"
    _table().drop("tags").write_csv(path)
    with pytest.raises(ValueError, match="declare the label columns"):
        get_catalog("csv", labels=path)
    with pytest.raises(ValueError, match=r"kind\(s\) \{'genre': 'category'\}"):
        get_catalog("csv", labels=path, tasks="genre:category")
    with pytest.raises(ValueError, match=r"labels.csv: no column\(s\) \['mood'\]"):
        get_catalog("csv", labels=path, tasks="mood:classification")
    with pytest.raises(ValueError, match="column 'genre': regression values must be numbers"):
        get_catalog("csv", labels=path, tasks="genre:regression")
    with pytest.raises(ValueError, match="reads a .parquet file"):
        get_catalog("parquet", labels=path, tasks="genre:classification")

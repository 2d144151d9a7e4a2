"""Tests for catalogs: the registry, the demo dataset (plan, build, labels) and the folder catalog.

The small demo variant is built once per module (a few seconds, in-process); the default variant
is checked through its plan only, which needs no encoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from catalogs import SPLITS, get_catalog, list_catalogs
from catalogs.demo import (
    CLASSES,
    FADE_NUM_FRAMES,
    FPS,
    HEIGHT_PX,
    MIN_SHOT_FRAMES,
    VARIANTS,
    WIDTH_PX,
    build_demo,
    load_cuts,
    plan_demo,
    plan_tables,
)

TABLES = ("videos", "labels", "shots", "cuts")


def _read_tables(root: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(root / f"{name}.parquet") for name in TABLES}


def _decode(path: str | Path) -> np.ndarray:
    """All frames of a video as uint8 RGB, (T, H, W, 3)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory.mktemp("demo") / "small", variant="small", num_workers=1)


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """A folder of (empty) video files and a labels CSV with one row whose file is missing."""
    root = tmp_path_factory.mktemp("folder")
    for name in ("cats/a.mp4", "cats/b.MKV", "dogs/c.webm", "notes.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    labels = root / "labels.csv"
    labels.write_text(
        "video_id,split,path,genre,tags,score\n"
        "cats/a,train,,cat,indoor;sleepy,1.5\n"
        "cats/b,val,,cat,outdoor,2\n"
        "dogs/c,,,dog,indoor; outdoor,\n"
        "gone,test,archive/gone.mp4,dog,,0.25\n"
    )
    return root, labels


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_demo_and_folder():
    assert {"demo", "folder", "lvu", "kinetics400", "breakfast", "coin", "mmx_trailer_20", "csv",
            "parquet"} <= set(list_catalogs())


def test_unknown_catalog_names_the_valid_ones():
    with pytest.raises(KeyError, match="demo.*folder"):
        get_catalog("no_such_dataset")


@pytest.mark.parametrize("name", list_catalogs())
def test_every_catalog_meets_the_contract(name, small_demo, folder_dataset, tmp_path):
    from test_catalogs_benchmarks import FIXTURES, LVU_LABELS

    (tmp_path / "P03" / "cam01").mkdir(parents=True)
    (tmp_path / "P03" / "cam01" / "P03_tea.avi").write_bytes(b"")
    csv = tmp_path / "labels.csv"
    csv.write_text("video_id,path,split,genre\na,a.mp4,train,x\nb,b.mp4,test,y\n")
    pl.read_csv(csv).write_parquet(tmp_path / "labels.parquet")
    options = {
        "demo": {"root": small_demo, "variant": "small", "build": False},
        "folder": {"root": folder_dataset[0], "labels": folder_dataset[1]},
        "lvu": {"labels": LVU_LABELS},
        "kinetics400": {"labels": FIXTURES / "kinetics400"},
        "breakfast": {"video_root": tmp_path},
        "coin": {"labels": FIXTURES / "coin" / "COIN.json"},
        "mmx_trailer_20": {"labels": FIXTURES / "mmx_trailer_20" / "labels.csv"},
        "csv": {"labels": csv, "tasks": "genre:classification"},
        "parquet": {"labels": tmp_path / "labels.parquet", "tasks": "genre:classification"},
    }
    assert name in options, f"add options for the new catalog {name!r} to this test"
    if name == "lvu" and LVU_LABELS is None:
        pytest.skip("LVU 1.0 label files not found")
    catalog = get_catalog(name, **options[name])
    assert catalog.videos.height > 0
    # A null path is a video listed by the catalog but not found on disk.
    assert all(Path(p).is_absolute() for p in catalog.videos["path"].drop_nulls())
    # A null split: the video's split differs between tasks (see Catalog.task_splits).
    assert set(catalog.videos["split"].drop_nulls()) <= set(SPLITS)
    for task in catalog.tasks:
        assert set(catalog.task_split(task)["split"].drop_nulls()) <= set(SPLITS)
    assert catalog.labels["video_id"].to_list() == catalog.videos["video_id"].to_list()
    for task in catalog.tasks.values():
        values = catalog.labels[task.name]
        if task.kind == "regression":
            assert values.dtype == pl.Float64
        elif task.kind == "classification":
            assert set(values.drop_nulls()) <= set(task.classes)
        else:
            assert set(values.drop_nulls().explode().drop_nulls()) <= set(task.classes)


# --- demo: plan -------------------------------------------------------------------------------


def _check_tables(tables: dict[str, pl.DataFrame], variant: str) -> None:
    """Checks a demo's tables against its variant's spec and recomputes labels from shots."""
    spec = VARIANTS[variant]
    videos, shots, cuts = tables["videos"], tables["shots"], tables["cuts"]
    assert videos.height == spec.num_videos
    assert videos["duration_sec"].min() >= spec.min_duration_sec
    assert videos["duration_sec"].max() <= spec.max_duration_sec
    assert (videos["num_frames"] == (videos["duration_sec"] * FPS).round()).all()
    counts = videos["split"].value_counts()
    assert dict(counts.iter_rows())["train"] >= 2 and set(counts["split"]) == set(SPLITS)

    for (video_id,), group in shots.sort("video_id", "shot_idx").group_by("video_id"):
        num_frames = videos.filter(pl.col("video_id") == video_id)["num_frames"].item()
        assert spec.min_shots <= group.height <= spec.max_shots
        # Shots tile the video, each at least 1.5 s.
        assert group["start_frame"][0] == 0 and group["end_frame"][-1] == num_frames
        assert (group["start_frame"][1:] == group["end_frame"][:-1]).all()
        assert (group["end_frame"] - group["start_frame"]).min() >= MIN_SHOT_FRAMES
        assert group["transition_in"][0] == "start"
        # Consecutive shots of one source differ in mirror, crop and offset.
        rows = group.to_dicts()
        for prev, shot in zip(rows, rows[1:]):
            if prev["source"] == shot["source"]:
                assert prev["flip"] != shot["flip"] and prev["crop_w"] != shot["crop_w"]
                assert prev["source_start_frame"] != shot["source_start_frame"]
    assert (shots["segment_start_frame"] <= shots["source_start_frame"]).all()
    assert (shots["source_start_frame"] < shots["segment_end_frame"]).all()

    boundaries = shots.filter(pl.col("shot_idx") > 0)
    assert cuts["frame_idx"].to_list() == boundaries["start_frame"].to_list()
    assert cuts["kind"].to_list() == [
        "fade" if t == "fade" else "hard" for t in boundaries["transition_in"]
    ]

    screen = shots.group_by("video_id", "source").agg(
        (pl.col("end_frame") - pl.col("start_frame")).sum().alias("num_frames")
    )
    labels = tables["labels"].sort("video_id")
    for row in labels.iter_rows(named=True):
        per_source = dict(
            screen.filter(pl.col("video_id") == row["video_id"]).select("source", "num_frames")
            .iter_rows()
        )
        ranked = sorted(per_source.values(), reverse=True)
        assert len(ranked) == 1 or ranked[0] > ranked[1], "most_screen_time must not tie"
        assert row["most_screen_time"] == max(per_source, key=per_source.get)
        assert row["sources_present"] == [c for c in CLASSES if c in per_source]
        total = sum(per_source.values())
        assert row["bunny_fraction"] == pytest.approx(per_source.get("bigbuckbunny", 0) / total)


def test_default_plan_meets_the_spec():
    tables = plan_tables(plan_demo(variant="default"))
    assert tables["videos"].height >= 60
    _check_tables(tables, "default")
    labels = tables["labels"]
    # Classes balanced, and not every video shows every source.
    assert labels["most_screen_time"].value_counts()["count"].min() >= 15
    assert (labels["sources_present"].list.len() < len(CLASSES)).sum() >= 10
    videos_with_fades = tables["cuts"].filter(pl.col("kind") == "fade")["video_id"].n_unique()
    assert 0.15 <= videos_with_fades / tables["videos"].height <= 0.5


def test_plan_is_seeded():
    assert plan_demo(variant="small", seed=1) == plan_demo(variant="small", seed=1)
    assert plan_demo(variant="small", seed=1) != plan_demo(variant="small", seed=2)


def test_unknown_variant_names_the_valid_ones():
    with pytest.raises(ValueError, match="default, small"):
        plan_demo(variant="huge")


# --- demo: build ------------------------------------------------------------------------------


def test_small_build_meets_the_spec(small_demo):
    tables = _read_tables(small_demo)
    _check_tables(tables, "small")
    planned = plan_tables(plan_demo(variant="small"))
    for name in TABLES:
        assert tables[name].equals(planned[name]), name
    assert load_cuts(small_demo).equals(tables["cuts"])
    assert sorted(p.name for p in (small_demo / "videos").iterdir()) == [
        f"{v}.mp4" for v in tables["videos"]["video_id"]
    ]
    assert not list(small_demo.parent.glob(".*")), "staging folders left behind"


def test_build_is_deterministic(small_demo, tmp_path):
    again = build_demo(tmp_path / "again", variant="small", num_workers=1)
    first, second = _read_tables(small_demo), _read_tables(again)
    for name in TABLES:
        assert first[name].equals(second[name]), name
    for path in sorted((small_demo / "videos").iterdir()):
        assert path.read_bytes() == (again / "videos" / path.name).read_bytes(), path.name


def test_built_videos_decode_with_cuts_where_recorded(small_demo):
    videos = pl.read_parquet(small_demo / "videos.parquet")
    cuts = load_cuts(small_demo)
    assert (cuts["kind"] == "fade").any(), "seed 0 of the small variant has fades"
    for row in videos.iter_rows(named=True):
        frames = _decode(small_demo / row["path"])
        assert frames.shape == (row["num_frames"], HEIGHT_PX, WIDTH_PX, 3)
        coarse = frames[:, ::4, ::4].astype(np.int16)  # every 4th pixel is enough, 16x cheaper
        change = np.abs(np.diff(coarse, axis=0)).mean(axis=(1, 2, 3))  # (T-1,)
        for cut in cuts.filter(pl.col("video_id") == row["video_id"]).iter_rows(named=True):
            frame_idx = cut["frame_idx"]
            if cut["kind"] == "hard":
                # A hard cut is the largest frame-to-frame change around it.
                assert change[frame_idx - 1] > 3 * np.median(change), (row["video_id"], frame_idx)
            else:
                # Through black: dark at the boundary, bright a fade length away.
                assert frames[frame_idx - 1].mean() < 10
                assert frames[frame_idx + FADE_NUM_FRAMES].mean() > 20


def test_build_skips_an_identical_build(small_demo):
    stamp = (small_demo / "manifest.json").stat().st_mtime_ns
    assert build_demo(small_demo, variant="small") == small_demo
    assert (small_demo / "manifest.json").stat().st_mtime_ns == stamp


def test_build_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("not a demo")
    with pytest.raises(FileExistsError, match="holds no demo build"):
        build_demo(tmp_path, variant="small")


def test_demo_catalog_loads_a_build(small_demo, capsys):
    catalog = get_catalog("demo", root=small_demo, variant="small")
    assert "building" not in capsys.readouterr().err
    assert catalog.meta["variant"] == "small" and catalog.meta["num_videos"] == 8
    assert all(Path(p).is_file() for p in catalog.videos["path"])
    assert {t.name: t.kind for t in catalog.tasks.values()} == {
        "most_screen_time": "classification",
        "first_source": "classification",
        "sources_present": "multilabel",
        "bunny_fraction": "regression",
    }
    assert catalog.labels["sources_present"].dtype == pl.List(pl.String)


def test_demo_catalog_without_build_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="build"):
        get_catalog("demo", root=tmp_path / "none", variant="small", build=False)


# --- folder -----------------------------------------------------------------------------------


def test_folder_catalog_infers_tasks_and_keeps_missing_files(folder_dataset):
    root, labels = folder_dataset
    catalog = get_catalog("folder", root=root, labels=labels, split="test")
    videos = {row["video_id"]: row for row in catalog.videos.iter_rows(named=True)}
    assert set(videos) == {"cats/a", "cats/b", "dogs/c", "gone"}
    assert videos["cats/b"]["path"] == str(root / "cats" / "b.MKV")
    assert videos["gone"]["path"] == str(root / "archive" / "gone.mp4")  # kept, though missing
    assert {k: v["split"] for k, v in videos.items()} == {
        "cats/a": "train", "cats/b": "val", "dogs/c": "test", "gone": "test"
    }
    assert {t.name: (t.kind, t.classes) for t in catalog.tasks.values()} == {
        "genre": ("classification", ("cat", "dog")),
        "tags": ("multilabel", ("indoor", "outdoor", "sleepy")),
        "score": ("regression", ()),
    }
    by_id = {row["video_id"]: row for row in catalog.labels.iter_rows(named=True)}
    assert by_id["dogs/c"]["tags"] == ["indoor", "outdoor"]
    assert by_id["cats/b"]["tags"] == ["outdoor"]
    assert by_id["dogs/c"]["score"] is None and by_id["gone"]["score"] == 0.25


def test_folder_catalog_without_labels(folder_dataset):
    catalog = get_catalog("folder", root=folder_dataset[0])
    assert catalog.videos["video_id"].to_list() == ["cats/a", "cats/b", "dogs/c"]
    assert set(catalog.videos["split"]) == {"train"} and catalog.labels is None


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("name,genre\nx,cat\n", "no 'video_id' column"),
        ("video_id,genre\ncats/a,cat\ncats/a,dog\n", "repeated"),
        ("video_id,split\ncats/a,training\n", "'split'"),
        ("video_id,genre\ncats/a,cat\nelsewhere,dog\n", "no 'path' value"),
        ("video_id,genre\ncats/a,cat\ncats/b,cat\n", "column 'genre'.*at least 2 classes"),
    ],
)
def test_folder_catalog_errors_name_file_and_column(folder_dataset, tmp_path, csv, message):
    labels = tmp_path / "bad.csv"
    labels.write_text(csv)
    with pytest.raises(ValueError, match=message) as err:
        get_catalog("folder", root=folder_dataset[0], labels=labels)
    assert "bad.csv" in str(err.value)


def test_folder_catalog_missing_root(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        get_catalog("folder", root=tmp_path / "nowhere")


# --------------------------------------------------------- missing labels and empty tables

# Every spelling of "no label" that label tables carry: pandas' str(nan), polars' nulls, blanks.
_MISSING = ("NaN", "nan", "", "  ", "null", "-nan")


def _labels_table(tmp_path: Path, fmt: str) -> Path:
    """Six videos, each with one missing-label spelling in ``genre`` and ``tags``, and two
    labelled ones; ``score`` is NaN where a label is missing."""
    ids = [f"v{i}" for i in range(len(_MISSING))] + ["cat1", "dog1"]
    frame = pl.DataFrame({
        "video_id": ids,
        "genre": [*_MISSING, "cat", "dog"],
        "tags": [*_MISSING, "indoor;outdoor", "outdoor"],
        "score": [float("nan")] * len(_MISSING) + [0.5, 1.0],
    })
    for video_id in ids:
        (tmp_path / f"{video_id}.mp4").write_bytes(b"")
    path = tmp_path / f"labels.{fmt}"
    if fmt == "parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path)
    return path


@pytest.mark.parametrize("name", ["csv", "parquet", "folder"])
def test_nan_and_empty_labels_are_missing_not_classes(tmp_path, name):
    labels = _labels_table(tmp_path, "parquet" if name == "parquet" else "csv")
    if name == "folder":
        catalog = get_catalog("folder", root=tmp_path, labels=labels)
    else:
        catalog = get_catalog(name, root=tmp_path, labels=labels,
                              tasks="genre:classification,tags:multilabel,score:regression")
    assert catalog.tasks["genre"].classes == ("cat", "dog")
    assert catalog.tasks["tags"].classes == ("indoor", "outdoor")
    assert catalog.tasks["score"].kind == "regression"
    by_id = {row["video_id"]: row for row in catalog.labels.iter_rows(named=True)}
    for i, spelling in enumerate(_MISSING):
        row = by_id[f"v{i}"]
        # A blank multilabel value is the empty set of classes (a label), as split_list says.
        tags = [] if spelling.strip() == "" else None
        assert (row["genre"], row["tags"], row["score"]) == (None, tags, None), (spelling, row)
    assert by_id["cat1"]["tags"] == ["indoor", "outdoor"] and by_id["dog1"]["score"] == 1.0


@pytest.mark.parametrize("content", ["", "header", "\n"], ids=["0 bytes", "header only", "blank"])
@pytest.mark.parametrize("name", ["csv", "folder", "kinetics400"])
def test_empty_csv_is_a_one_line_error_naming_it(tmp_path, name, content):
    if content == "header":
        content = {"kinetics400": "label,youtube_id,time_start,time_end,split\n"}.get(
            name, "video_id,genre\n")
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    options = {"tasks": "genre:classification"} if name == "csv" else {}
    with pytest.raises(ValueError) as err:
        get_catalog(name, root=tmp_path, labels=labels, **options)
    message = str(err.value)
    assert str(labels) in message and "\n" not in message, message
    assert "no rows" in message, message


def test_parquet_without_rows_is_an_error_naming_it(tmp_path):
    labels = tmp_path / "labels.parquet"
    pl.DataFrame({"video_id": [], "genre": []}, schema={"video_id": pl.String,
                                                       "genre": pl.String}).write_parquet(labels)
    with pytest.raises(ValueError, match=f"{labels}.*no rows"):
        get_catalog("parquet", root=tmp_path, labels=labels, tasks="genre:classification")

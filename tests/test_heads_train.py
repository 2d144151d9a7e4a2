"""``heads train`` end to end on a tiny synthetic store whose tokens depend on the labels."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

import catalogs
from catalogs.base import Catalog, Task
from heads.cli import app
from heads.runs import load_head
from heads.train import TrainConfig, train
from pipeline.store import FeatureStore, fingerprint

DATASET = "toy"
DIM = 16
NUM_VIDEOS = 24  # 14 train, 5 val, 5 test
CLASSES = ("comedy", "drama", "horror")
TAGS = ("cars", "dogs", "rain", "night")
STAN_SMALL = {"d_model": 32, "num_heads": 4, "ff_dim": 64, "dropout": 0.0}
MEAN_SMALL = {"hidden_dim": 32, "dropout": 0.0}
TASK_BY_KIND = {"classification": "genre", "multilabel": "tags", "regression": "score"}
EXPECTED_KEYS = {
    "classification": {"top1"},
    "multilabel": {"mAP", "mAP_macro", "precision", "recall", "f1"},
    "regression": {"mse"},
}


def toy_labels() -> pl.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(NUM_VIDEOS):
        tags = [t for t in TAGS if rng.random() < 0.5] or [TAGS[i % len(TAGS)]]
        rows.append(
            {
                "video_id": f"toy/v{i:02d}",
                "genre": CLASSES[i % len(CLASSES)],
                "tags": tags,
                "score": float(rng.uniform(0.0, 10.0)),
            }
        )
    rows.append({"video_id": "toy/unlabelled", "genre": None, "tags": None, "score": None})
    rows.append({"video_id": "toy/broken", "genre": "drama", "tags": ["dogs"], "score": 1.0})
    return pl.DataFrame(rows, schema={"video_id": pl.Utf8, "genre": pl.Utf8,
                                      "tags": pl.List(pl.Utf8), "score": pl.Float64})


def toy_catalog(root: str | Path | None = None, name: str = DATASET) -> Catalog:
    """Catalog of the toy videos (paths are never opened: features are already stored)."""
    labels = toy_labels()
    ids = labels["video_id"].to_list()
    splits = ["train"] * 14 + ["val"] * 5 + ["test"] * 5 + ["train", "train"]
    return Catalog(
        name=name,
        root=Path(root or "."),
        videos=pl.DataFrame({"video_id": ids, "path": [f"/nowhere/{v}.mp4" for v in ids],
                             "split": splits}),
        tasks={
            "genre": Task("genre", "classification", CLASSES),
            "tags": Task("tags", "multilabel", TAGS),
            "score": Task("score", "regression"),
        },
        labels=labels,
    )


def write_toy_store(root: Path, dataset: str = DATASET) -> FeatureStore:
    """Two feature sets (2D and 3D backbones, plan `scene`) of class-dependent scene tokens.

    Each video's tokens are a genre prototype + its tag prototypes + score × a direction, plus
    noise, so every task is learnable; the 3D stream sees the same content through another
    random projection. ``toy/broken`` failed in the 3D feature set.
    """
    rng = np.random.default_rng(0)
    genre_protos = rng.normal(size=(len(CLASSES), DIM)) * 1.5
    tag_protos = rng.normal(size=(len(TAGS), DIM))
    score_dir = rng.normal(size=DIM) * 0.3
    projection = rng.normal(size=(DIM, DIM)) / np.sqrt(DIM)
    store = FeatureStore(root)
    sets = {}
    for backbone in ("resnet18", "r2plus1d_18"):
        spec = {"dataset": dataset, "backbone": backbone, "plan": "scene", "weights": "none"}
        name = f"{dataset}-{backbone}-scene-{fingerprint(spec)[:12]}"
        sets[backbone] = store.create(name, spec=spec, token_kind="pooled", dim=DIM,
                                      dtype="float16")
    for row in toy_labels().iter_rows(named=True):
        num_scenes = int(rng.integers(3, 9))
        content = np.zeros(DIM)
        if row["genre"] is not None:
            content = genre_protos[CLASSES.index(row["genre"])] + score_dir * row["score"]
            content = content + sum(tag_protos[TAGS.index(t)] for t in row["tags"])
        base = content + rng.normal(size=(num_scenes, DIM)) * 0.5  # (S, D)
        times = {
            "start_sec": np.arange(num_scenes) * 4.0,
            "end_sec": np.arange(1, num_scenes + 1) * 4.0,
            "scene_idx": np.arange(num_scenes),
        }
        sets["resnet18"].write_video(row["video_id"], base, **times)
        if row["video_id"] == "toy/broken":
            sets["r2plus1d_18"].write_status(row["video_id"], "failed", "decode error (synthetic)")
        else:
            temporal = base @ projection + rng.normal(size=(num_scenes, DIM)) * 0.2  # (S, D)
            sets["r2plus1d_18"].write_video(row["video_id"], temporal, **times)
    return store


# Tiny models run on one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    write_toy_store(root)
    return root


def small_config(head: str, task: str, store: Path, runs_dir: Path, **overrides) -> TrainConfig:
    fields = dict(
        dataset=DATASET, task=task, head=head, store=str(store), runs_dir=str(runs_dir),
        epochs=40, batch_size=4, lr=2e-3, warmup_epochs=2, patience=15,
        head_kwargs=STAN_SMALL if head == "stan" else MEAN_SMALL,
    )
    if head == "mean":
        fields["features"] = ("resnet18", "r2plus1d_18")
    return TrainConfig(**{**fields, **overrides})


@pytest.mark.parametrize("kind", list(TASK_BY_KIND))
@pytest.mark.parametrize("head", ["stan", "mean"])
def test_train_writes_a_complete_run(toy_store, tmp_path, head, kind):
    task = TASK_BY_KIND[kind]
    config = small_config(head, task, toy_store, tmp_path / "runs", epochs=6)
    result = train(config, catalog=toy_catalog(), log=lambda _: None)

    run_dir = Path(result["run_dir"])
    assert run_dir.parent == tmp_path / "runs"
    assert run_dir.name.endswith(f"-{head}-{task}")
    assert {p.name for p in run_dir.iterdir()} == {
        "config.json", "environment.json", "checkpoint.pt", "checkpoint_last.pt", "metrics.json",
        "predictions.parquet", "curves.png", "tensorboard",
    }
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["packages"]["torch"] == importlib.metadata.version("torch")
    assert env["git_sha"] is None or len(env["git_sha"]) == 40

    predictions = pl.read_parquet(run_dir / "predictions.parquet")
    assert predictions.height == 24
    assert predictions.group_by("split").len().sort("split")["len"].to_list() == [5, 14, 5]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["kind"] == kind
    assert metrics["num_videos"] == {"train": 14, "val": 5, "test": 5}
    # toy/broken failed in the 3D set; toy/unlabelled has no label.
    assert sum(metrics["num_dropped"].values()) == 2
    for split in ("train", "val", "test"):
        assert set(metrics["metrics"][split]) == EXPECTED_KEYS[kind]
        assert set(metrics["baseline"][split]) == EXPECTED_KEYS[kind]

    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["catalog"] == DATASET
    assert saved["config"]["features"] == ["resnet18", "r2plus1d_18"]
    assert [fs["backbone"] for fs in saved["feature_sets"]] == ["resnet18", "r2plus1d_18"]
    assert all(len(fs["fingerprint"]) == 64 for fs in saved["feature_sets"])

    # The checkpoints rebuild the selected and the last model.
    model, checkpoint = load_head(run_dir)
    assert checkpoint["head_args"]["in_dim"] == [DIM, DIM]
    assert checkpoint["task"]["kind"] == kind
    assert len(checkpoint["standardizer"]["mean"]) == 2
    assert checkpoint["epoch"] == metrics["selection"]["best_epoch"]
    _, last = load_head(run_dir, which="last")
    assert last["epoch"] == metrics["selection"]["num_epochs_run"]

    # Confusion matrix / per-class AP next to the scalars, counting every test video.
    test_details = metrics["details"]["test"]
    if kind == "classification":
        assert np.sum(test_details["confusion"]["matrix"]) == 5
    elif kind == "multilabel":
        assert [row["class"] for row in test_details["per_class"]] == list(TAGS)


def test_stan_beats_the_majority_baseline(toy_store, tmp_path):
    config = small_config("stan", "genre", toy_store, tmp_path)
    result = train(config, catalog=toy_catalog(), log=lambda _: None)
    test = result["metrics"]["test"]["top1"]
    assert test > result["baseline"]["test"]["top1"]
    assert test >= 0.8


def test_same_seed_same_run(toy_store, tmp_path):
    config = small_config("mean", "score", toy_store, tmp_path, epochs=5)
    first = train(config, catalog=toy_catalog(), log=lambda _: None)
    second = train(config, catalog=toy_catalog(), log=lambda _: None)
    assert first["run_dir"] != second["run_dir"]
    assert first["metrics"] == second["metrics"]
    assert first["history"] == second["history"]


def test_checkpoint_reproduces_test_metrics(toy_store, tmp_path):
    from heads.data import FeatureDataset, collate, load_task_data, resolve_feature_sets
    from heads.data import Standardizer
    from heads.metrics import compute_metrics

    config = small_config("stan", "genre", toy_store, tmp_path, epochs=3)
    result = train(config, catalog=toy_catalog(), log=lambda _: None)
    model, checkpoint = load_head(result["run_dir"])
    feature_sets = resolve_feature_sets(toy_store, DATASET, checkpoint["config"]["features"])
    data = load_task_data(toy_catalog(), "genre", feature_sets, log=lambda _: None)
    standardizer = Standardizer.from_state_dict(checkpoint["standardizer"])
    dataset = FeatureDataset([standardizer.apply(v) for v in data.tokens["test"]],
                             data.targets["test"])
    inputs, targets = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        outputs = model(*inputs).numpy()
    assert compute_metrics("classification", outputs, targets.numpy()) == result["metrics"]["test"]


def test_train_only_catalog_selects_on_train_loss(toy_store, tmp_path):
    # The `folder` catalog puts every video in train unless told otherwise.
    catalog = toy_catalog()
    catalog = dataclasses.replace(
        catalog, videos=catalog.videos.with_columns(split=pl.lit("train"))
    )
    lines = []
    config = small_config("mean", "genre", toy_store, tmp_path, epochs=3)
    result = train(config, catalog=catalog, log=lines.append)
    assert result["selection"]["metric"] == "train_loss"
    assert result["num_videos"] == {"train": 24, "val": 0, "test": 0}
    assert result["metrics"]["val"] == {} and result["metrics"]["test"] == {}
    assert any("selecting the checkpoint on train loss" in line for line in lines)


def test_stream_count_mismatch_is_reported(toy_store, tmp_path):
    config = small_config("stan", "genre", toy_store, tmp_path, features=("resnet18",))
    with pytest.raises(ValueError, match="takes 2 feature set"):
        train(config, catalog=toy_catalog(), log=lambda _: None)


def test_bad_head_kwarg_names_the_flag(toy_store, tmp_path):
    config = small_config("mean", "genre", toy_store, tmp_path, head_kwargs={"d_modle": 8})
    with pytest.raises(ValueError, match="--head-kwarg"):
        train(config, catalog=toy_catalog(), log=lambda _: None)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="--epochs must be at least 1"):
        TrainConfig(task="genre", epochs=0)
    with pytest.raises(ValueError, match="--lr must be positive"):
        TrainConfig(task="genre", lr=0.0)


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture
def toy_registry(monkeypatch):
    """The catalog registry holding only a `toy_test` catalog, restored after the test."""
    monkeypatch.setattr(catalogs, "_REGISTRY", dict(catalogs._REGISTRY))
    monkeypatch.setattr(catalogs, "_MODULES", ())  # other catalogs are not needed here
    def factory(*, root=None, variant="default"):
        catalog = toy_catalog(root, name="toy_test")
        return dataclasses.replace(catalog, meta={"variant": variant})

    catalogs.register_catalog("toy_test")(factory)


@pytest.fixture(scope="module")
def toy_test_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_store")
    write_toy_store(root, dataset="toy_test")
    return root


def test_cli_list():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert "stan" in result.output and "spatial+temporal" in result.output
    assert "mean" in result.output


def test_cli_train(toy_registry, toy_test_store, tmp_path):
    args = ["train", "--dataset", "toy_test", "--data-root", str(tmp_path), "--task", "genre",
            "--head", "stan", "--store", str(toy_test_store), "--runs-dir", str(tmp_path / "runs"),
            "--epochs", "3", "--batch-size", "8", "--variant", "small"]
    for key, value in STAN_SMALL.items():
        args += ["--head-kwarg", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "baseline top1" in result.output
    assert "dropped 2 of 26 videos" in result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["config"]["head_kwargs"]["d_model"] == 32
    assert saved["config"]["data_root"] == str(tmp_path)
    assert saved["config"]["catalog_options"] == {"variant": "small"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "nope"], "valid tasks: genre, tags, score"),
        (["--task", "genre", "--head", "nope"], "valid heads:"),
        (["--task", "genre", "--features", "vit_b16"], "pipeline extract --dataset toy_test"),
        (["--task", "genre", "--epochs", "0"], "--epochs must be at least 1"),
        (["--task", "genre", "--head-kwarg", "d_model"], "key=value"),
        (["--task", "genre", "--catalog-option", "colour=red"], "check --catalog-option"),
    ],
)
def test_cli_train_bad_input(toy_registry, toy_test_store, tmp_path, extra, message):
    args = ["train", "--dataset", "toy_test", "--store", str(toy_test_store), "--head", "mean",
            "--runs-dir", str(tmp_path / "runs"), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "runs").exists()


def test_trainer_passes_the_task_kind_to_the_head(toy_store, tmp_path, monkeypatch):
    import heads.train as train_module
    from heads.models import create_head

    built = []

    def spy(*args, **kwargs):
        built.append(create_head(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(train_module, "create_head", spy)
    config = small_config("stan_distill", TASK_BY_KIND["multilabel"], toy_store, tmp_path,
                          epochs=1, head_kwargs=STAN_SMALL)
    train(config, catalog=toy_catalog(), log=lambda _: None)
    # Multilabel outputs are per-class sigmoids: distillation is binary, without any flag.
    assert [model.distill_loss for model in built] == ["bce"]

"""Metrics against hand-computed values, the LVU windows against a direct computation, config
files, seeds, and the `heads eval / predict / runs / explain / sweep` commands on a toy store."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from heads.cli import app
from heads.metrics import compute_metrics, details, per_class_ap, top_k
from heads.models import create_head
from heads.windows import (
    RandomWindowDataset,
    eval_windows,
    predict_videos,
    video_windows,
    window_streams,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------- metrics

# Hand-computed: arg-max predictions 0, 1, 0, 2 against 0, 2, 2, 2.
LOGITS = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 1.0]])
LABELS = np.array([0, 2, 2, 2])


def test_top1_and_confusion_by_hand():
    assert compute_metrics("classification", LOGITS, LABELS) == {"top1": 0.5}  # no top5: K=3
    table = details("classification", LOGITS, LABELS, ["a", "b", "c"])["confusion"]
    assert table["classes"] == ["a", "b", "c"]
    # rows = true class: a→a once; c→b, c→a, c→c once each.
    assert table["matrix"] == [[1, 0, 0], [0, 0, 0], [1, 1, 1]]


def test_top5_only_when_more_than_five_classes():
    logits = np.array([[6.0, 5, 4, 3, 2, 1], [6.0, 5, 4, 3, 2, 1]])
    targets = np.array([5, 4])  # ranks 6 (miss) and 5 (hit)
    assert top_k(logits, targets, 5) == 0.5
    assert compute_metrics("classification", logits, targets) == {"top1": 0.0, "top5": 0.5}


def test_multilabel_metrics_by_hand():
    # Class A: positives ranked 1st and 3rd of 4 → AP = (1/1 + 2/3) / 2 = 5/6.
    # Class B: its only positive ranked 1st → AP = 1. Weighted by positives (2, 1): 8/9.
    scores = np.array([[2.0, -1.0], [1.0, 2.0], [-0.5, 1.0], [-1.0, -2.0]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], dtype=np.float32)
    m = compute_metrics("multilabel", scores, targets)
    assert m["mAP"] == pytest.approx(8 / 9)
    assert m["mAP_macro"] == pytest.approx((5 / 6 + 1) / 2)
    # Predicted (logit > 0): A = {0, 1} → P = R = F1 = 1/2; B = {1, 2} → P 1/2, R 1, F1 2/3.
    assert m["precision"] == pytest.approx((2 * 0.5 + 0.5) / 3)
    assert m["recall"] == pytest.approx((2 * 0.5 + 1.0) / 3)
    assert m["f1"] == pytest.approx((2 * 0.5 + 2 / 3) / 3)
    rows = details("multilabel", scores, targets, ["A", "B"])["per_class"]
    assert rows == [{"class": "A", "ap": pytest.approx(5 / 6), "num_positives": 2},
                    {"class": "B", "ap": pytest.approx(1.0), "num_positives": 1}]


def test_per_class_ap_is_nan_without_positives():
    aps = per_class_ap(np.array([[0.1, 0.2], [0.3, 0.4]]), np.array([[1, 0], [0, 0]]))
    assert aps[0] == pytest.approx(0.5) and math.isnan(aps[1])  # its positive ranked 2nd of 2


def test_mse_by_hand():
    outputs = np.array([[1.0], [2.0], [4.0]])
    assert compute_metrics("regression", outputs, np.ones((3, 1))) == {
        "mse": pytest.approx(10 / 3)
    }


# ----------------------------------------------------------------------------- windows


def scene_times(starts: list[float], ends: list[float]) -> np.ndarray:
    return np.stack([np.asarray(starts, float), np.asarray(ends, float)], axis=1)  # (T, 2)


def test_eval_windows_are_every_full_window_at_a_1s_stride():
    """Official ViS4mer lvu_dataset.py: starts 0, 1, ..., duration - 60; shorter: one window."""
    windows = eval_windows(150, 60)
    assert len(windows) == 91 and windows[0] == (0, 60) and windows[-1] == (90, 150)
    assert windows[1] == (1, 61)
    assert eval_windows(40, 60) == [(0.0, 60.0)]
    assert eval_windows(60, 60) == [(0.0, 60.0)]
    assert eval_windows(150.7, 60) == eval_windows(150, 60)  # full windows only
    assert eval_windows(150, 60, stride_sec=60) == [(0, 60), (60, 120)]
    assert eval_windows(150, 0) == [(0.0, 150.0)]
    with pytest.raises(ValueError, match="eval_stride_sec must be positive"):
        eval_windows(150, 60, stride_sec=0)


def test_window_streams_cut_by_time():
    times = scene_times(np.arange(0, 150, 10), np.arange(10, 160, 10))  # 15 tokens, 0-150 s
    x = np.arange(15, dtype=np.float32)[:, None]  # (T, 1): token i holds i
    windows = video_windows([x], [times], 60.0, stride_sec=30.0)  # starts 0, 30, 60, 90
    assert [w[0][:, 0].tolist() for w in windows] == [
        list(range(0, 6)), list(range(3, 9)), list(range(6, 12)), list(range(9, 15))
    ]
    # A token straddling a boundary (55-65 s) belongs to both windows; 0 = the whole video.
    straddle = scene_times([0, 55, 65], [55, 65, 100])
    cut = window_streams([np.arange(3)], [straddle], 60.0, 120.0)
    assert cut[0].tolist() == [1, 2]
    assert len(video_windows([x], [times], 0.0)) == 1


class FirstSecondHead(torch.nn.Module):
    """Logits chosen by the start second of a window (its first token's value)."""

    def __init__(self, by_start):
        super().__init__()
        self.by_start = by_start

    def forward(self, x, mask):  # x (B, T, 1)
        return torch.stack([self.by_start(int(s)) for s in x[:, 0, 0]])  # (B, K)


def one_token_per_second(num_sec: int):
    x = np.arange(num_sec, dtype=np.float32)[:, None]  # token t holds t
    return [x], [scene_times(np.arange(num_sec), np.arange(1, num_sec + 1))]


def test_probabilities_not_logits_are_averaged():
    """Windows starting at 0, 1, 2 of a 62 s video give logits [3, 0], [0, 1], [0, 1]: mean
    logits pick class 0, mean probabilities (the official code's rule) class 1."""
    model = FirstSecondHead(lambda s: torch.tensor([3.0, 0.0]) if s == 0
                            else torch.tensor([0.0, 1.0]))
    x, t = one_token_per_second(62)
    got = predict_videos(model, [x], [t], task_kind="classification", window_sec=60.0)
    logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    probs = torch.softmax(logits, 1).mean(0)
    np.testing.assert_allclose(got[0], probs.log().numpy(), rtol=1e-6)
    assert got[0].argmax() == 1 and logits.mean(0).argmax() == 0
    multi = predict_videos(model, [x], [t], task_kind="multilabel", window_sec=60.0)
    np.testing.assert_allclose(torch.sigmoid(torch.from_numpy(multi[0])).numpy(),
                               torch.sigmoid(logits).mean(0).numpy(), rtol=1e-6)
    values = predict_videos(model, [x], [t], task_kind="regression", window_sec=60.0)
    np.testing.assert_allclose(values[0], logits.mean(0).numpy(), rtol=1e-6)


def test_windowed_prediction_equals_direct_computation():
    torch.manual_seed(0)
    model = create_head("mean", in_dim=4, num_outputs=3, hidden_dim=8, dropout=0.0).eval()
    rng = np.random.default_rng(0)
    videos, times = [], []
    for num_tokens, step in [(30, 5.0), (7, 20.0), (3, 10.0)]:  # 150 s, 140 s, 30 s videos
        videos.append([rng.normal(size=(num_tokens, 4)).astype(np.float32)])
        starts = np.arange(num_tokens) * step
        times.append([scene_times(starts, starts + step)])
    got = predict_videos(model, videos, times, task_kind="classification", window_sec=60.0,
                         batch_size=7)

    expected = []
    for (x,), (t,) in zip(videos, times):
        duration = t[:, 1].max()
        starts = np.arange(0, duration - 60 + 1e-9, 1.0) if duration > 60 else [None]
        probs = []
        for lo in starts:
            keep = np.ones(len(t), bool) if lo is None else (t[:, 0] < lo + 60) & (t[:, 1] > lo)
            xw = torch.from_numpy(x[keep])[None]  # (1, T_w, D)
            with torch.no_grad():
                logits = model(xw, torch.ones(xw.shape[:2], dtype=torch.bool))[0]
            probs.append(torch.softmax(logits.double(), 0).numpy())
        mean = np.mean(probs, axis=0)
        expected.append(np.log(mean) if len(probs) > 1 else np.log(probs[0]))
    assert len(np.arange(0, 150 - 60 + 1e-9, 1.0)) == 91
    log_softmax = got - np.log(np.exp(got).sum(1, keepdims=True))  # one window: logits as-is
    np.testing.assert_allclose(log_softmax, np.stack(expected), rtol=1e-5, atol=1e-6)
    # Whole-video prediction differs for the long videos: the windows matter.
    whole = predict_videos(model, videos, times, task_kind="classification", window_sec=0.0)
    assert not np.allclose(whole[0], got[0]) and np.allclose(whole[2], got[2], atol=1e-6)


def test_random_windows_are_seeded_and_at_most_window_long():
    times = [[scene_times(np.arange(0, 300, 2.0), np.arange(2, 302, 2.0))]]  # 150 tokens, 300 s
    x = [[np.arange(150, dtype=np.float32)[:, None]]]

    def draws(seed):
        data = RandomWindowDataset(x, times, np.zeros(1, np.int64), window_sec=60.0, seed=seed)
        return [data[0][0][0][:, 0].numpy() for _ in range(5)]

    first, again, other = draws(0), draws(0), draws(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    for window in first:
        assert 30 <= len(window) <= 31  # 60 s of 2 s tokens (+1 straddling the start)
        assert np.all(np.diff(window) == 1)  # a contiguous run of tokens
    assert len({int(w[0]) for w in first}) > 1  # different starts


# ------------------------------------------------------------------------------ configs


def test_config_precedence_and_unknown_keys(tmp_path):
    from heads.config_files import build_config

    config = build_config({"task": "genre", "head": "vis4mer", "dataset": "lvu"})
    assert config.features == ("vit_l16_in21k",)  # ViS4mer's features (jobs/extract_lvu.yaml)
    assert config.plan == "fps" and config.window_sec == 60
    assert len(config.config_files) == 1  # vis4mer.toml has no table for lvu
    assert config.config_files[0].endswith("vis4mer.toml")

    user = tmp_path / "mine.toml"
    user.write_text('head = "vis4mer"\nlr = 0.01\nepochs = 7\n[head_kwargs]\nd_model = 64\n')
    config = build_config({"task": "genre", "epochs": 3, "head_kwargs": {"dropout": 0.0}},
                          config_file=user)
    assert (config.lr, config.epochs, config.plan) == (0.01, 3, "fps")  # flag beats file
    assert config.head_kwargs == {"d_model": 64, "dropout": 0.0}

    user.write_text("lr = 0.01\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"mine.toml: unknown key\(s\) learning_rate"):
        build_config({"task": "genre"}, config_file=user)


def test_dataset_table_applies_to_its_dataset_only(tmp_path):
    from heads.config_files import build_config

    paper = build_config({"task": "genre", "head": "vis4mer", "dataset": "lvu"})
    demo = build_config({"task": "genre", "head": "vis4mer", "dataset": "demo"})
    assert paper.features == ("vit_l16_in21k",) and paper.head_kwargs == {}
    assert demo.features == ("vit_b16",) and demo.head_kwargs == {"d_model": 128}
    assert demo.epochs < paper.epochs
    # Keys the table leaves out keep the paper's values.
    assert (demo.plan, demo.window_sec, demo.lr) == (paper.plan, paper.window_sec, paper.lr)
    assert demo.config_files[1].endswith("vis4mer.toml [datasets.demo]")
    assert build_config({"task": "genre", "head": "vis4mer"}).features == ("vit_b16",)  # demo

    # The user's file and the flags go over the table; the file's own table over its top level.
    user = tmp_path / "mine.toml"
    user.write_text("epochs = 3\n[head_kwargs]\nd_model = 64\n"
                    "[datasets.demo]\nlr = 0.01\n[datasets.lvu]\nlr = 0.02\n")
    config = build_config({"task": "genre", "head": "vis4mer", "dataset": "demo",
                           "features": ["vit_l16"], "batch_size": 2}, config_file=user)
    assert config.features == ("vit_l16",) and config.head_kwargs == {"d_model": 64}
    assert (config.epochs, config.lr, config.batch_size) == (3, 0.01, 2)
    assert config.config_files[2:] == (str(user), f"{user} [datasets.demo]")


def test_unknown_key_in_a_dataset_table_names_the_file(tmp_path, monkeypatch):
    import heads.config_files as config_files

    monkeypatch.setattr(config_files, "CONFIG_DIR", tmp_path)
    (tmp_path / "mean.toml").write_text('features = ["resnet18"]\n[datasets.other]\nepoch = 2\n')
    # Checked whatever the run's dataset: a typo in any table is found at once.
    with pytest.raises(ValueError, match=r"mean.toml, table \[datasets.other\]: unknown key\(s\) "
                       r"epoch;"):
        config_files.build_config({"task": "genre", "head": "mean", "dataset": "demo"})
    (tmp_path / "mean.toml").write_text('[datasets.demo]\nhead = "stan"\n')
    with pytest.raises(ValueError, match=r"mean.toml, table \[datasets.demo\]: head cannot"):
        config_files.build_config({"task": "genre", "head": "mean"})
    (tmp_path / "mean.toml").write_text("datasets = 3\n")
    with pytest.raises(ValueError, match=r"mean.toml: `datasets` must hold tables"):
        config_files.build_config({"task": "genre", "head": "mean"})


def test_every_head_config_file_is_valid():
    from heads.config_files import CONFIG_DIR, read_toml
    from heads.models import list_heads

    names = {p.stem for p in CONFIG_DIR.glob("*.toml")}
    assert names == set(list_heads())
    for name in names:
        assert read_toml(CONFIG_DIR / f"{name}.toml")["features"]


# ----------------------------------------------------------------- runs on the toy store


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from test_heads_train import write_toy_store

    root = tmp_path_factory.mktemp("exp")
    write_toy_store(root / "store")
    return root


def toy_config(toy: Path, **overrides):
    from heads.train import TrainConfig
    from test_heads_train import DATASET, MEAN_SMALL

    fields = dict(dataset=DATASET, task="genre", head="mean", store=str(toy / "store"),
                  runs_dir=str(toy / "runs"), epochs=4, batch_size=4, lr=2e-3,
                  head_kwargs=MEAN_SMALL, features=("resnet18",), plan="scene")
    return TrainConfig(**{**fields, **overrides})


def test_dataset_table_reaches_the_run_directory_and_the_sweep(toy, monkeypatch, tmp_path):
    import heads.config_files as config_files
    from heads.experiments import plan_sweep
    from heads.train import train
    from test_heads_train import DATASET, MEAN_SMALL, toy_catalog

    monkeypatch.setattr(config_files, "CONFIG_DIR", tmp_path)
    (tmp_path / "mean.toml").write_text(
        'features = ["no_such_backbone"]\nplan = "scene"\nepochs = 50\nbatch_size = 4\n'
        f'[datasets.{DATASET}]\nfeatures = ["resnet18"]\nepochs = 2\n'
        f"[datasets.{DATASET}.head_kwargs]\n"
        + "".join(f"{k} = {v}\n" for k, v in MEAN_SMALL.items())
    )
    given = {"task": "genre", "head": "mean", "dataset": DATASET, "store": str(toy / "store"),
             "runs_dir": str(tmp_path / "runs")}
    result = train(config_files.build_config(given), catalog=toy_catalog(), log=lambda _: None)
    saved = json.loads((Path(result["run_dir"]) / "config.json").read_text())["config"]
    assert saved["features"] == ["resnet18"] and saved["epochs"] == 2
    assert saved["head_kwargs"] == MEAN_SMALL and saved["batch_size"] == 4
    assert saved["config_files"][-1] == f"{tmp_path / 'mean.toml'} [datasets.{DATASET}]"
    assert len(result["history"]) == 2  # two epochs trained

    cells, skipped = plan_sweep(toy_catalog(), heads=["mean"], tasks=["genre"], seeds=[0],
                                overrides={"mean": {k: v for k, v in given.items()
                                                    if k not in ("task", "head")}})
    assert not skipped and cells[0]["config"]["epochs"] == 2
    # Another dataset gets the file's top level (features the store does not hold).
    cells, skipped = plan_sweep(toy_catalog(name="other"), heads=["mean"], tasks=["genre"],
                                seeds=[0], overrides={"mean": {"dataset": "other",
                                                               "store": str(toy / "store")}})
    assert not cells and "backbone 'no_such_backbone'" in skipped[0]["reason"]


def test_windowed_training_reproduces_its_metrics(toy):
    from heads.evaluate import evaluate_run
    from heads.train import train
    from test_heads_train import toy_catalog

    result = train(toy_config(toy, window_sec=8.0), catalog=toy_catalog(), log=lambda _: None)
    again = evaluate_run(result["run_dir"], catalog=toy_catalog(), log=lambda _: None)
    assert again["metrics"] == result["metrics"]
    assert again["details"] == json.loads(json.dumps(result["details"]))


def test_seeds_report_mean_and_standard_error(toy):
    from heads.experiments import format_seed_summary, train_seeds
    from test_heads_train import toy_catalog

    summary = train_seeds(toy_config(toy), [0, 1, 2], catalog=toy_catalog(), log=lambda _: None)
    values = [r["metrics"]["test"]["top1"] for r in summary["results"]]
    cell = summary["metrics"]["test"]["top1"]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(np.mean(values))
    assert cell["se"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(3))
    assert "±" in format_seed_summary(summary) or len(set(values)) == 1


@pytest.fixture(scope="module")
def toy_run(toy):
    from heads.train import train
    from test_heads_train import toy_catalog

    config = toy_config(toy, head="temporal_transformer", runs_dir=str(toy / "tt_runs"),
                        head_kwargs={"d_model": 16, "num_heads": 2, "num_layers": 1,
                                     "ff_dim": 32, "dropout": 0.0})
    return Path(train(config, catalog=toy_catalog(), log=lambda _: None)["run_dir"])


@pytest.mark.parametrize("flags, expected", [([], [0, 1, 2, 3, 4]), (["--seeds", "1"], None),
                                             (["--seeds", "2", "--seed", "7"], [7, 8])])
def test_heads_train_defaults_to_the_datasets_seed_protocol(monkeypatch, flags, expected):
    """A catalog declaring `protocol_seeds` (LVU: 5) gets that many seeds unless --seeds says."""
    import heads.experiments
    import heads.train
    from catalogs.base import Catalog
    from heads.cli import app
    from heads.config import TrainConfig

    calls = []
    videos = pl.DataFrame(schema={c: pl.String for c in ("video_id", "path", "split")})
    protocol = Catalog(name="p", root=Path("."), videos=videos,
                       tasks={}, meta={"protocol_seeds": 5})
    monkeypatch.setattr(TrainConfig, "open_catalog", lambda self: protocol)
    monkeypatch.setattr(heads.train, "train", lambda config, log, address: calls.append(config.seed))
    monkeypatch.setattr(heads.experiments, "train_seeds",
                        lambda config, seeds, log, address: calls.append(list(seeds)) or {})
    monkeypatch.setattr(heads.experiments, "format_seed_summary", lambda summary: "")
    result = CliRunner().invoke(app, ["train", "--head", "mean", "--task", "t", *flags])
    assert result.exit_code == 0, result.output
    assert calls == ([expected] if expected else [0])
    assert ("5 seeds, the dataset's protocol" in result.output) == (not flags)


def test_cli_eval_predict_runs_explain(toy, toy_run, monkeypatch, tmp_path):
    import catalogs
    from test_heads_train import toy_catalog

    monkeypatch.setattr(catalogs, "get_catalog", lambda name, **kw: toy_catalog())
    runner = CliRunner()
    saved = json.loads((toy_run / "metrics.json").read_text())

    result = runner.invoke(app, ["eval", str(toy_run)])
    assert result.exit_code == 0, result.output
    assert f"{saved['metrics']['test']['top1']:.4f}" in result.output

    out = tmp_path / "pred.parquet"
    result = runner.invoke(app, ["predict", str(toy_run), "--video", "toy/v20",
                                 "--video", "toy/v01", "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(out)
    assert frame["video_id"].to_list() == ["toy/v20", "toy/v01"]
    stored = pl.read_parquet(toy_run / "predictions.parquet")
    expected = stored.filter(pl.col("video_id") == "toy/v20")["outputs"].to_list()[0]
    np.testing.assert_allclose(frame["outputs"].to_list()[0], expected, rtol=1e-5)

    result = runner.invoke(app, ["predict", str(toy_run), "--video", "toy/nope"])
    assert result.exit_code != 0 and "toy/nope" in result.output

    result = runner.invoke(app, ["runs", "--runs-dir", str(toy_run.parent)])
    assert result.exit_code == 0, result.output
    assert toy_run.name in result.output and "temporal_transformer" in result.output

    png = tmp_path / "explain.png"
    result = runner.invoke(app, ["explain", str(toy_run), "--video", "toy/v03",
                                 "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG" and "most attended tokens" in result.output


def test_explain_weights_sum_with_cls_to_one(toy_run):
    from heads.explain import explain_video

    table, _ = explain_video(toy_run, "toy/v03")
    assert 0 < table["weight"].sum() <= 1 + 1e-6
    assert table["start_sec"].to_list() == sorted(table["start_sec"].to_list())


def test_explain_stan_shows_each_streams_cls_attention(toy):
    from heads.explain import explain_video
    from heads.train import train
    from test_heads_train import toy_catalog

    config = toy_config(toy, head="stan", features=("resnet18", "r2plus1d_18"), epochs=1,
                        runs_dir=str(toy / "stan_runs"),
                        head_kwargs={"d_model": 16, "num_heads": 2, "num_layers": 2,
                                     "ff_dim": 32, "dropout": 0.0})
    run_dir = train(config, catalog=toy_catalog(), log=lambda _: None)["run_dir"]
    table, png = explain_video(run_dir, "toy/v03")
    assert png.exists() and table["stream"].unique().sort().to_list() == ["r2plus1d_18", "resnet18"]
    for stream in ("resnet18", "r2plus1d_18"):
        weights = table.filter(pl.col("stream") == stream)["weight"]
        assert 0 < weights.sum() <= 1 + 1e-6 and (weights > 0).all()


def test_longformer_run_reevaluates_and_explains_with_its_token_times(toy):
    """A VTN run (frame-index positions: the token times ride as one more stream) gives the
    same metrics when re-evaluated from its checkpoint, and `heads explain` works on it."""
    from heads.evaluate import evaluate_run
    from heads.explain import explain_video
    from heads.train import train
    from test_heads_train import toy_catalog

    config = toy_config(toy, head="longformer", epochs=1, runs_dir=str(toy / "vtn_runs"),
                        train_clip_sec=4.0, train_clip_frames=3,
                        head_kwargs={"num_heads": 2, "num_layers": 1, "ff_dim": 16})
    result = train(config, catalog=toy_catalog(), log=lambda _: None)
    again = evaluate_run(result["run_dir"], catalog=toy_catalog(), log=lambda _: None)
    assert again["metrics"] == result["metrics"]
    table, png = explain_video(result["run_dir"], "toy/v03")
    assert png.exists() and 0 < table["weight"].sum() <= 1 + 1e-6


def test_stan_cls_attention_ignores_padding():
    from heads.models import create_head

    torch.manual_seed(0)
    model = create_head("stan", in_dim=(8, 6), num_outputs=3, d_model=16, num_heads=2,
                        num_layers=2, ff_dim=32, dropout=0.0).eval()
    xs, xt = torch.randn(1, 5, 8), torch.randn(1, 4, 6)
    ms, mt = torch.ones(1, 5, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)
    ws, wt = model.cls_attention(xs, ms, xt, mt)
    pad_s = torch.cat([xs, torch.full((1, 3, 8), 7.0)], dim=1)  # 3 padded scenes
    pad_ms = torch.cat([ms, torch.zeros(1, 3, dtype=torch.bool)], dim=1)
    ws_pad, wt_pad = model.cls_attention(pad_s, pad_ms, xt, mt)
    assert torch.allclose(ws_pad[:, :5], ws, atol=1e-5) and (ws_pad[:, 5:] == 0).all()
    assert torch.allclose(wt_pad, wt, atol=1e-5)


def test_explain_refuses_a_head_without_cls(toy):
    from heads.explain import explain_video
    from heads.train import train
    from test_heads_train import toy_catalog

    result = train(toy_config(toy, epochs=1), catalog=toy_catalog(), log=lambda _: None)
    with pytest.raises(ValueError, match="no CLS token.*temporal_transformer"):
        explain_video(result["run_dir"], "toy/v03")


# ------------------------------------------------------------------------------- sweeps


def test_sweep_summary_with_a_skipped_head(toy, ray_local, tmp_path):
    from heads.experiments import parse_sets, run_sweep
    from test_heads_train import DATASET, MEAN_SMALL, toy_catalog

    heads = ["mean", "vis4mer"]  # vis4mer's vit_l16 features are not in the toy store
    overrides = parse_sets(["epochs=2", "batch_size=8",
                            f"mean.head_kwargs={json.dumps(MEAN_SMALL)}"], heads)
    overrides = {h: {**v, "dataset": DATASET, "store": str(toy / "store")}
                 for h, v in overrides.items()}
    lines = []
    table = run_sweep(toy_catalog(), heads=heads, tasks=["genre", "score"], seeds=[0, 1],
                      overrides=overrides, out_dir=tmp_path / "sweep", log=lines.append)
    rows = {(r["head"], r["task"]): r for r in table.iter_rows(named=True)}
    assert set(rows) == {("mean", "genre"), ("mean", "score"), ("vis4mer", "genre"),
                         ("vis4mer", "score")}
    assert rows[("mean", "genre")]["seeds"] == 2 and rows[("mean", "genre")]["status"] == "ok"
    assert rows[("mean", "score")]["metric"] == "mse"
    assert rows[("vis4mer", "genre")]["status"].startswith("skipped: no feature set")
    assert (tmp_path / "sweep" / "summary.csv").is_file()
    markdown = (tmp_path / "sweep" / "summary.md").read_text()
    assert markdown.startswith("| head | task |") and "skipped" in markdown
    assert len(list((tmp_path / "sweep" / "runs").iterdir())) == 4  # 1 head × 2 tasks × 2 seeds
    # The test value is the mean of the runs' own test metrics.
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    genre = [o["metrics"]["test"]["top1"] for o in sweep["outcomes"] if o["task"] == "genre"]
    assert rows[("mean", "genre")]["test_mean"] == pytest.approx(np.mean(genre))


def test_parse_sets_rejects_unknown_head():
    from heads.experiments import parse_sets

    assert parse_sets(["epochs=2", "stan.epochs=5"], ["mean", "stan"]) == {
        "mean": {"epochs": 2}, "stan": {"epochs": 5}}
    with pytest.raises(ValueError, match="head 'lstm' is not in the sweep"):
        parse_sets(["lstm.epochs=5"], ["mean"])


def test_mixed_precision_is_off_on_cpu(toy):
    from heads.runtime import mixed_precision
    from heads.train import train
    from test_heads_train import toy_catalog

    autocast, scaler = mixed_precision(torch.device("cpu"), "auto")
    assert autocast is None and not scaler.is_enabled()
    on = train(toy_config(toy, epochs=2, precision="auto"), catalog=toy_catalog(), log=lambda _: None)
    off = train(toy_config(toy, epochs=2, precision="fp32"), catalog=toy_catalog(), log=lambda _: None)
    assert on["history"] == off["history"]


@pytest.mark.gpu
def test_mixed_precision_on_cuda_trains(toy):
    from heads.train import train
    from test_heads_train import toy_catalog

    result = train(toy_config(toy, epochs=2, device="cuda"), catalog=toy_catalog(),
                   log=lambda _: None)
    assert all(np.isfinite(r["train_loss"]) for r in result["history"])


def test_heads_eval_uses_the_runs_windows_and_stride(toy, tmp_path):
    """A run trained and selected on 8 s windows at a 2 s stride is evaluated the same way
    again by `heads eval` (the stride is read from the run's config)."""
    from heads.evaluate import evaluate_run
    from heads.train import train
    from test_heads_train import toy_catalog

    config = toy_config(toy, window_sec=8.0, eval_stride_sec=2.0, runs_dir=str(tmp_path))
    result = train(config, catalog=toy_catalog(), log=lambda _: None)
    saved = json.loads((Path(result["run_dir"]) / "config.json").read_text())
    assert saved["config"]["eval_stride_sec"] == 2.0
    again = evaluate_run(result["run_dir"], catalog=toy_catalog(), log=lambda _: None)
    assert again["metrics"] == result["metrics"]
    with pytest.raises(ValueError, match="--eval-stride-sec must be positive"):
        toy_config(toy, eval_stride_sec=0.0)


def test_lst_trains_with_vis4mers_optimiser():
    """ViS4mer §4.4: lr 1e-3, weight decay 0.01, batch 16 "for all of our experiments", the
    Long Sequence Transformer baseline included."""
    from heads.config_files import head_file_values

    keys = ("lr", "weight_decay", "batch_size", "epochs", "window_sec")
    vis4mer, lst = head_file_values("vis4mer", "lvu"), head_file_values("lst", "lvu")
    assert {k: lst[k] for k in keys} == {k: vis4mer[k] for k in keys}
    assert (vis4mer["lr"], vis4mer["weight_decay"], vis4mer["batch_size"]) == (1e-3, 0.01, 16)


def test_standardisation_can_be_switched_off(toy, tmp_path):
    """No paper standardises its features: `standardize = false` feeds them as stored."""
    import torch

    from heads.train import train
    from test_heads_train import toy_catalog

    runs = {}
    for flag in (True, False):
        config = toy_config(toy, standardize=flag, runs_dir=str(tmp_path / str(flag)))
        runs[flag] = train(config, catalog=toy_catalog(), log=lambda _: None)
    state = torch.load(Path(runs[False]["run_dir"]) / "checkpoint.pt", weights_only=True)
    assert all((m == 0).all() for m in state["standardizer"]["mean"])
    assert all((s == 1).all() for s in state["standardizer"]["std"])
    assert runs[True]["history"] != runs[False]["history"]

"""heads.data (feature resolution, labels, batching, standardisation) and heads.metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from catalogs.base import Task
from heads.data import FeatureDataset, Standardizer, collate, encode_labels, resolve_feature_sets
from heads.metrics import compute_metrics, majority_baseline, mean_average_precision
from pipeline.store import FeatureStore, fingerprint


def add_set(store: FeatureStore, backbone: str, *, dataset="toy", plan="scene", token_kind="pooled",
            weights="none"):
    spec = {"dataset": dataset, "backbone": backbone, "plan": plan, "weights": weights}
    name = f"{dataset}-{backbone}-{plan}-{fingerprint(spec)[:12]}"
    return store.create(name, spec=spec, token_kind=token_kind, dim=4, dtype="float16")


# ------------------------------------------------------------------------ resolve_feature_sets


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    store = FeatureStore(tmp_path / "store")
    add_set(store, "resnet18")
    add_set(store, "resnet18", plan="uniform")  # other plan: never matched for plan=scene
    add_set(store, "r2plus1d_18")
    add_set(store, "r2plus1d_18", weights="kinetics")  # two matches for r2plus1d_18
    add_set(store, "vit_b16", token_kind="patch")
    add_set(store, "resnet18", dataset="other")
    return store


def test_backbone_names_resolve_in_order(store):
    sets = resolve_feature_sets(store, "toy", ["resnet18"])
    assert [fs.spec["plan"] for fs in sets] == ["scene"]
    exact = [fs.name for fs in store.find(backbone="r2plus1d_18")]
    sets = resolve_feature_sets(store.root, "toy", ["resnet18", exact[0]])
    assert [fs.spec["backbone"] for fs in sets] == ["resnet18", "r2plus1d_18"]
    (uniform,) = resolve_feature_sets(store, "toy", ["resnet18"], plan="uniform")
    assert uniform.spec["plan"] == "uniform"


def test_missing_backbone_says_to_run_extract(store):
    with pytest.raises(ValueError, match="pipeline extract --dataset toy --backbone slowfast_r50"):
        resolve_feature_sets(store, "toy", ["slowfast_r50"])


def test_ambiguous_backbone_lists_the_candidates(store):
    with pytest.raises(ValueError, match="matches 2 feature sets.*exact feature-set name"):
        resolve_feature_sets(store, "toy", ["r2plus1d_18"])


def test_preferred_spec_fields_break_ties(store):
    (kinetics,) = resolve_feature_sets(store, "toy", ["r2plus1d_18"], prefer={"weights": "kinetics"})
    assert kinetics.spec["weights"] == "kinetics"
    with pytest.raises(ValueError, match="matches 2 feature sets"):
        resolve_feature_sets(store, "toy", ["r2plus1d_18"], prefer={"weights": "imagenet"})


def test_exact_name_of_another_dataset_is_rejected(store):
    (other,) = store.find(dataset="other")
    with pytest.raises(ValueError, match="extracted from dataset 'other'"):
        resolve_feature_sets(store, "toy", [other.name])


def test_patch_tokens_are_rejected(store):
    with pytest.raises(ValueError, match="'patch' tokens"):
        resolve_feature_sets(store, "toy", ["vit_b16"])


# ------------------------------------------------------------------------------------ labels


def test_encode_labels_per_kind():
    genre = Task("genre", "classification", ("a", "b", "c"))
    np.testing.assert_array_equal(encode_labels(genre, ["x", "y"], ["c", "a"]), [2, 0])
    tags = Task("tags", "multilabel", ("a", "b", "c"))
    multi_hot = encode_labels(tags, ["x", "y"], [["a", "c"], []])
    assert multi_hot.dtype == np.float32
    np.testing.assert_array_equal(multi_hot, [[1, 0, 1], [0, 0, 0]])
    score = encode_labels(Task("score", "regression"), ["x", "y"], [1.5, -2.0])
    assert score.shape == (2, 1) and score.dtype == np.float32


def test_unknown_class_names_the_video():
    genre = Task("genre", "classification", ("a", "b"))
    with pytest.raises(ValueError, match="video 'clip/7'.*'z'"):
        encode_labels(genre, ["clip/7"], ["z"])


# ---------------------------------------------------------------------- batching, scaling


def test_collate_pads_each_stream_and_builds_masks():
    videos = [
        [np.ones((3, 4), np.float32), np.ones((1, 2), np.float32)],
        [np.ones((1, 4), np.float32), np.ones((5, 2), np.float32)],
    ]
    dataset = FeatureDataset(videos, np.array([0, 1]))
    (x_0, mask_0, x_1, mask_1), targets = collate([dataset[0], dataset[1]])
    assert x_0.shape == (2, 3, 4) and x_1.shape == (2, 5, 2)
    assert mask_0.tolist() == [[True, True, True], [True, False, False]]
    assert mask_1.sum(dim=1).tolist() == [1, 5]
    assert x_0[1, 1:].abs().sum() == 0
    assert targets.dtype == torch.int64 and targets.tolist() == [0, 1]


def test_standardizer_uses_train_tokens_and_keeps_constant_dims():
    train = [[np.array([[0.0, 5.0], [2.0, 5.0]], np.float32)], [np.array([[4.0, 5.0]], np.float32)]]
    standardizer = Standardizer.fit(train)
    np.testing.assert_allclose(standardizer.mean[0], [2.0, 5.0])
    np.testing.assert_allclose(standardizer.std[0], [np.sqrt(8 / 3), 1.0], rtol=1e-6)
    (scaled,) = standardizer.apply([np.array([[2.0, 7.0]], np.float32)])
    np.testing.assert_allclose(scaled, [[0.0, 2.0]])
    restored = Standardizer.from_state_dict(standardizer.state_dict())
    np.testing.assert_array_equal(restored.std[0], standardizer.std[0])


# ----------------------------------------------------------------------------------- metrics


def test_top1_and_mse():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    assert compute_metrics("classification", logits, np.array([0, 1, 1])) == {"top1": 2 / 3}
    assert compute_metrics("regression", np.array([[1.0], [3.0]]), np.array([[0.0], [1.0]])) == {
        "mse": 2.5
    }
    assert compute_metrics("classification", np.zeros((0, 2)), np.zeros(0, np.int64)) == {}


def test_map_is_weighted_by_class_frequency():
    targets = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.4, 0.3, 0.0], [0.3, 0.4, 0.0]])
    # class 0: positives rank 1, 2 and 4 → AP = (1/1 + 2/2 + 3/4) / 3;
    # class 1: positives rank 1 and 2 → AP = 1; class 2 has no positive and is left out.
    ap_0, ap_1 = (1 + 1 + 3 / 4) / 3, 1.0
    result = mean_average_precision(scores, targets)
    assert result["mAP"] == pytest.approx((3 * ap_0 + 2 * ap_1) / 5)
    assert result["mAP_macro"] == pytest.approx((ap_0 + ap_1) / 2)
    assert set(compute_metrics("multilabel", scores, targets)) == {
        "mAP", "mAP_macro", "precision", "recall", "f1"
    }


def test_majority_baseline_per_kind():
    train_y = np.array([2, 2, 1, 0])
    assert majority_baseline(train_y, np.array([2, 1, 2, 2]), "classification") == {"top1": 0.75}
    train_tags = np.array([[1, 0], [1, 1], [1, 0], [0, 0]], np.float32)
    eval_tags = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    prior = majority_baseline(train_tags, eval_tags, "multilabel")
    # Constant scores: each class's AP is its positive rate (2/3 for both classes).
    assert prior["mAP"] == pytest.approx(2 / 3)
    train_score = np.array([[1.0], [3.0]], np.float32)
    assert majority_baseline(train_score, np.array([[2.0], [4.0]]), "regression") == {"mse": 2.0}

"""Metrics per task kind, and the majority baseline they are read against.

- classification: top-1 accuracy, top-5 when there are more than 5 classes, and a confusion
  matrix (:func:`details`);
- multilabel: mAP weighted by class frequency (as reported in STAN, Fish et al. 2022, Tab. 3),
  macro mAP over the classes present, weighted precision / recall / F1 at probability 0.5, and
  a per-class AP table (STAN Tab. 3's rows; :func:`details`);
- regression: mean squared error.

Computed with scikit-learn (``top_k_accuracy_score``, ``average_precision_score``,
``precision_recall_fscore_support``, ``confusion_matrix``, ``mean_squared_error``).

All functions take numpy arrays: ``outputs`` are what a head returns (logits, or the regression
value in target units), ``targets`` are the encoded labels of ``heads.data``.
"""

from __future__ import annotations

import numpy as np

# Metric used for checkpoint selection per task kind, and whether larger is better.
PRIMARY_METRIC: dict[str, tuple[str, bool]] = {
    "classification": ("top1", True),
    "multilabel": ("mAP", True),
    "regression": ("mse", False),
}


def top1(logits: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of videos whose highest logit is the true class.

    Args:
        logits: (N, K).
        targets: (N,) class indices.
    """
    return float(np.mean(np.argmax(logits, axis=1) == targets))


def top_k(logits: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of videos whose true class is among the ``k`` highest logits.

    Args:
        logits: (N, K) with K > k.
        targets: (N,) class indices.
    """
    from sklearn.metrics import top_k_accuracy_score

    num_classes = logits.shape[1]
    return float(
        top_k_accuracy_score(targets, logits, k=k, labels=np.arange(num_classes))
    )


def per_class_ap(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    """Average precision of each class (STAN Tab. 3 reports these per genre).

    Args:
        scores: (N, K) any monotone score.
        targets: (N, K) multi-hot {0, 1}.

    Returns:
        K floats; NaN for a class without any positive (its AP is undefined).
    """
    from sklearn.metrics import average_precision_score

    return [
        float(average_precision_score(targets[:, k], scores[:, k]))
        if targets[:, k].sum() > 0
        else float("nan")
        for k in range(targets.shape[1])
    ]


def confusion(logits: np.ndarray, targets: np.ndarray) -> list[list[int]]:
    """Confusion matrix, rows = true class, columns = predicted (arg-max) class.

    Args:
        logits: (N, K).
        targets: (N,) class indices.

    Returns:
        (K, K) counts as nested lists (JSON-ready).
    """
    from sklearn.metrics import confusion_matrix

    num_classes = logits.shape[1]
    matrix = confusion_matrix(
        targets, np.argmax(logits, axis=1), labels=np.arange(num_classes)
    )
    return matrix.tolist()


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Multilabel mean average precision.

    Args:
        scores: (N, K) any monotone score (logits or probabilities).
        targets: (N, K) multi-hot {0, 1}.

    Returns:
        ``mAP``: per-class AP averaged with weights = number of positives per class
        (scikit-learn ``average="weighted"``, STAN Tab. 3); ``mAP_macro``: plain mean over the
        classes with at least one positive (AP is undefined for the others). NaN when no class
        has a positive.
    """
    from sklearn.metrics import average_precision_score

    present = targets.sum(axis=0) > 0  # (K,)
    if not present.any():
        return {"mAP": float("nan"), "mAP_macro": float("nan")}
    targets, scores = targets[:, present], scores[:, present]
    return {
        "mAP": float(average_precision_score(targets, scores, average="weighted")),
        "mAP_macro": float(average_precision_score(targets, scores, average="macro")),
    }


def mse(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean squared error; ``outputs`` and ``targets`` of the same shape, e.g. (N, 1)."""
    from sklearn.metrics import mean_squared_error

    return float(mean_squared_error(targets, outputs))


def compute_metrics(kind: str, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """All metrics of a task kind.

    Args:
        kind: ``classification``, ``multilabel`` or ``regression``.
        outputs: (N, K) logits, or (N, 1) regression values in target units.
        targets: (N,) class indices, (N, K) multi-hot, or (N, 1) values.

    Returns:
        ``{"top1"}`` (plus ``top5`` when K > 5), ``{"mAP", "mAP_macro", "precision", "recall",
        "f1"}`` or ``{"mse"}``; an empty dict when N is 0.

    Raises:
        ValueError: unknown ``kind``.
    """
    outputs, targets = np.asarray(outputs, dtype=np.float64), np.asarray(targets)
    if kind not in PRIMARY_METRIC:
        raise ValueError(f"unknown task kind {kind!r}; valid: {', '.join(PRIMARY_METRIC)}")
    if len(targets) == 0:
        return {}
    if kind == "classification":
        result = {"top1": top1(outputs, targets)}
        if outputs.shape[1] > 5:
            result["top5"] = top_k(outputs, targets, 5)
        return result
    if kind == "regression":
        return {"mse": mse(outputs, targets.astype(np.float64))}
    from sklearn.metrics import precision_recall_fscore_support

    result = mean_average_precision(outputs, targets)
    predicted = (outputs > 0).astype(np.int64)  # logit > 0 ⇔ probability > 0.5
    precision, recall, f1, _ = precision_recall_fscore_support(
        targets.astype(np.int64), predicted, average="weighted", zero_division=0
    )
    result.update(precision=float(precision), recall=float(recall), f1=float(f1))
    return result


def details(kind: str, outputs: np.ndarray, targets: np.ndarray, classes) -> dict:
    """Tables that go next to the scalar metrics in ``metrics.json``.

    Args:
        kind: Task kind.
        outputs: As in :func:`compute_metrics`.
        targets: As in :func:`compute_metrics`.
        classes: Class names, in output order.

    Returns:
        classification: ``{"confusion": {"classes": [...], "matrix": (K, K)}}`` (rows true);
        multilabel: ``{"per_class": [{"class", "ap", "num_positives"}, ...]}``;
        regression or N = 0: ``{}``.
    """
    outputs, targets = np.asarray(outputs, dtype=np.float64), np.asarray(targets)
    if len(targets) == 0 or kind == "regression":
        return {}
    if kind == "classification":
        return {"confusion": {"classes": list(classes), "matrix": confusion(outputs, targets)}}
    aps = per_class_ap(outputs, targets)
    positives = targets.sum(axis=0).astype(int).tolist()
    return {
        "per_class": [
            {"class": name, "ap": ap, "num_positives": n}
            for name, ap, n in zip(classes, aps, positives)
        ]
    }


def majority_baseline(
    train_targets: np.ndarray, eval_targets: np.ndarray, kind: str
) -> dict[str, float]:
    """Metrics of a constant predictor fitted on the train split, to read a head's metrics against.

    - classification: always the most frequent train class → majority-class top-1;
    - multilabel: every class scored with its train frequency (the prior) → prior-prediction mAP
      (ties everywhere, so each class's AP is its positive rate); P/R/F1 threshold the prior at 0.5;
    - regression: always the train mean → train-mean MSE.

    Args:
        train_targets: Encoded train labels, as in :func:`compute_metrics`.
        eval_targets: Encoded labels of the split evaluated.
        kind: Task kind.

    Returns:
        The same keys as :func:`compute_metrics` for ``kind``.
    """
    train_targets, eval_targets = np.asarray(train_targets), np.asarray(eval_targets)
    num_eval = len(eval_targets)
    if num_eval == 0:
        return {}
    if kind == "classification":
        num_classes = int(max(train_targets.max(), eval_targets.max())) + 1
        majority = int(np.bincount(train_targets, minlength=num_classes).argmax())
        outputs = np.zeros((num_eval, num_classes))
        outputs[:, majority] = 1.0
    elif kind == "multilabel":
        prior = np.clip(train_targets.mean(axis=0), 1e-6, 1 - 1e-6)  # (K,)
        outputs = np.tile(np.log(prior / (1 - prior)), (num_eval, 1))  # prior as logits
    else:
        outputs = np.tile(train_targets.mean(axis=0), (num_eval, 1))
    return compute_metrics(kind, outputs, eval_targets)

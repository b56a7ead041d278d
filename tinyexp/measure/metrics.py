"""Task metrics on a ``predict`` callable (numpy in, numpy out).

Taking a plain callable lets the same code score a PyTorch model, a quantized model and an
ONNX Runtime session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    recall_score,
    roc_auc_score,
)

from tinyexp.data.windows import AnomalySegment

Predict = Callable[[np.ndarray], np.ndarray]


def _residuals(
    predict: Predict, windows: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-window SKAB residual and per-window mean squared error, computed in batches."""
    scores, sq_errors = [], []
    for i in range(0, len(windows), batch_size):
        x = np.asarray(windows[i : i + batch_size], dtype=np.float32)
        diff = (x - np.asarray(predict(x)).reshape(x.shape)).astype(np.float64)
        scores.append(np.abs(diff).mean(axis=1).sum(axis=1))
        sq_errors.append((diff**2).mean(axis=(1, 2)))
    if not scores:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(scores), np.concatenate(sq_errors)


def window_scores(predict: Predict, windows: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """SKAB residual per window: sum over channels of the mean over time of |x - predict(x)|.

    Args:
        predict: maps (B, W, C) float32 windows to reconstructions of the same shape.
        windows: (N, W, C) windows.
        batch_size: windows per ``predict`` call.

    Returns:
        (N,) float64 scores.
    """
    return _residuals(predict, windows, batch_size)[0]


def _window_min(scores: np.ndarray, window: int) -> np.ndarray:
    """Point score ``min(scores[t-W+1:t])`` for t in range(W-1, len(scores)-W+1)."""
    count = len(scores) - 2 * window + 2
    if count <= 0:
        return np.zeros(0)
    view = np.lib.stride_tricks.sliding_window_view(scores, window - 1)
    return view[:count].min(axis=1)


def _rate(num: int, den: int) -> float:
    return float(num / den) if den else 0.0


def anomaly_metrics(
    predict: Predict,
    segments: Sequence[AnomalySegment],
    window: int,
    quantile: float = 0.999,
    threshold_scale: float = 4 / 3,
    batch_size: int = 512,
) -> dict[str, float]:
    """Point-wise detection metrics following SKAB's Conv-AE notebook.

    Per segment: UCL = quantile(train window scores) * threshold_scale; test windows (stride 1,
    window i covers rows i..i+W-1) are over when their score exceeds UCL; point t, for t in
    range(W-1, len(scores)-W+1), is flagged when all of ``over[t-W+1:t]`` hold, other points
    are normal. Predictions and labels of all segments are pooled for F1 (anomaly positive),
    FAR = FP/(FP+TN) and MAR = FN/(FN+TP). ``roc_auc`` and ``pr_auc`` (average precision, the
    area under the precision-recall curve; anomalies are the rare positive class, so it is the
    stricter of the two) rank points by the threshold-free score ``min(scores[t-W+1:t])``
    (points out of range rank lowest). ``mse`` is the mean squared reconstruction error over
    test windows holding no anomalous point.

    Args:
        predict: maps (B, W, C) float32 windows to reconstructions.
        segments: evaluation series, each thresholded on its own training windows.
        window: window length W (at least 2).
        quantile: training-score quantile for the control limit.
        threshold_scale: multiplier of that quantile.
        batch_size: windows per ``predict`` call.

    Returns:
        Dict of python floats: mse, f1, far, mar, roc_auc and pr_auc (the last two nan when
        only one class is present).
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    preds, point_scores, labels = [], [], []
    clean_sq, clean_count = 0.0, 0
    for seg in segments:
        seg_labels = np.asarray(seg.labels).astype(np.int64).ravel()
        if len(seg.test) != len(seg_labels) - window + 1:
            raise ValueError(
                f"segment {seg.name}: {len(seg.test)} test windows do not match "
                f"{len(seg_labels)} labels with window {window}"
            )
        train_scores = window_scores(predict, seg.train, batch_size)
        ucl = np.quantile(train_scores, quantile) * threshold_scale
        scores, sq_errors = _residuals(predict, seg.test, batch_size)

        # Flagged iff the W-1 windows in the slice are all over, i.e. their minimum is over.
        seg_scores = np.full(len(seg_labels), -np.inf)
        inner = _window_min(scores, window)
        seg_scores[window - 1 : window - 1 + len(inner)] = inner
        preds.append((seg_scores > ucl).astype(np.int64))
        point_scores.append(seg_scores)
        labels.append(seg_labels)

        clean = ~np.lib.stride_tricks.sliding_window_view(seg_labels, window).any(axis=1)
        clean_sq += float(sq_errors[clean].sum())
        clean_count += int(clean.sum())

    y_pred, y_true = np.concatenate(preds), np.concatenate(labels)
    tp = int(np.sum((y_pred == 1) & (y_true == 1)))
    fp = int(np.sum((y_pred == 1) & (y_true == 0)))
    tn = int(np.sum((y_pred == 0) & (y_true == 0)))
    fn = int(np.sum((y_pred == 0) & (y_true == 1)))

    y_score = np.concatenate(point_scores)
    finite = np.isfinite(y_score)
    # Out-of-range points can never be flagged: rank them strictly below every real score.
    y_score[~finite] = (y_score[finite].min() - 1.0) if finite.any() else 0.0
    both = len(np.unique(y_true)) == 2
    roc_auc = float(roc_auc_score(y_true, y_score)) if both else float("nan")
    pr_auc = float(average_precision_score(y_true, y_score)) if both else float("nan")

    return {
        "mse": clean_sq / clean_count if clean_count else float("nan"),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "far": _rate(fp, fp + tn),
        "mar": _rate(fn, fn + tp),
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
    }


def classification_metrics(
    predict: Predict, x: np.ndarray, y: np.ndarray, batch_size: int = 512
) -> dict[str, float]:
    """Accuracy, macro recall and macro F1 of ``argmax(predict(x))``.

    Args:
        predict: maps a batch of inputs to logits (B, num_classes).
        x: inputs, batched along the first axis.
        y: (N,) integer labels.
        batch_size: inputs per ``predict`` call.

    Returns:
        Dict of python floats: accuracy, recall, f1.
    """
    logits = [np.asarray(predict(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    y_pred = np.concatenate(logits).argmax(axis=1)
    y = np.asarray(y)
    return {
        "accuracy": float(accuracy_score(y, y_pred)),
        "recall": float(recall_score(y, y_pred, average="macro", zero_division=0)),
        "f1": float(f1_score(y, y_pred, average="macro", zero_division=0)),
    }

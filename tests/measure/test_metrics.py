from __future__ import annotations

import math

import numpy as np
import pytest

from tinyexp.data.windows import AnomalySegment, make_windows
from tinyexp.measure.metrics import anomaly_metrics, classification_metrics, window_scores


def identity(x: np.ndarray) -> np.ndarray:
    return x.copy()


def zeros(x: np.ndarray) -> np.ndarray:
    return np.zeros_like(x)


def random_segment(seed: int = 0) -> tuple[AnomalySegment, int]:
    """Noise series (400 x 3) with anomalies on rows 100..149 and 250..299, window 10."""
    rng = np.random.default_rng(seed)
    window = 10
    labels = np.zeros(400, dtype=np.int64)
    labels[100:150] = labels[250:300] = 1
    series = rng.normal(size=(400, 3))
    train = make_windows(rng.normal(size=(200, 3)), window)
    return AnomalySegment("s", train, make_windows(series, window), labels), window


def test_window_scores_follow_skab_residual() -> None:
    x = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    # Sum over channels of the mean over time of |x - 0|, batched or not.
    expected = np.abs(x).mean(axis=1).sum(axis=1)
    np.testing.assert_allclose(window_scores(zeros, x, batch_size=1), expected)
    np.testing.assert_allclose(window_scores(identity, x), [0.0, 0.0])


def test_perfect_reconstructor() -> None:
    seg, window = random_segment()
    m = anomaly_metrics(identity, [seg], window)
    assert m["mse"] == 0.0
    # Zero residuals never exceed a zero control limit: nothing flagged.
    assert m["f1"] == 0.0 and m["far"] == 0.0 and m["mar"] == 1.0
    assert all(isinstance(v, float) for v in m.values())


def test_hand_checked_counts() -> None:
    # One channel, W=3, predict() = 0, so a window's score is the mean |x| over its rows.
    # Train windows are all zero -> UCL = 0, and a test window is "over" iff it holds a
    # nonzero row. Nonzero rows: 5,6,7 (labelled anomalous, labels 4..8) and 10,11 (normal).
    x = np.zeros((16, 1))
    x[[5, 6, 7, 10, 11]] = 1.0
    labels = np.zeros(16, dtype=np.int64)
    labels[4:9] = 1
    seg = AnomalySegment("toy", np.zeros((5, 3, 1), np.float32), make_windows(x, 3), labels)
    # 14 windows; window i covers rows i..i+2, so over = {3, ..., 11}.
    # Points t in range(2, 12) are flagged iff over[t-2] and over[t-1]  ->  t in {5, ..., 11}.
    # TP = {5,6,7,8} = 4, FN = {4} = 1, FP = {9,10,11} = 3, TN = 16 - 8 = 8.
    m = anomaly_metrics(zeros, [seg], window=3)
    assert m["far"] == pytest.approx(3 / 11)
    assert m["mar"] == pytest.approx(1 / 5)
    assert m["f1"] == pytest.approx(2 * 4 / (2 * 4 + 3 + 1))
    # Clean test windows (no labelled row among i..i+2) are i in {0, 1, 9, ..., 13} (7 of them);
    # squared error = mean x^2: windows 9, 10, 11 hold 2, 2, 1 ones of 3 rows, the rest none.
    assert m["mse"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 7)
    assert 0.0 <= m["roc_auc"] <= 1.0


def test_threshold_uses_quantile_and_scale() -> None:
    # Every train window scores 1 (residual 1 per row, one channel): UCL = 1 * 4/3.
    train = np.ones((50, 4, 1), np.float32)
    test_rows = np.r_[np.full(20, 1.3), np.full(20, 1.4)][:, None]
    labels = np.r_[np.zeros(20), np.ones(20)].astype(np.int64)
    seg = AnomalySegment("q", train, make_windows(test_rows, 4), labels)
    m = anomaly_metrics(zeros, [seg], window=4)
    # Windows fully inside the 1.4 part (score 1.4 > 1.333) are over; the 1.3 part is not.
    assert m["far"] == 0.0 and 0.0 < m["mar"] < 0.5
    lenient = anomaly_metrics(zeros, [seg], window=4, threshold_scale=1.0)
    assert lenient["far"] > 0.5  # UCL = 1: every window is over


def test_oracle_beats_random_predictor() -> None:
    seg, window = random_segment()
    bad = {w.tobytes() for i, w in enumerate(seg.test) if seg.labels[i : i + window].any()}

    def oracle(x: np.ndarray) -> np.ndarray:
        # Reconstructs perfectly except on windows that hold an anomalous point.
        err = np.array([w.tobytes() in bad for w in x], dtype=np.float32)
        return x + err[:, None, None]

    rng = np.random.default_rng(1)

    def random_predictor(x: np.ndarray) -> np.ndarray:
        return x + rng.exponential(size=(len(x), 1, 1)).astype(np.float32)

    good = anomaly_metrics(oracle, [seg], window)
    poor = anomaly_metrics(random_predictor, [seg], window)
    assert good["f1"] > 0.95 and good["roc_auc"] > 0.95
    assert good["f1"] > poor["f1"] + 0.5
    assert abs(poor["roc_auc"] - 0.5) < 0.2


def test_segments_pool_and_single_class_auc_is_nan() -> None:
    seg, window = random_segment()
    normal = AnomalySegment("n", seg.train, seg.test, np.zeros_like(seg.labels))
    m = anomaly_metrics(identity, [normal], window)
    assert math.isnan(m["roc_auc"]) and m["mar"] == 0.0
    assert m["f1"] == 0.0  # nothing to find, nothing flagged: no credit (sklearn's 0/0 -> 0)
    both = anomaly_metrics(identity, [seg, normal], window)
    assert both["mse"] == 0.0
    with pytest.raises(ValueError, match="do not match"):
        anomaly_metrics(identity, [seg], window + 1)


def test_classification_metrics() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    logits = np.eye(3)[pred]
    m = classification_metrics(lambda x: logits[x], np.arange(6), y, batch_size=4)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # Recall per class 1/2, 2/2, 1/2; precision 1/2, 2/3, 1/1 -> F1 1/2, 4/5, 2/3.
    assert m["recall"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert m["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_mse_is_the_squared_error_of_clean_windows_pooled_over_segments() -> None:
    first, window = random_segment(0)
    second, _ = random_segment(1)
    # A shorter second segment with one anomaly: the two hold different numbers of clean windows.
    labels = np.zeros(200, dtype=np.int64)
    labels[50:60] = 1
    second = AnomalySegment("t", second.train, second.test[:191], labels)

    def half(x: np.ndarray) -> np.ndarray:
        return 0.5 * x

    errors = []
    for seg in (first, second):
        clean = ~np.lib.stride_tricks.sliding_window_view(seg.labels, window).any(axis=1)
        errors.append(((0.5 * seg.test[clean].astype(np.float64)) ** 2).mean(axis=(1, 2)))
    expected = np.concatenate(errors).mean()  # every clean window weighs the same
    m = anomaly_metrics(half, [first, second], window)
    assert m["mse"] == pytest.approx(expected, rel=1e-6)
    assert m["mse"] != pytest.approx(np.mean([e.mean() for e in errors]), rel=1e-3)

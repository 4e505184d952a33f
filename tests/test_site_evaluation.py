"""The sites' metric set against independent references (scikit-learn), subgroups, and the
temperature-scaling recalibration."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from fedsite.evaluation import EvaluationError, evaluate_predictions, metric_set, softmax, temperature_scaling


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=2, max_value=4), st.integers(min_value=20, max_value=200), st.integers(0, 2**32 - 1))
def test_metrics_match_scikit_learn(classes: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    labels[:classes] = np.arange(classes)  # every class present
    logits = rng.normal(size=(n, classes)) + np.eye(classes)[labels] * rng.uniform(0, 3)
    logits[rng.random(n) < 0.2] = 0.0  # ties in the scores
    p = softmax(logits)
    metrics = metric_set(p, labels)
    assert metrics["accuracy"] == pytest.approx((p.argmax(1) == labels).mean())
    assert metrics["loss"] == pytest.approx(log_loss(labels, p, labels=list(range(classes))), rel=1e-9)
    expected = (
        roc_auc_score(labels, p[:, 1]) if classes == 2 else roc_auc_score(labels, p, multi_class="ovr", average="macro")
    )
    assert metrics["auroc"] == pytest.approx(expected, abs=1e-12)
    assert 0.0 <= metrics["ece"] <= 1.0


def test_subgroups_are_reported_and_small_cells_left_out() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    p = softmax(rng.normal(size=(300, 2)) + np.eye(2)[labels])
    sex = np.where(np.arange(300) < 200, "F", "M")
    sex[:5] = "X"  # a cell of 5: below the 10-example floor
    metrics = evaluate_predictions(p, labels, {"sex": sex})
    assert "accuracy[sex=F]" in metrics and "auroc[sex=M]" in metrics and not any("sex=X" in k for k in metrics)
    with pytest.raises(EvaluationError, match="at most 8"):
        evaluate_predictions(p, labels, {"age": np.arange(300) % 20})


def test_temperature_scaling_fixes_an_overconfident_model() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 2000)
    calibrated = rng.normal(size=(2000, 3)) + 1.5 * np.eye(3)[labels]
    overconfident = calibrated * 4.0
    t = temperature_scaling(overconfident, labels)
    assert 2.5 < t < 6.0
    before, after = metric_set(softmax(overconfident), labels), metric_set(softmax(overconfident / t), labels)
    assert after["ece"] < before["ece"] / 2 and after["loss"] < before["loss"]
    assert after["accuracy"] == before["accuracy"]  # scaling never changes the prediction

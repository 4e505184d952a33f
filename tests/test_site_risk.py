"""A site's risk report: the fixed metric set from a torch model's logits (per subgroup), and
the recalibration's before/after measured on data the temperature was not fitted on."""

from __future__ import annotations

import numpy as np
import pytest

from attestfl.demo import make_model
from fedsite.evaluation import metric_set, softmax
from fedsite.risk import recalibration, risk_metrics, torch_evaluator, torch_recalibrator
from protocol.formulas import MAX_METRIC_NAME, MAX_METRICS


def test_recalibration_reports_before_and_after_on_the_other_half() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 1000)
    overconfident = 5.0 * (rng.normal(size=(1000, 2)) + 1.2 * np.eye(2)[labels])
    report = recalibration(overconfident, labels)
    assert report["recalibration.temperature"] > 2
    assert report["recalibration.ece_after"] < report["recalibration.ece_before"]
    assert report["recalibration.loss_after"] < report["recalibration.loss_before"]
    assert report["recalibration.accuracy_after"] == report["recalibration.accuracy_before"]
    assert recalibration(overconfident[:3], labels[:3]) == {}


def test_torch_evaluator_reports_the_fixed_set_per_subgroup_within_the_aggregators_limits() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 30)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    bands = {"radius": np.where(x[:, 1] < 0, "small", "large"), "age": np.where(x[:, 2] < 0, "<50", ">=50")}
    model = make_model()
    metrics, examples = torch_evaluator(x, y, bands)(model)
    assert examples == 120 and {"accuracy", "auroc", "loss", "ece"} <= set(metrics)
    assert {"accuracy[radius=small]", "auroc[age=>=50]", "ece[radius=large]"} <= set(metrics)
    recalibrated = torch_recalibrator(x, y)(model)
    assert len({**metrics, **recalibrated}) <= MAX_METRICS
    assert all(len(name) <= MAX_METRIC_NAME and name.isascii() for name in {**metrics, **recalibrated})
    import torch

    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    assert metrics["accuracy"] == pytest.approx(metric_set(softmax(logits.astype(np.float64)), y)["accuracy"])
    assert risk_metrics(logits, y)["loss"] == pytest.approx(metrics["loss"])

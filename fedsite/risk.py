"""A site's risk report for the global model: the fixed metric set of
:mod:`fedsite.evaluation` (accuracy, AUROC, loss, ECE, and the same per declared subgroup) on
held-out data, and after the last round a local recalibration (temperature scaling) reported
before/after. The global model is never changed: the temperature lives at the site.

    from fedsite.risk import torch_evaluator, torch_recalibrator
    trainer = TorchTrainer(model, train, torch_evaluator(x_test, y_test, {"sex": sex}),
                           recalibrate=torch_recalibrator(x_test, y_test))

Recalibration splits the held-out data in two (a fixed, seeded split): the temperature is
fitted on one half and the metrics before/after are measured on the other, so the "after"
is not measured on the data it was fitted to. Reported names (all within the aggregator's
limit of 64 metrics of at most 64 characters): ``recalibration.temperature``,
``recalibration.<metric>_before`` and ``recalibration.<metric>_after`` for loss, ece, accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedsite.evaluation import evaluate_predictions, metric_set, softmax, temperature_scaling

Metrics = dict[str, float]
RECALIBRATED = ("loss", "ece", "accuracy")
MIN_TEMPERATURE = 0.5


def _logits(model: Any, x: Any) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        tensor = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
        return np.asarray(model(tensor).detach().cpu().numpy(), dtype=np.float64)


def risk_metrics(logits: np.ndarray, labels: np.ndarray, subgroups: Mapping[str, np.ndarray] | None = None) -> Metrics:
    """The fixed metric set of a model's logits on held-out labels, per subgroup too."""
    return evaluate_predictions(softmax(np.asarray(logits, dtype=np.float64)), np.asarray(labels), subgroups)


def recalibration(logits: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> Metrics:
    """Temperature scaling fitted on one half of the held-out data, before/after on the other."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(labels.size)
    fit, check = order[: labels.size // 2], order[labels.size // 2 :]
    if fit.size < 2 or check.size < 2:
        return {}
    # searched over [0.5, 20]: sharpening further only fits the noise of a small, separable half
    temperature = temperature_scaling(logits[fit], labels[fit], low=MIN_TEMPERATURE)
    before = metric_set(softmax(logits[check]), labels[check])
    after = metric_set(softmax(logits[check] / temperature), labels[check])
    report = {"recalibration.temperature": temperature}
    for name in RECALIBRATED:
        report[f"recalibration.{name}_before"] = before[name]
        report[f"recalibration.{name}_after"] = after[name]
    return report


def torch_evaluator(
    x: Any, y: Any, subgroups: Mapping[str, np.ndarray] | None = None
) -> Callable[[Any], tuple[Metrics, int]]:
    """``evaluate(model) -> (metrics, examples)`` for :class:`fedsite.sdk.TorchTrainer`."""
    labels = np.asarray(y.numpy() if hasattr(y, "numpy") else y).astype(np.int64)

    def evaluate(model: Any) -> tuple[Metrics, int]:
        return risk_metrics(_logits(model, x), labels, subgroups), int(labels.size)

    return evaluate


def torch_recalibrator(x: Any, y: Any, *, seed: int = 0) -> Callable[[Any], Metrics]:
    """``recalibrate(model) -> metrics`` for :class:`fedsite.sdk.TorchTrainer` (the final model)."""
    labels = np.asarray(y.numpy() if hasattr(y, "numpy") else y).astype(np.int64)

    def recalibrate(model: Any) -> Metrics:
        return recalibration(_logits(model, x), labels, seed=seed)

    return recalibrate


__all__ = ["recalibration", "risk_metrics", "torch_evaluator", "torch_recalibrator"]

"""The metric set every site reports for a model on its held-out data, per site and per subgroup,
and a local recalibration that leaves the global model unchanged.

Metrics (each in [0, 1] except the loss): ``accuracy``, ``auroc`` (binary, or the macro average
of one-vs-rest AUROCs; the Mann-Whitney statistic, ties counted half), ``loss`` (mean negative
log-likelihood), ``ece`` (expected calibration error of the top-class probability over 15
equal-width bins, Guo et al. 2017). With subgroups declared (``{"sex": array of labels, ...}``)
every metric is also reported per subgroup value as ``metric[attribute=value]``, so the
aggregator can lead with the worst site and the largest subgroup gap instead of the mean; a
subgroup with fewer than ``min_examples`` examples is left out (small cells say little and
can identify patients).

:func:`temperature_scaling` fits one temperature on the site's held-out logits (by minimising
the NLL over a bracketed 1-D search, no optimiser dependency): a local recalibration whose
before/after metrics the site can report; the federated model is not changed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attestation.errors import AttestflError

ECE_BINS = 15
MIN_SUBGROUP_EXAMPLES = 10
MAX_SUBGROUP_VALUES = 8


class EvaluationError(AttestflError, ValueError):
    """The predictions or labels cannot be evaluated (shapes, values)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _checked(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or probabilities.shape[0] != labels.shape[0] or probabilities.shape[1] < 2:
        raise EvaluationError(f"probabilities of shape {probabilities.shape} do not fit {labels.shape[0]} labels")
    if (
        not np.all(np.isfinite(probabilities))
        or labels.dtype.kind not in "iu"
        or labels.min(initial=0) < 0
        or labels.max(initial=0) >= probabilities.shape[1]
    ):
        raise EvaluationError("probabilities must be finite and labels class indices")
    return probabilities, labels.astype(np.int64)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (None if one class is absent)."""
    positives = int(positive.sum())
    negatives = positive.size - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties (Mann-Whitney: a tie counts half)
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[positive].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def metric_set(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """accuracy, auroc (when both classes are present), loss and ece of one set of predictions."""
    probabilities, labels = _checked(probabilities, labels)
    eps = 1e-12
    metrics = {
        "accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
        "loss": float(-np.log(np.clip(probabilities[np.arange(labels.size), labels], eps, 1.0)).mean()),
        "ece": expected_calibration_error(probabilities, labels),
    }
    classes = probabilities.shape[1]
    if classes == 2:
        value = auroc(probabilities[:, 1], labels == 1)
    else:
        per_class = [auroc(probabilities[:, c], labels == c) for c in range(classes)]
        present = [v for v in per_class if v is not None]
        value = float(np.mean(present)) if present else None
    if value is not None:
        metrics["auroc"] = value
    return metrics


def evaluate_predictions(
    probabilities: np.ndarray,
    labels: np.ndarray,
    subgroups: Mapping[str, np.ndarray] | None = None,
    *,
    min_examples: int = MIN_SUBGROUP_EXAMPLES,
) -> dict[str, float]:
    """The site's metric set, and each subgroup's as ``metric[attribute=value]``."""
    probabilities, labels = _checked(probabilities, labels)
    metrics = metric_set(probabilities, labels)
    for attribute, values in (subgroups or {}).items():
        values = np.asarray(values)
        if values.shape[0] != labels.shape[0]:
            raise EvaluationError(f"subgroup {attribute!r} has {values.shape[0]} labels for {labels.shape[0]} examples")
        distinct = np.unique(values)
        if distinct.size > MAX_SUBGROUP_VALUES:
            raise EvaluationError(
                f"subgroup {attribute!r} has {distinct.size} values; at most {MAX_SUBGROUP_VALUES} (use bands)"
            )
        for value in distinct:
            members = values == value
            if members.sum() < min_examples:
                continue
            for name, number in metric_set(probabilities[members], labels[members]).items():
                metrics[f"{name}[{attribute}={value}]"] = number
    return metrics


def temperature_scaling(
    logits: np.ndarray, labels: np.ndarray, *, low: float = 0.05, high: float = 20.0, steps: int = 60
) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on held-out data
    (golden-section search on log T over [low, high])."""
    logits = np.asarray(logits, dtype=np.float64)
    _checked(softmax(logits), labels)
    labels = np.asarray(labels, dtype=np.int64)

    def nll(log_t: float) -> float:
        p = softmax(logits / np.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(labels.size), labels], 1e-12, 1.0)).mean())

    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(steps):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return float(np.exp((a + b) / 2.0))


__all__ = [
    "EvaluationError",
    "auroc",
    "evaluate_predictions",
    "expected_calibration_error",
    "metric_set",
    "softmax",
    "temperature_scaling",
]

"""A site's dataset card (protocol/cards.py) from its training data: schema, example count,
label distribution and missingness, optionally with Laplace noise on the counts (the site
states epsilon; each released count changes by at most 1 when one patient is added or removed,
so one card release is epsilon-DP for the counts; missingness fractions are computed from the
noised counts).

    card = make_card("hospital-a", x_train, y_train, feature_names, epsilon=1.0)
    trainer = TorchTrainer(model, train, evaluate, card=lambda: card)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protocol.cards import DatasetCard


def _kind(column: np.ndarray) -> str:
    if column.dtype.kind == "b":
        return "bool"
    if column.dtype.kind in "iu":
        return "int"
    if column.dtype.kind == "f":
        return "float"
    return "category"


def make_card(
    site: str,
    x: np.ndarray,
    y: np.ndarray,
    feature_names: Sequence[str],
    *,
    feature_types: Sequence[str] | None = None,
    epsilon: float | None = None,
    rng: np.random.Generator | None = None,
) -> DatasetCard:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[1] != len(feature_names) or y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape} features do not fit {len(feature_names)} names and {y.shape[0]} labels")
    kinds = list(feature_types) if feature_types is not None else [_kind(x[:, i]) for i in range(x.shape[1])]
    rng = rng or np.random.default_rng()

    def count(value: float) -> float:
        if epsilon is None:
            return float(value)
        return float(max(0.0, value + rng.laplace(0.0, 1.0 / epsilon)))

    examples = count(x.shape[0])
    values, counts = np.unique(y, return_counts=True)
    labels = {str(v): count(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)}
    missing = {}
    for i, name in enumerate(feature_names):
        column = x[:, i]
        absent = int(np.isnan(column).sum()) if column.dtype.kind == "f" else int((column == None).sum())  # noqa: E711
        missing[str(name)] = round(min(1.0, count(absent) / examples), 6) if examples > 0 else 0.0
    return DatasetCard(
        site, examples, tuple((str(n), k) for n, k in zip(feature_names, kinds, strict=True)), labels, missing, epsilon
    )


__all__ = ["make_card"]

"""Test helper: the loopback deployment of :mod:`attestfl.loopback` with a small model."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attestfl import loopback
from attestfl.loopback import Aggregator, run_aggregator

MODEL = {"dense.weight": np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "dense.bias": np.zeros(3, np.float32)}


@dataclass
class Deployment(loopback.Deployment):
    model: dict[str, np.ndarray] = field(default_factory=lambda: dict(MODEL), repr=False)


__all__ = ["MODEL", "Aggregator", "Deployment", "run_aggregator"]

"""Aggregation strategies behind one interface (after Flower's ``Strategy``), computed with the
Numba kernels of :mod:`native`.

A strategy turns the round's accepted updates (flattened float32 model deltas, with weights)
into one delta. Streaming strategies (FedAvg) fold each update into an
:class:`native.Accumulator` as it arrives, so the aggregator holds O(model) memory however
many sites report; robust strategies (coordinate-wise median, trimmed mean, Krum) need every
update at once and stack them.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from attestation.errors import AttestflError

import native

STRATEGIES = ("fedavg", "median", "trimmed_mean", "krum")


class StrategyError(AttestflError, ValueError):
    """A strategy is misconfigured or cannot aggregate what it was given."""


class RoundAggregation(abc.ABC):
    """The state of one round's aggregation."""

    @abc.abstractmethod
    def add(self, update: np.ndarray, weight: float, site: int) -> None:
        """Take one update (a 1-D float32 delta); ``site`` names it in errors."""

    @abc.abstractmethod
    def result(self) -> np.ndarray:
        """The aggregated delta (1-D float32)."""

    @property
    @abc.abstractmethod
    def count(self) -> int:
        """How many updates were added."""


class Strategy(abc.ABC):
    """One aggregation rule. ``name`` is what task configurations and the audit log call it."""

    name: str = ""

    @abc.abstractmethod
    def begin_round(self, size: int) -> RoundAggregation:
        """A fresh aggregation for a model of ``size`` parameters."""

    def minimum_sites(self) -> int:
        """The fewest updates the rule is defined for."""
        return 1

    def describe(self) -> dict[str, Any]:
        """The parameters, as the audit log records them."""
        return {"name": self.name}


class _Streaming(RoundAggregation):
    def __init__(self, size: int) -> None:
        self._accumulator = native.Accumulator(size)
        self._count = 0

    def add(self, update: np.ndarray, weight: float, site: int) -> None:
        self._accumulator.add(update, weight, site=site)
        self._count += 1

    def result(self) -> np.ndarray:
        if not self._count:
            raise StrategyError("no update to aggregate")
        return self._accumulator.result()

    @property
    def count(self) -> int:
        return self._count


class _Stacked(RoundAggregation):
    def __init__(self, size: int, combine: Any) -> None:
        self._size = size
        self._rows: list[np.ndarray] = []
        self._weights: list[float] = []
        self._combine = combine

    def add(self, update: np.ndarray, weight: float, site: int) -> None:
        if update.shape != (self._size,):
            raise StrategyError(f"update of site {site} has {update.size} values, the model {self._size}")
        if not np.isfinite(update).all():
            raise native.NonFiniteUpdateError(site)
        self._rows.append(np.asarray(update, dtype=np.float32))
        self._weights.append(weight)

    def result(self) -> np.ndarray:
        if not self._rows:
            raise StrategyError("no update to aggregate")
        stack = np.stack(self._rows)
        return self._combine(stack, np.asarray(self._weights))

    @property
    def count(self) -> int:
        return len(self._rows)


@dataclass(frozen=True)
class FedAvg(Strategy):
    """Weighted mean (weights: the sites' example counts), streamed into an Accumulator."""

    name = "fedavg"

    def begin_round(self, size: int) -> RoundAggregation:
        return _Streaming(size)


@dataclass(frozen=True)
class CoordinateMedian(Strategy):
    """Coordinate-wise median (unweighted): robust to a minority of arbitrary updates."""

    name = "median"

    def begin_round(self, size: int) -> RoundAggregation:
        return _Stacked(size, lambda stack, _w: native.coordinate_median(stack))


@dataclass(frozen=True)
class TrimmedMean(Strategy):
    """Per coordinate, drop the floor(beta*N) largest and smallest values and average the rest."""

    beta: float = 0.2
    name = "trimmed_mean"

    def __post_init__(self) -> None:
        if not _is_real(self.beta) or not 0 <= self.beta < 0.5:
            raise StrategyError(f"trimmed_mean beta must be a number in [0, 0.5), got {self.beta!r}")

    def begin_round(self, size: int) -> RoundAggregation:
        return _Stacked(size, lambda stack, _w: native.trimmed_mean(stack, self.beta))

    def minimum_sites(self) -> int:
        # 2*floor(beta*N) < N holds for every N >= 1 when beta < 0.5
        return 1

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "beta": self.beta}


@dataclass(frozen=True)
class Krum(Strategy):
    """(Multi-)Krum: the m updates closest to their n-f-2 nearest neighbours, averaged."""

    f: int = 1
    m: int = 1
    name = "krum"

    def __post_init__(self) -> None:
        if not _is_integer(self.f) or not _is_integer(self.m) or self.f < 0 or self.m < 1:
            raise StrategyError(f"krum needs integers f >= 0 and m >= 1, got f={self.f!r}, m={self.m!r}")

    def begin_round(self, size: int) -> RoundAggregation:
        return _Stacked(size, lambda stack, _w: native.krum(stack, self.f, self.m)[0])

    def minimum_sites(self) -> int:
        # Krum scores each update against its n-f-2 nearest neighbours (n >= 2f+3), and
        # multi-Krum averages m of the n-f best (m <= n-f).
        return max(2 * self.f + 3, self.f + self.m)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "f": self.f, "m": self.m}


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def make_strategy(name: str, *, beta: float = 0.2, f: int = 1, m: int = 1) -> Strategy:
    """The strategy ``name`` with its parameters (each checked: no coercion, finite)."""
    if name == "fedavg":
        return FedAvg()
    if name == "median":
        return CoordinateMedian()
    if name == "trimmed_mean":
        return TrimmedMean(beta)
    if name == "krum":
        return Krum(f, m)
    raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")

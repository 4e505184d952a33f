"""Aggregation strategies behind one interface (after Flower's ``Strategy``), computed with the
Numba kernels of :mod:`native`.

A strategy turns the round's accepted updates (flattened float32 model deltas, with weights)
into one delta. Streaming strategies (FedAvg) fold each update into an
:class:`native.Accumulator` as it arrives, so the aggregator holds O(model) memory however
many sites report; robust strategies (coordinate-wise median, trimmed mean, Krum) need every
update at once and stack them.

A strategy is **one subclass** of :class:`Strategy`: its ``name`` (what ``[task.strategy]``
``name`` and the audit log call it), its ``Parameters`` (a :mod:`msgspec` Struct: the other
keys of ``[task.strategy]``, typed and bounded, checked when the file is loaded) and
:meth:`Strategy.begin_round`. Strategies are found by name: the built-in ones, those given to
:func:`register_strategy`, and those that installed distributions declare in the entry-point
group ``attestfl.strategies`` (``name = "module:Class"``; the entry point's name is the
strategy's ``name``). ``docs/extending.md`` walks through one.

Clipping and central differential privacy are not strategies of their own but wrappers around
any strategy (:class:`Clipped`, :class:`CentralDp`), as Flower wraps a strategy in DP: the
round driver only calls the (wrapped) strategy.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Annotated, Any, ClassVar, Protocol

import msgspec
import numpy as np
from msgspec import Meta

import native
from aggregator.spill import (
    BLOCK_VALUES,
    SpilledStack,
    spill_budget,
    spilled_krum,
    spilled_median,
    spilled_trimmed_mean,
)
from attestation.errors import AttestflError

LOG = logging.getLogger("attestfl.aggregator")

#: The entry-point group through which installed distributions add strategies.
ENTRY_POINT_GROUP = "attestfl.strategies"
#: The built-in strategies' names.
STRATEGIES = ("fedavg", "median", "trimmed_mean", "krum")
#: Sane bound on a count of sites (a larger value is a typo, not a plan).
MAX_SITES = 10_000
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class StrategyError(AttestflError, ValueError):
    """A strategy is misconfigured, cannot be found, or cannot aggregate what it was given."""


# ---- one round's aggregation ----------------------------------------------------------------


@dataclass(frozen=True)
class Privacy:
    """The privacy budget spent so far: rounds of DP noise, and the epsilon they add up to."""

    rounds: int = 0
    epsilon: float | None = None


@dataclass(frozen=True)
class Aggregate:
    """A closed round: the aggregated delta and the privacy spent once it is applied."""

    delta: np.ndarray
    privacy: Privacy = Privacy()


class RoundAggregation(abc.ABC):
    """The state of one round's aggregation."""

    @abc.abstractmethod
    def add(self, update: np.ndarray, weight: float, site: int) -> Mapping[str, Any] | None:
        """Take one update (a 1-D float32 delta; a wrapper may change it in place); ``site``
        names it in errors. May return facts about the update that the round entry of the audit
        log records beside the update's weight and digest (e.g. ``norm_before_clip``)."""

    @abc.abstractmethod
    def result(self) -> np.ndarray:
        """The aggregated delta (1-D float32)."""

    @property
    @abc.abstractmethod
    def count(self) -> int:
        """How many updates were added."""

    def close(self, privacy: Privacy) -> Aggregate:
        """The round's aggregate and the privacy spent with it (``privacy``: spent before this
        round). Only a privacy wrapper changes the privacy."""
        return Aggregate(self.result(), privacy)

    def add_pieces(self, update: PieceSource, weight: float, site: int) -> Mapping[str, Any] | None:
        """Take an update read piece by piece (:class:`aggregator.spool.StreamedUpdate`, already
        checked finite, its ``norm`` known). By default the pieces are put together and handed to
        :meth:`add`; a rule that folds updates in as they come (the weighted mean) takes the
        pieces themselves, so the round never holds a whole update."""
        return self.add(update.vector(), weight, site)

    def use_output(self, out: np.ndarray) -> bool:
        """Compute the round's aggregate into ``out`` (a float32 vector of the model's size, the
        data section of the next model's bytes) if this rule can, before any update is added:
        True when it will (the driver then adds the global model in place: one model-sized
        buffer less at the round's close). By default it cannot."""
        return False


class PieceSource(Protocol):
    """An update as float32 pieces (flat offset, values) in model order, and its L2 norm."""

    @property
    def norm(self) -> float: ...

    def pieces(self) -> Iterator[tuple[int, np.ndarray]]: ...

    def vector(self) -> np.ndarray: ...


@dataclass(frozen=True)
class _ScaledPieces:
    """``update`` times ``factor``, piece by piece (a clipped update, never materialised)."""

    update: PieceSource
    factor: float

    @property
    def norm(self) -> float:
        return self.update.norm * self.factor

    def pieces(self) -> Iterator[tuple[int, np.ndarray]]:
        factor = np.float32(self.factor)
        for offset, piece in self.update.pieces():
            yield offset, piece * factor

    def vector(self) -> np.ndarray:
        vector = self.update.vector()
        vector *= np.float32(self.factor)
        return vector


class StreamingMean(RoundAggregation):
    """Weighted mean, each update folded into a :class:`native.Accumulator` as it arrives."""

    def __init__(self, size: int) -> None:
        self._accumulator = native.Accumulator(size)
        self._count = 0

    def add(self, update: np.ndarray, weight: float, site: int) -> None:
        self._accumulator.add(update, weight, site=site)
        self._count += 1

    def add_pieces(self, update: PieceSource, weight: float, site: int) -> None:
        for offset, piece in update.pieces():
            self._accumulator.add(piece, weight, offset, site=site)
        self._count += 1

    def use_output(self, out: np.ndarray) -> bool:
        if self._count:
            return False
        self._accumulator = native.Accumulator(self._accumulator.size, out=out)
        return True

    def result(self) -> np.ndarray:
        if not self._count:
            raise StrategyError("no update to aggregate")
        return self._accumulator.result()

    @property
    def count(self) -> int:
        return self._count


class StackedAggregation(RoundAggregation):
    """Every update kept; ``combine(stack, weights)`` (an N x size float32 array and the N
    weights) makes the aggregate once the round closes. For rules that need all updates at once."""

    def __init__(self, size: int, combine: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
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
        return np.asarray(self._combine(stack, np.asarray(self._weights)), dtype=np.float32)

    @property
    def count(self) -> int:
        return len(self._rows)


class SpillingAggregation(RoundAggregation):
    """Updates stacked in memory (as :class:`StackedAggregation`) until they would pass
    :func:`aggregator.spill.spill_budget`; from then on every update of the round is sealed to
    disk (:class:`aggregator.spill.SpilledStack`) and the round is combined column block by
    column block (issue 19: robust strategies on models larger than memory / N). The result is
    the same either way (tests/test_spill.py)."""

    def __init__(
        self,
        size: int,
        in_memory: Callable[[np.ndarray, np.ndarray], np.ndarray],
        spilled: Callable[[SpilledStack, np.ndarray], np.ndarray],
        budget: int | None = None,
        block: int = BLOCK_VALUES,
    ) -> None:
        self._size = size
        self._block = block
        self._in_memory = in_memory
        self._spilled = spilled
        self._budget = spill_budget() if budget is None else budget
        self._rows: list[np.ndarray] = []
        self._weights: list[float] = []
        self._stack: SpilledStack | None = None

    def add(self, update: np.ndarray, weight: float, site: int) -> None:
        if update.shape != (self._size,):
            raise StrategyError(f"update of site {site} has {update.size} values, the model {self._size}")
        if not np.isfinite(update).all():
            raise native.NonFiniteUpdateError(site)
        if self._stack is None and (len(self._rows) + 1) * 4 * self._size > self._budget:
            self._stack = SpilledStack(self._size, os.environ.get("ATTESTFL_SPILL_DIR") or None, self._block)
            for row in self._rows:
                self._stack.append(row)
            self._rows.clear()
        if self._stack is not None:
            self._stack.append(update)
        else:
            self._rows.append(np.array(update, dtype=np.float32))
        self._weights.append(weight)

    @property
    def spilled(self) -> bool:
        return self._stack is not None

    def result(self) -> np.ndarray:
        if not self._weights:
            raise StrategyError("no update to aggregate")
        weights = np.asarray(self._weights)
        if self._stack is None:
            return np.asarray(self._in_memory(np.stack(self._rows), weights), dtype=np.float32)
        try:
            return np.asarray(self._spilled(self._stack, weights), dtype=np.float32)
        finally:
            self._stack.close()

    @property
    def count(self) -> int:
        return len(self._weights)


# ---- the strategy interface -------------------------------------------------------------------


class NoParameters(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A strategy without parameters: ``[task.strategy]`` holds only ``name``."""


class Strategy(abc.ABC):
    """One aggregation rule. ``name`` is what task configurations and the audit log call it;
    ``Parameters`` describes the other keys of its ``[task.strategy]`` table (a msgspec Struct
    with ``forbid_unknown_fields=True, frozen=True, kw_only=True``; bounds with ``Meta``).
    :meth:`from_parameters` makes the strategy from them (default: ``cls(**parameters)``)."""

    name: ClassVar[str] = ""
    Parameters: ClassVar[type[msgspec.Struct]] = NoParameters

    @classmethod
    def from_parameters(cls, parameters: msgspec.Struct) -> Strategy:
        return cls(**msgspec.structs.asdict(parameters))

    @abc.abstractmethod
    def begin_round(self, size: int) -> RoundAggregation:
        """A fresh aggregation for a model of ``size`` parameters."""

    def minimum_sites(self) -> int:
        """The fewest updates the rule is defined for."""
        return 1

    def describe(self) -> dict[str, Any]:
        """The parameters, as the audit log records them (default: ``name`` and the fields of a
        dataclass strategy)."""
        fields: dict[str, Any] = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return {"name": self.name, **fields}

    def round_fields(self) -> dict[str, Any]:
        """What a ``round`` entry of the audit log records about how the round was aggregated."""
        return {"strategy": self.describe(), "clip_norm": None, "dp": None}

    @property
    def base(self) -> Strategy:
        """The aggregation rule itself, under any wrappers."""
        return self


@dataclass(frozen=True)
class FedAvg(Strategy):
    """Weighted mean (weights: the sites' example counts), streamed into an Accumulator."""

    name = "fedavg"

    def begin_round(self, size: int) -> RoundAggregation:
        return StreamingMean(size)


@dataclass(frozen=True)
class CoordinateMedian(Strategy):
    """Coordinate-wise median (unweighted): robust to a minority of arbitrary updates."""

    name = "median"

    def begin_round(self, size: int) -> RoundAggregation:
        return SpillingAggregation(
            size, lambda stack, _w: native.coordinate_median(stack), lambda spilled, _w: spilled_median(spilled)
        )


class TrimmedMeanParameters(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    beta: Annotated[float, Meta(ge=0, lt=0.5)] = 0.2


@dataclass(frozen=True)
class TrimmedMean(Strategy):
    """Per coordinate, drop the floor(beta*N) largest and smallest values and average the rest."""

    beta: float = 0.2
    name = "trimmed_mean"
    Parameters = TrimmedMeanParameters

    def __post_init__(self) -> None:
        if not _is_real(self.beta) or not 0 <= self.beta < 0.5:
            raise StrategyError(f"trimmed_mean beta must be a number in [0, 0.5), got {self.beta!r}")

    def begin_round(self, size: int) -> RoundAggregation:
        return SpillingAggregation(
            size,
            lambda stack, _w: native.trimmed_mean(stack, self.beta),
            lambda spilled, _w: spilled_trimmed_mean(spilled, self.beta),
        )

    def minimum_sites(self) -> int:
        # 2*floor(beta*N) < N holds for every N >= 1 when beta < 0.5
        return 1


class KrumParameters(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    f: Annotated[int, Meta(ge=0, le=MAX_SITES)] = 1
    m: Annotated[int, Meta(ge=1, le=MAX_SITES)] = 1


@dataclass(frozen=True)
class Krum(Strategy):
    """(Multi-)Krum: the m updates closest to their n-f-2 nearest neighbours, averaged."""

    f: int = 1
    m: int = 1
    name = "krum"
    Parameters = KrumParameters

    def __post_init__(self) -> None:
        if not _is_integer(self.f) or not _is_integer(self.m) or self.f < 0 or self.m < 1:
            raise StrategyError(f"krum needs integers f >= 0 and m >= 1, got f={self.f!r}, m={self.m!r}")

    def begin_round(self, size: int) -> RoundAggregation:
        return SpillingAggregation(
            size,
            lambda stack, _w: native.krum(stack, self.f, self.m)[0],
            lambda spilled, _w: spilled_krum(spilled, self.f, self.m)[0],
        )

    def minimum_sites(self) -> int:
        # Krum scores each update against its n-f-2 nearest neighbours (n >= 2f+3), and
        # multi-Krum averages m of the n-f best (m <= n-f).
        return max(2 * self.f + 3, self.f + self.m)


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


# ---- wrappers: clipping and central DP around any strategy -----------------------------------


class _Wrapper(Strategy):
    """A strategy that changes what another one sees or returns; ``name`` and parameters are
    the wrapped strategy's."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    @property
    def name(self) -> str:  # type: ignore[override]  # Strategy declares a class attribute; this one is derived
        return self.inner.name

    def minimum_sites(self) -> int:
        return self.inner.minimum_sites()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    @property
    def base(self) -> Strategy:
        return self.inner.base

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class _ClippedRound(RoundAggregation):
    def __init__(self, inner: RoundAggregation, clip_norm: float, weight: float | None = None) -> None:
        self.inner = inner
        self.clip_norm = clip_norm
        self.weight = weight  # None: the site's own weight

    def add(self, update: np.ndarray, weight: float, site: int) -> Mapping[str, Any]:
        norm = native.clip_by_l2(update, self.clip_norm, site=site)
        facts = self.inner.add(update, weight if self.weight is None else self.weight, site) or {}
        return {**facts, "norm_before_clip": norm}  # the outermost clip saw the update as sent

    def add_pieces(self, update: PieceSource, weight: float, site: int) -> Mapping[str, Any]:
        norm = update.norm  # as clip_by_l2 scales: by max_norm / norm (float64) when over the bound
        scaled = _ScaledPieces(update, self.clip_norm / norm) if norm > self.clip_norm else update
        facts = self.inner.add_pieces(scaled, weight if self.weight is None else self.weight, site) or {}
        return {**facts, "norm_before_clip": norm}

    def use_output(self, out: np.ndarray) -> bool:
        return self.inner.use_output(out)  # clipping and noise work in place on the inner aggregate

    def result(self) -> np.ndarray:
        return self.inner.result()

    @property
    def count(self) -> int:
        return self.inner.count

    def close(self, privacy: Privacy) -> Aggregate:
        return self.inner.close(privacy)


class Clipped(_Wrapper):
    """Every update's L2 norm clipped to ``clip_norm`` (in place, inside the aggregator) before
    the wrapped strategy sees it: bounds what one site can move the model (robustness)."""

    def __init__(self, inner: Strategy, clip_norm: float) -> None:
        super().__init__(inner)
        if not _is_real(clip_norm) or clip_norm <= 0:
            raise StrategyError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
        self.clip_norm = float(clip_norm)

    def begin_round(self, size: int) -> RoundAggregation:
        return _ClippedRound(self.inner.begin_round(size), self.clip_norm)

    def round_fields(self) -> dict[str, Any]:
        return {**self.inner.round_fields(), "clip_norm": self.clip_norm}


class _DpRound(_ClippedRound):
    def __init__(self, inner: RoundAggregation, dp: CentralDp) -> None:
        # Under DP every site counts equally: the sensitivity bound is per site, not per example.
        super().__init__(inner, dp.clip_norm, weight=1.0)
        self.dp = dp

    def _noise(self, delta: np.ndarray) -> np.ndarray:
        # The mean of n clipped updates has sensitivity clip/n: noise std = z * clip / n, added here.
        std = self.dp.noise_multiplier * self.dp.clip_norm / max(1, self.inner.count)
        native.add_gaussian_noise(delta, std, int.from_bytes(os.urandom(8), "little"))
        return delta

    def result(self) -> np.ndarray:
        return self._noise(self.inner.result())

    def close(self, privacy: Privacy) -> Aggregate:
        inner = self.inner.close(privacy)
        rounds = inner.privacy.rounds + 1
        return Aggregate(self._noise(inner.delta), Privacy(rounds, self.dp.epsilon(rounds)))


class CentralDp(_Wrapper):
    """Central differential privacy around any strategy: every update clipped to ``clip_norm``
    and weighted equally, Gaussian noise of std ``noise_multiplier * clip_norm / n`` added to
    the aggregate inside the aggregator (never at the sites), and epsilon at ``delta`` from the
    RDP accountant of dp-accounting over all DP rounds so far."""

    def __init__(self, inner: Strategy, clip_norm: float, noise_multiplier: float, delta: float = 1e-5) -> None:
        super().__init__(inner)
        for key, value in (("clip_norm", clip_norm), ("noise_multiplier", noise_multiplier)):
            if not _is_real(value) or value <= 0:
                raise StrategyError(f"dp {key} must be a finite number > 0, got {value!r}")
        if not _is_real(delta) or not 0 < delta < 1:
            raise StrategyError(f"dp delta must be a finite number in (0, 1), got {delta!r}")
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)

    def begin_round(self, size: int) -> RoundAggregation:
        return _DpRound(self.inner.begin_round(size), self)

    def round_fields(self) -> dict[str, Any]:
        return {
            **self.inner.round_fields(),
            "dp": {"clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier, "delta": self.delta},
        }

    def epsilon(self, rounds: int) -> float:
        """Epsilon at ``delta`` after ``rounds`` rounds of this Gaussian mechanism."""
        from dp_accounting import dp_event
        from dp_accounting.rdp import RdpAccountant

        accountant = RdpAccountant()
        accountant.compose(dp_event.GaussianDpEvent(self.noise_multiplier), count=rounds)
        return float(accountant.get_epsilon(self.delta))


# ---- the registry -----------------------------------------------------------------------------

_BUILTIN: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, CoordinateMedian, TrimmedMean, Krum)}
_REGISTERED: dict[str, type[Strategy]] = {}


def _check_class(cls: Any, where: str) -> type[Strategy]:
    if not isinstance(cls, type) or not issubclass(cls, Strategy) or issubclass(cls, _Wrapper):
        raise StrategyError(f"{where}: {cls!r} is not a subclass of aggregator.strategies.Strategy")
    if not isinstance(cls.name, str) or not _NAME.match(cls.name):
        raise StrategyError(
            f"{where}: strategy name {cls.name!r} is not 1-64 lowercase letters, digits or '_' (starting with a letter)"
        )
    if not isinstance(cls.Parameters, type) or not issubclass(cls.Parameters, msgspec.Struct):
        raise StrategyError(f"{where}: {cls.__name__}.Parameters is not a msgspec Struct")
    if any(f.encode_name == "name" for f in msgspec.structs.fields(cls.Parameters)):
        raise StrategyError(f"{where}: {cls.__name__}.Parameters may not have a field 'name' (the strategy's name)")
    return cls


def unregister_strategy(name: str) -> None:
    """Forget a strategy registered in code (tests; a built-in cannot be removed)."""
    _REGISTERED.pop(name, None)


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Make ``cls`` available by its ``name`` in this process (usable as a class decorator)."""
    _check_class(cls, "register_strategy")
    taken = _BUILTIN.get(cls.name) or _REGISTERED.get(cls.name)
    if taken is not None and taken is not cls:
        raise StrategyError(
            f"register_strategy: the name {cls.name!r} is taken by {taken.__module__}.{taken.__qualname__}"
        )
    _REGISTERED[cls.name] = cls
    return cls


def _entry_points() -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in _BUILTIN:
            LOG.warning(
                "strategy entry point ignored: it has a built-in strategy's name",
                extra={"fields": {"entry_point": entry.name, "value": entry.value}},
            )
            continue
        found.setdefault(entry.name, entry)
    return found


def strategy_names() -> list[str]:
    """Every strategy name this process can make (built-in, registered, installed), sorted.
    Installed strategies are listed by their entry points; none is imported here."""
    return sorted({*_BUILTIN, *_REGISTERED, *_entry_points()})


def strategy_class(name: str) -> type[Strategy]:
    """The strategy class called ``name``; :class:`StrategyError` if there is none, or if the
    entry point that declares it cannot be loaded."""
    cls = _BUILTIN.get(name) or _REGISTERED.get(name)
    if cls is not None:
        return cls
    entry = _entry_points().get(name)
    if entry is None:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {', '.join(strategy_names())}")
    where = f"entry point {entry.name} = {entry.value} (group {ENTRY_POINT_GROUP})"
    try:
        loaded = entry.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin is a configuration error, not a traceback
        raise StrategyError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from None
    cls = _check_class(loaded, where)
    if cls.name != name:
        raise StrategyError(f"{where}: the class's name is {cls.name!r}, not the entry point's {name!r}")
    return cls


def build_strategy(cls: type[Strategy], parameters: msgspec.Struct) -> Strategy:
    """``cls.from_parameters(parameters)``; a refusal of the strategy's own is a StrategyError."""
    try:
        strategy = cls.from_parameters(parameters)
    except StrategyError:
        raise
    except (TypeError, ValueError) as exc:
        raise StrategyError(str(exc)) from None
    if not isinstance(strategy, Strategy):
        raise StrategyError(f"{cls.__name__}.from_parameters returned {type(strategy).__name__}, not a Strategy")
    return strategy


def make_strategy(name: str, *, beta: float = 0.2, f: int = 1, m: int = 1) -> Strategy:
    """The strategy ``name`` with the built-ins' parameters (each checked: no coercion, finite);
    a strategy of another name is made with its default parameters."""
    if name == "trimmed_mean":
        return TrimmedMean(beta)
    if name == "krum":
        return Krum(f, m)
    cls = strategy_class(name)
    try:
        parameters = msgspec.convert({}, cls.Parameters)
    except msgspec.ValidationError as exc:
        raise StrategyError(f"strategy {name!r} has required parameters: {exc}") from None
    return build_strategy(cls, parameters)


__all__ = [
    "ENTRY_POINT_GROUP",
    "STRATEGIES",
    "Aggregate",
    "CentralDp",
    "Clipped",
    "CoordinateMedian",
    "FedAvg",
    "Krum",
    "NoParameters",
    "Privacy",
    "RoundAggregation",
    "StackedAggregation",
    "Strategy",
    "StrategyError",
    "StreamingMean",
    "TrimmedMean",
    "build_strategy",
    "make_strategy",
    "register_strategy",
    "strategy_class",
    "strategy_names",
]

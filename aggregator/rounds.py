"""Training rounds inside the aggregator: collect sealed updates until quorum or deadline,
aggregate them with the task's strategy, clip and add noise here (never at the sites) when
central DP is on, and publish the next global model.

Model of round r: the global model *before* round r's training (round 1: the initial model).
Sites download it, evaluate it on held-out data (``ReportMetrics``, round r), train, and
upload the delta (their local model minus the round's model) with their example count as
weight. When training finishes, the final model is round ``rounds + 1``.

The task configuration is the ``[task]`` table of ``aggregator.toml``::

    [task]
    initial_model = "model.safetensors"  # float32 tensors; the model spec comes from it
    rounds = 5
    min_sites = 3                         # quorum: fewer updates by the deadline -> retried
    round_deadline = "120s"
    clip_norm = 10.0                      # optional: clip every update's L2 norm (robustness)
    evaluate = true                       # sites report metrics of each round's model
    compression = "float32"               # updates on the wire: float32 | float16 | bfloat16 | int8
    mode = "sync"                         # sync rounds, or async versions (docs/async-rounds.md)
    buffer_size = 2                       # async: updates per new version
    max_staleness = 8                     # async: oldest base version accepted, in versions
    deliver = "final"                     # sites keep the final model, or every round's (docs/model-delivery.md)
    release = ["admitted-sites"]          # who receives the final model ([task.release] for owner keys)
    [task.adapters]                       # optional: federate only these tensors (protocol.adapters)
    tensors = ["*.lora_A.*", "*.lora_B.*"]
    base_sha256 = "..."                   # the frozen base model file's SHA-256: sites on another refuse
    [task.vendors]                        # optional vendor evaluation jobs (docs/vendor-evaluation.md)
    [task.drift]                          # optional: drift surveillance, alerts, quarantine
    [task.contribution]                   # optional: contributor value (aggregator/surveillance.py)
    [task.cards]                          # optional: the sites' dataset cards (aggregator/cards.py)
    [task.strategy]                       # default: fedavg
    name = "krum"                         # fedavg | median | trimmed_mean | krum | an installed one
    f = 1                                 # the strategy's own parameters (krum: f, m; trimmed_mean: beta)
    m = 1
    [task.dp]                             # optional central differential privacy
    clip_norm = 1.0
    noise_multiplier = 1.0
    delta = 1e-5

``strategy = "median"`` (a name, in ``[task]``) is short for a ``[task.strategy]`` table with
only ``name``. Deprecated, still read: ``trimmed_mean_beta``, ``krum_f``, ``krum_m`` in
``[task]`` beside ``strategy = "<name>"`` (a warning names the table to write instead).

Clipping and DP wrap the strategy (:class:`~aggregator.strategies.Clipped`,
:class:`~aggregator.strategies.CentralDp`); the driver below only calls the wrapped strategy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import grpc
import msgspec
import numpy as np
from msgspec import Meta

from aggregator.cards import CardPolicy, CardRegistry, CardsConfigError, read_cards
from aggregator.delivery import ReleasePolicy, read_release
from aggregator.service import EventSink, FailStop, LogEvents, Task, UpdateRefused
from aggregator.spool import StreamedUpdate
from aggregator.strategies import (
    MAX_SITES,
    Aggregate,
    CentralDp,
    Clipped,
    Privacy,
    Strategy,
    StrategyError,
    build_strategy,
    make_strategy,
    strategy_class,
    strategy_names,
)
from aggregator.surveillance import (
    ContributionPolicy,
    DriftRules,
    Surveillance,
    SurveillanceConfigError,
    federation_risk,
    read_contribution,
    read_drift,
)
from attestation.errors import AttestflError
from protocol.adapters import AdapterError, AdapterSpec
from protocol.compression import MODES as COMPRESSION_MODES
from protocol.config import (
    MAX_DURATION_SECONDS,
    Duration,
    PathText,
    format_seconds,
    parse_duration,
    read_struct,
    value_repr,
)
from protocol.tensors import (
    ModelBuffers,
    ModelSpec,
    UpdateFormatError,
    adopt_model_buffer,
    flatten,
    load_model,
    model_buffer,
    model_bytes_of,
    unflatten,
)


class TaskConfigError(AttestflError, ValueError):
    """The ``[task]`` table is unusable."""


LOG = logging.getLogger("attestfl.aggregator")
#: Hashes a closing round's model while its checkpoint is written (one round closes at a time).
_MODEL_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attestfl-model-hash")

#: Sane bounds: a value past them is a typo (or an attack on the operator's file), not a plan.
MAX_ROUNDS = 100_000
#: The flat ``[task]`` keys of the built-in strategies' parameters (deprecated): key -> (strategy, parameter).
FLAT_PARAMETERS = {"trimmed_mean_beta": ("trimmed_mean", "beta"), "krum_f": ("krum", "f"), "krum_m": ("krum", "m")}


class DpTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[task.dp]`` as written."""

    clip_norm: Annotated[float, Meta(gt=0)]
    noise_multiplier: Annotated[float, Meta(gt=0)]
    delta: Annotated[float, Meta(gt=0, lt=1)] = 1e-5


class TaskTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[task]`` as written (see the module docstring). ``strategy`` is a name or the
    ``[task.strategy]`` table; the deprecated flat strategy parameters are checked whichever
    strategy is chosen."""

    initial_model: Annotated[PathText, Meta(description="a path to a safetensors file of float32 tensors")]
    rounds: Annotated[int, Meta(ge=1, le=MAX_ROUNDS)] = 5
    min_sites: Annotated[int, Meta(ge=1, le=MAX_SITES)] = 1
    round_deadline: Duration = 120
    strategy: str | dict[str, Any] = "fedavg"
    trimmed_mean_beta: Annotated[float, Meta(ge=0, lt=0.5)] | None = None
    krum_f: Annotated[int, Meta(ge=0, le=MAX_SITES)] | None = None
    krum_m: Annotated[int, Meta(ge=1, le=MAX_SITES)] | None = None
    clip_norm: Annotated[float, Meta(gt=0)] | None = None
    evaluate: bool = True
    dp: dict[str, Any] | None = None
    vendors: dict[str, Any] | None = None  # [task.vendors]: protocol.vendor.VendorPolicy
    mode: Literal["sync", "async"] = "sync"  # async: aggregator.async_rounds (buffer_size, max_staleness)
    buffer_size: Annotated[int, Meta(ge=1, le=MAX_SITES)] = 2
    max_staleness: Annotated[int, Meta(ge=0, le=1000)] = 8
    compression: str = "float32"
    deliver: str = "final"  # model delivery (aggregator.delivery)
    release: list[str] | dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    contribution: dict[str, Any] | None = None
    cards: dict[str, Any] | None = None
    adapters: dict[str, Any] | None = None  # [task.adapters]: protocol.adapters.AdapterSpec


def _strategy_names_text() -> str:
    return ", ".join(value_repr(name) for name in strategy_names())


def read_strategy(task: TaskTable) -> Strategy:
    """The ``[task.strategy]`` table (or ``strategy = "<name>"`` with the deprecated flat
    parameters): the strategy found by name, its parameters checked against its own schema."""
    flat = {key: getattr(task, key) for key in FLAT_PARAMETERS if getattr(task, key) is not None}
    if isinstance(task.strategy, dict):
        table = dict(task.strategy)
        for key in flat:
            name, parameter = FLAT_PARAMETERS[key]
            raise TaskConfigError(
                f"[task] {key}: with a [task.strategy] table, write the parameter there "
                f"({parameter} = ..., for name = {value_repr(name)})"
            )
        name = table.pop("name", None)
        if name is None:
            raise TaskConfigError(f"[task.strategy] name: required: one of {_strategy_names_text()}")
        where, key = "task.strategy", "name"
    else:
        name, table = task.strategy, {}
        for key, value in flat.items():
            owner, parameter = FLAT_PARAMETERS[key]
            if owner == name:
                table[parameter] = value
        if flat:
            wanted = "\n".join([f"name = {value_repr(name)}", *(f"{k} = {value_repr(v)}" for k, v in table.items())])
            LOG.warning(
                "deprecated [task] keys: write the strategy's parameters in a [task.strategy] table",
                extra={"fields": {"keys": sorted(flat), "instead": f"[task.strategy]\n{wanted}"}},
            )
        where, key = "task", "strategy"
    if not isinstance(name, str) or name not in strategy_names():
        raise TaskConfigError(f"[{where}] {key}: expected one of {_strategy_names_text()}, got {value_repr(name)}")
    try:
        cls = strategy_class(name)
    except StrategyError as exc:
        raise TaskConfigError(f"[{where}] {key}: {exc}") from None
    fields = {field.encode_name for field in msgspec.structs.fields(cls.Parameters)}
    unknown = sorted(set(table) - fields)
    if unknown:
        raise TaskConfigError(
            f"[task.strategy]: unknown key(s) {', '.join(unknown)} for strategy {value_repr(name)}; "
            f"allowed: {', '.join(['name', *sorted(fields)])}"
        )
    parameters = read_struct(table, cls.Parameters, "task.strategy", TaskConfigError)
    try:
        return build_strategy(cls, parameters)
    except StrategyError as exc:
        raise TaskConfigError(f"[task.strategy]: {exc}") from None


@dataclass(frozen=True)
class DpConfig:
    clip_norm: float
    noise_multiplier: float
    delta: float


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class TaskConfig:
    initial_model: dict[str, np.ndarray] = field(repr=False)
    rounds: int = 5
    min_sites: int = 1
    round_deadline: float = 120.0
    strategy: Strategy = field(default_factory=lambda: make_strategy("fedavg"))
    clip_norm: float | None = None
    evaluate: bool = True
    dp: DpConfig | None = None
    vendors: Any = None  # protocol.vendor.VendorPolicy of vendor evaluation jobs, or None
    mode: str = "sync"  # "async": aggregator.async_rounds.AsyncDriver
    buffer_size: int = 2
    max_staleness: int = 8
    #: How sites encode their updates (:mod:`protocol.compression`); aggregation is float32 whatever it is.
    compression: str = "float32"
    #: Model delivery: who receives the final model (aggregator.delivery); the initial model's file.
    release: ReleasePolicy = field(default_factory=ReleasePolicy)
    initial_model_path: Path | None = None
    drift: DriftRules | None = None
    contribution: ContributionPolicy | None = None
    cards: CardPolicy | None = None
    #: ``[task.adapters]``: only these tensors are federated (the model above is already the subset).
    adapters: AdapterSpec | None = None

    @property
    def spec(self) -> ModelSpec:
        spec: ModelSpec | None = self.__dict__.get("_spec")  # kept once the initial model is released
        return spec if spec is not None else ModelSpec.of(self.initial_model)

    def release_initial_model(self) -> None:
        """Drop the initial model's arrays once the driver holds its own copy (at start, after
        everything that reads them): a large model is then held once. The spec stays."""
        object.__setattr__(self, "_spec", self.spec)
        object.__setattr__(self, "initial_model", {})

    def aggregation(self) -> Strategy:
        """The strategy the rounds call: the task's, clipped (``clip_norm``) and under central
        DP (``[task.dp]``) when configured. With both, an update is clipped to both norms."""
        strategy = self.strategy
        try:
            if self.clip_norm is not None:
                strategy = Clipped(strategy, self.clip_norm)
            if self.dp is not None:
                strategy = CentralDp(strategy, self.dp.clip_norm, self.dp.noise_multiplier, self.dp.delta)
        except StrategyError as exc:
            raise TaskConfigError(f"[task] {exc}") from None
        return strategy

    @classmethod
    def from_table(cls, table: dict[str, Any], base_dir: Path) -> TaskConfig:
        """Every value checked (types, bounds, durations) before the model file is read."""
        task = read_struct(table, TaskTable, "task", TaskConfigError)
        deadline = parse_duration(task.round_deadline, "task", "round_deadline", error=TaskConfigError)
        dp = None
        if task.dp is not None:
            dp_table = read_struct(task.dp, DpTable, "task.dp", TaskConfigError)
            dp = DpConfig(dp_table.clip_norm, dp_table.noise_multiplier, dp_table.delta)
        strategy = read_strategy(task)
        vendors = _read_vendors(task.vendors)
        try:
            drift, contribution = read_drift(task.drift), read_contribution(task.contribution)
            cards = read_cards(task.cards)
        except (SurveillanceConfigError, CardsConfigError) as exc:
            raise TaskConfigError(str(exc)) from None
        config = cls(
            initial_model={},
            rounds=task.rounds,
            min_sites=task.min_sites,
            round_deadline=deadline,
            strategy=strategy,
            clip_norm=task.clip_norm,
            evaluate=task.evaluate,
            dp=dp,
            vendors=vendors,
            mode=task.mode,
            buffer_size=task.buffer_size,
            max_staleness=task.max_staleness,
            compression=task.compression,
            release=read_release(task.release, task.deliver),
            initial_model_path=base_dir / task.initial_model,
            drift=drift,
            contribution=contribution,
            cards=cards,
            adapters=_read_adapters(task.adapters),
        )
        config.validate(model=False)
        try:
            model = load_model(base_dir / task.initial_model)
        except UpdateFormatError as exc:
            raise TaskConfigError(f"[task] initial_model: {exc}") from None
        if config.adapters is not None:
            try:
                model = config.adapters.select(model)
            except AdapterError as exc:
                raise TaskConfigError(str(exc)) from None
        config = dataclasses.replace(config, initial_model=model)
        config.validate()
        return config

    def validate(self, *, model: bool = True) -> None:
        """Check a configuration however it was made (``from_table`` or in code)."""
        if not _is_int(self.rounds) or not 1 <= self.rounds <= MAX_ROUNDS:
            raise TaskConfigError(
                f"[task] rounds: expected an integer from 1 to {MAX_ROUNDS}, got {value_repr(self.rounds)}"
            )
        if not _is_int(self.min_sites) or not 1 <= self.min_sites <= MAX_SITES:
            raise TaskConfigError(
                f"[task] min_sites: expected an integer from 1 to {MAX_SITES}, got {value_repr(self.min_sites)}"
            )
        if not _is_number(self.round_deadline) or not 0 < self.round_deadline <= MAX_DURATION_SECONDS:
            raise TaskConfigError(
                f"[task] round_deadline: expected a duration longer than zero and at most "
                f"{format_seconds(MAX_DURATION_SECONDS)}, got {value_repr(self.round_deadline)}"
            )
        if self.compression not in COMPRESSION_MODES:
            raise TaskConfigError(
                f"[task] compression: expected one of {', '.join(map(value_repr, COMPRESSION_MODES))}, "
                f"got {value_repr(self.compression)}"
            )
        if not isinstance(self.evaluate, bool):
            raise TaskConfigError(f"[task] evaluate: expected true or false, got {value_repr(self.evaluate)}")
        if self.clip_norm is not None and (not _is_number(self.clip_norm) or self.clip_norm <= 0):
            raise TaskConfigError(f"[task] clip_norm: expected a finite number > 0, got {value_repr(self.clip_norm)}")
        if self.dp is not None:
            for key, value in (("clip_norm", self.dp.clip_norm), ("noise_multiplier", self.dp.noise_multiplier)):
                if not _is_number(value) or value <= 0:
                    raise TaskConfigError(f"[task.dp] {key}: expected a finite number > 0, got {value_repr(value)}")
            if not _is_number(self.dp.delta) or not 0 < self.dp.delta < 1:
                raise TaskConfigError(
                    f"[task.dp] delta: expected a finite number in (0, 1), got {value_repr(self.dp.delta)}"
                )
        if self.mode == "async" and (self.strategy.name != "fedavg" or self.dp is not None):
            raise TaskConfigError(
                '[task] mode = "async" buffers staleness-weighted means (aggregator.async_rounds): it takes '
                "neither another strategy nor [task.dp]"
            )
        needed = self.strategy.minimum_sites()
        if self.min_sites < needed:
            parameters = ", ".join(f"{k} = {v}" for k, v in self.strategy.describe().items() if k != "name")
            raise TaskConfigError(
                f"[task] min_sites: strategy {self.strategy.name}{f' ({parameters})' if parameters else ''} "
                f"needs at least {needed} sites per round; min_sites is {self.min_sites}"
            )
        if model:
            try:
                ModelSpec.of(self.initial_model)
            except UpdateFormatError as exc:
                raise TaskConfigError(f"[task] initial_model: {exc}") from None


def make_driver(config: TaskConfig, **options: Any) -> Any:
    """The task's driver: :class:`RoundDriver`, or the async one for ``mode = "async"``."""
    if config.mode == "async":
        from aggregator.async_rounds import AsyncDriver

        return AsyncDriver(config, **options)
    return RoundDriver(config, **options)


def _read_adapters(table: dict[str, Any] | None) -> AdapterSpec | None:
    """``[task.adapters]`` (protocol.adapters), or None."""
    if table is None:
        return None
    try:
        return AdapterSpec.from_table(table)
    except AdapterError as exc:
        raise TaskConfigError(str(exc)) from None


def _read_vendors(table: dict[str, Any] | None) -> Any:
    """``[task.vendors]`` (vendor evaluation jobs, protocol.vendor), or None."""
    if table is None:
        return None
    from protocol.vendor import VendorError, VendorPolicy

    try:
        return VendorPolicy.from_table(table)
    except VendorError as exc:
        raise TaskConfigError(str(exc)) from None


def _in_spec_order(model: dict[str, np.ndarray], spec: ModelSpec) -> list[np.ndarray]:
    """The model's tensors in spec order, each the spec's size (a model that does not fit is refused)."""
    try:
        arrays = [model[t.name] for t in spec.tensors]
    except KeyError as exc:
        raise UpdateFormatError(f"the model has no tensor {exc.args[0]!r} of the model spec") from None
    for tensor, array in zip(spec.tensors, arrays, strict=True):
        if np.size(array) != tensor.size:
            raise UpdateFormatError(f"tensor {tensor.name!r} has {np.size(array)} values, the model spec {tensor.size}")
    return arrays


@dataclass
class RoundRecord:
    """What happened in one round: the audit log and the demo's summary read these."""

    round: int
    attempt: int
    participants: dict[str, dict[str, Any]] = field(default_factory=dict)  # site -> weight, digest
    model_sha256: str | None = None
    epsilon: float | None = None
    aggregation_seconds: float = 0.0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # site -> metrics of this round's model
    examples: dict[str, int] = field(default_factory=dict)


def weighted_metrics(metrics: dict[str, dict[str, float]], examples: dict[str, int]) -> dict[str, float]:
    """Each metric averaged over the sites, weighted by their held-out example counts."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for site, values in metrics.items():
        weight = max(0, examples.get(site, 0))
        for name, value in values.items():
            totals[name] = totals.get(name, 0.0) + weight * value
            weights[name] = weights.get(name, 0.0) + weight
    return {name: totals[name] / weights[name] for name in totals if weights[name] > 0}


@dataclass(frozen=True)
class _Closing:
    """A round taken out of service to be aggregated off the lock (see :meth:`RoundDriver._close_round`)."""

    aggregation: Any
    participants: dict[str, dict[str, Any]]
    round: int
    attempt: int
    dp_rounds: int
    global_vector: np.ndarray
    #: The next model's data section the aggregate is computed into (None: the rule cannot).
    output: np.ndarray | None = None


class RoundDriver:
    """The :class:`aggregator.service.TaskDriver` of a training task. Thread-safe.

    Nothing slow runs under the round lock, and what the event loop's thread calls never waits
    for it: :meth:`task`, :meth:`model_bytes` and :meth:`check_upload` read a snapshot (an
    immutable :class:`~aggregator.service.Task` replaced whole, the models by round) without the
    lock; a round is aggregated, encoded and its checkpoint sealed and fsynced with the lock
    released (the round is marked *closing* meanwhile: uploads to it are refused, none is lost
    into an aggregate already taken); only the durable ``round`` entry, the checkpoint's rename
    and the in-memory commit hold it. The service runs the calls that may aggregate or fsync
    (:meth:`accept_update`, :meth:`close_if_complete`, :meth:`tick`, :meth:`report_metrics`) on
    executor threads."""

    #: The service hands uploads as :class:`aggregator.spool.StreamedUpdate` (read piece by piece).
    accepts_streamed = True

    def __init__(
        self,
        config: TaskConfig,
        *,
        events: EventSink | None = None,
        live_sites: Callable[[], int] = lambda: 0,
        start_round: int = 1,
        model: dict[str, np.ndarray] | None = None,
        epsilon_rounds: int = 0,
        checkpoint: Callable[[int, int, bytes | bytearray, Callable[[], bytes]], Callable[[], None]] | None = None,
    ) -> None:
        self.config = config
        #: What aggregates each round: the task's strategy with its wrappers (clipping, DP).
        self.strategy = config.aggregation()
        self.spec = config.spec
        self.events = events or LogEvents()
        self.live_sites = live_sites
        self._lock = threading.RLock()
        given = model if model is not None else config.initial_model
        #: The models' buffers: a round's next model is made in the buffer of the model before the
        #: last once nothing holds that one any more (protocol.tensors.ModelBuffers).
        self._model_buffers = ModelBuffers()
        adopted = adopt_model_buffer(given, self.spec)  # the file or checkpoint as read: no copy
        if adopted is not None:
            initial, self.global_vector = adopted
        else:
            # the model's bytes and its flat view, every value written below
            initial, self.global_vector = model_buffer(self.spec, self._model_buffers)
            position = 0
            for tensor, array in zip(self.spec.tensors, _in_spec_order(given, self.spec), strict=True):
                self.global_vector[position : position + tensor.size] = np.asarray(array, np.float32).reshape(-1)
                position += tensor.size
        self.round = start_round
        self.attempt = 1
        self.finished = start_round > config.rounds
        self.history: dict[int, RoundRecord] = {}
        #: The current round's model (safetensors bytes; ``global_vector`` is a view of its data): only
        #: the current one is kept (one model in memory, issue 19), never changed once made.
        self._models: dict[int, bytes | bytearray] = {start_round: initial}
        self._dp_rounds = epsilon_rounds
        #: A round being aggregated off the lock; a commit that failed (the aggregator stops).
        self._closing: _Closing | None = None
        self._fault: str | None = None
        #: ``checkpoint(next_round, dp_rounds, model, model_sha256)`` seals the next state aside and
        #: returns the function that puts it in place (called once the round is logged).
        self.checkpoint = checkpoint
        #: ``on_model(round, model, finished, model_sha256)``: a round's model now exists (aggregator.delivery).
        self.on_model: Callable[[int, bytes | bytearray, bool, bytes], None] | None = None
        #: Drift surveillance, quarantine and contributor value (``[task.drift]``, ``[task.contribution]``).
        self.surveillance = Surveillance(self.spec.parameter_count, config.drift, config.contribution)
        self.cards = CardRegistry(config.cards)  # the sites' dataset cards (aggregator/cards.py)
        self._warm_up()
        self._begin()

    # --- state --------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """Load (or compile) the strategy's kernels (and its wrappers': clipping, noise) now, at
        start, not inside the first upload."""
        size = 64
        aggregation = self.strategy.begin_round(size)
        for site in range(max(1, self.strategy.minimum_sites())):
            aggregation.add(np.full(size, site, np.float32), 1.0, site)
        aggregation.result()

    def _encode(self, vector: np.ndarray) -> bytes | bytearray:
        """The model's bytes: no copy when ``vector`` is a :func:`model_buffer`'s view (next_vector's)."""
        return model_bytes_of(vector, self.spec)

    def _begin(self) -> None:
        self._aggregation = self.strategy.begin_round(self.spec.parameter_count)
        #: The next model's data section, the round's sum when the rule can sum into it (made at
        #: the round's first update, :meth:`_first_update`, once the last round is let go).
        self._output: np.ndarray | None = None
        self._received: dict[str, dict[str, Any]] = {}
        self._deadline = time.time() + self.config.round_deadline
        self.history.setdefault(self.round, RoundRecord(self.round, self.attempt)).attempt = self.attempt
        self._snapshot = Task(
            self.round if not self.finished else self.config.rounds + 1,
            self.spec,
            int(self._deadline * 1000),
            self.finished,
            self.config.rounds,
            self.config.evaluate,
            attempt=self.attempt,
            compression=self.config.compression,
            adapters=self.config.adapters,
        )
        self.surveillance.begin(self.round, self.attempt)

    def _first_update(self) -> None:
        """Before a round's first update is added (under the lock): the next model's bytes, whose
        data section becomes the round's sum when the rule can sum into it (FedAvg, clipped or
        with DP); the close then adds the global model in place, and a round holds two models'
        worth, the current one and its sum. Made here, not when the round begins, so that the
        last round's model is no longer held (a download under way keeps its own view)."""
        _next, output = model_buffer(self.spec, self._model_buffers)  # every value written by the sum
        self._output = output if self._aggregation.use_output(output) else None

    def record(self, round_number: int) -> RoundRecord:
        return self.history.setdefault(round_number, RoundRecord(round_number, 1))

    def task(self) -> Task:
        """The open round (a snapshot replaced whole under the lock: read without it)."""
        return self._snapshot

    def model_bytes(self, round_number: int) -> bytes | bytearray:
        model = self._models.get(round_number)  # one dict lookup: atomic, no lock to wait for
        if model is None:
            raise UpdateRefused(
                f"no model for round {round_number} (current round {self.round})", grpc.StatusCode.NOT_FOUND
            )
        return model

    def final_model(self) -> dict[str, np.ndarray]:
        with self._lock:
            return unflatten(self.global_vector.copy(), self.spec)

    # --- updates ------------------------------------------------------------------------

    def check_upload(self, site_id: str, round_number: int, attempt: int) -> None:
        """A first check of an upload against the snapshot, without the lock (the event loop
        calls it before receiving the stream); :meth:`accept_update` checks again under it."""
        task = self._snapshot
        self._check_upload(site_id, round_number, attempt, task.round, task.attempt, task.finished)

    def _check_upload(
        self, site_id: str, round_number: int, attempt: int, open_round: int, open_attempt: int, finished: bool
    ) -> None:
        if self._fault is not None:
            raise UpdateRefused(f"the aggregator is stopping: {self._fault}", grpc.StatusCode.UNAVAILABLE)
        if finished:
            raise UpdateRefused("training is finished")
        if round_number != open_round:
            raise UpdateRefused(f"round {round_number} is not open (the open round is {open_round})")
        if attempt != open_attempt:
            raise UpdateRefused(
                f"attempt {attempt} of round {round_number} is not open (the open attempt is {open_attempt}): "
                "an update sealed for another attempt is never reused"
            )
        closing = self._closing
        if closing is not None and closing.round == round_number:
            raise UpdateRefused(f"round {round_number} is closing: its aggregate is being computed")
        if site_id in self._received:
            raise UpdateRefused(
                f"site {site_id!r} already submitted an update in round {round_number}",
                grpc.StatusCode.ALREADY_EXISTS,
            )
        self.cards.check_upload(site_id)  # a site whose dataset card does not match the task

    def accept_update(
        self,
        site_id: str,
        round_number: int,
        attempt: int,
        update: dict[str, np.ndarray] | StreamedUpdate,
        weight: float,
        digest: bytes,
        receipt: dict[str, Any],
    ) -> None:
        """Log the update's receipt (durably), then add the update to the round: if the log
        refuses, nothing is applied and the error propagates (no receipt is sent).

        ``update``: the tensors, or a :class:`aggregator.spool.StreamedUpdate` (checked already),
        read back piece by piece into the aggregate. An error while it is applied (a spooled
        block altered on disk) leaves the round half-applied: the driver then refuses everything
        and the round is never committed (the aggregator stops; a restart resumes from the last
        checkpoint)."""
        streamed = isinstance(update, StreamedUpdate)
        vector = None if isinstance(update, StreamedUpdate) else flatten(update, self.spec)
        with self._lock:
            self._check_upload(site_id, round_number, attempt, self.round, self.attempt, self.finished)
            self.events.record("update_accepted", **receipt)
            try:
                # held until the round closes (quarantine)
                if self.surveillance.observe(site_id, update if vector is None else vector, weight):
                    self._received[site_id] = {"weight": weight, "update_sha256": digest.hex()}
                    return
                site = len(self._received)
                if not self._received:
                    self._first_update()
                if isinstance(update, StreamedUpdate):
                    facts = self._aggregation.add_pieces(update, weight, site) or {}
                else:
                    assert vector is not None
                    facts = self._aggregation.add(vector, weight, site) or {}
            except Exception as exc:
                if not streamed:
                    raise
                # Logged but not applied whole: the round must never commit; the aggregator stops.
                self._fault = f"update of site {site_id!r} could not be applied: {type(exc).__name__}"
                raise FailStop(f"{self._fault}: {exc}") from exc
            self._received[site_id] = {"weight": weight, "update_sha256": digest.hex(), **facts}

    def close_if_complete(self) -> None:
        """Aggregate now when every live site (and at least the quorum) has submitted."""
        with self._lock:
            if (
                not self.finished
                and self._closing is None
                and self._fault is None
                and self._received
                and len(self._received) >= max(self.config.min_sites, self.live_sites())
            ):
                closing = self._take_round()
            else:
                return
        self._close_round(closing)

    def report_metrics(self, site_id: str, round_number: int, metrics: dict[str, float], examples: int) -> None:
        """A site's evaluation of the current round's model (the final model once training is
        finished), once per site and round."""
        with self._lock:
            current = self.config.rounds + 1 if self.finished else self.round
            if round_number != current:
                raise UpdateRefused(
                    f"metrics are accepted for the current round's model (round {current}), not round {round_number}"
                )
            record = self.record(round_number)
            if site_id in record.metrics:
                raise UpdateRefused(
                    f"site {site_id!r} already reported metrics for round {round_number}",
                    grpc.StatusCode.ALREADY_EXISTS,
                )
            self.events.record("metrics", site=site_id, round=round_number, metrics=metrics, examples=examples)
            record.metrics[site_id] = metrics
            record.examples[site_id] = max(0, examples)
            weighted = weighted_metrics(record.metrics, record.examples)
            per_site = dict(record.metrics)
            self.surveillance.on_metrics(self.events, site_id, round_number, metrics)
            risk = self.surveillance.risk = federation_risk(per_site)
        # Federated evaluation: the worst site and the largest subgroup gap first, then per-site and
        # example-weighted metrics of this round's model so far.
        self.events.record(
            "evaluation", round=round_number, **risk, per_site=per_site, weighted=weighted, sites=len(per_site)
        )

    def tick(self) -> None:
        """Close or retry the open round when its deadline has passed (called periodically)."""
        with self._lock:
            if self.finished or self._closing is not None or self._fault is not None or time.time() < self._deadline:
                return
            if len(self._received) < self.config.min_sites:
                self.events.record(
                    "round_retry",
                    round=self.round,
                    attempt=self.attempt,
                    received=len(self._received),
                    min_sites=self.config.min_sites,
                    reason="deadline passed without quorum",
                )
                self.attempt += 1
                self._begin()
                return
            closing = self._take_round()
        self._close_round(closing)

    def _take_round(self) -> _Closing:
        """Take the open round out of service (under the lock): its updates are final."""
        closing = _Closing(
            self._aggregation,
            dict(self._received),
            self.round,
            self.attempt,
            self._dp_rounds,
            self.global_vector,
            self._output,
        )
        self._closing = closing
        return closing

    def _close_round(self, closing: _Closing) -> None:
        """Aggregate, then commit (:meth:`_commit_round`). Aggregation, encoding and sealing
        (with its fsync) run without the round lock (the round is *closing*: no update joins it
        meanwhile); the log entry, the rename and the in-memory commit run under it. If any step
        fails nothing is applied, the error propagates (the aggregator stops) and the driver
        refuses every update from then on."""
        try:
            started = time.perf_counter()
            # Drift rules first: alerts and any quarantine are logged before the aggregate exists.
            self.surveillance.settle(
                self.events, closing.aggregation, closing.participants, self.strategy.minimum_sites()
            )
            # The (wrapped) strategy aggregates and accounts for privacy; the driver commits.
            aggregate = closing.aggregation.close(Privacy(closing.dp_rounds))
            vector = self.next_vector(closing, aggregate)
            elapsed = time.perf_counter() - started
            model = self._encode(vector)
            # Hashed once, on a helper thread while the checkpoint is sealed and written (which
            # takes the digest as its last step): SHA-256 and the disk overlap.
            hashing = _MODEL_HASHER.submit(lambda: hashlib.sha256(model).digest())
            next_round = closing.round + 1
            self.surveillance.after(
                self.events, aggregate.delta, finished=next_round > self.config.rounds, rounds=self.config.rounds
            )
            commit_checkpoint = (
                self.checkpoint(next_round, aggregate.privacy.rounds, model, hashing.result)
                if self.checkpoint is not None
                else None
            )
            with self._lock:
                self._commit_round(
                    closing, aggregate.privacy, vector, model, hashing.result(), elapsed, commit_checkpoint
                )
        except BaseException as exc:
            with self._lock:
                if self._closing is closing:  # not committed
                    self._fault = f"round {closing.round} could not be committed: {type(exc).__name__}"
            raise

    def next_vector(self, closing: _Closing, aggregate: Aggregate) -> np.ndarray:
        """The next round's model (1-D float32) from the closed round and its aggregate: the
        global model plus the aggregated delta. Runs without the round lock. A subclass may
        replace it (a leaf of a hierarchical federation forwards the aggregate to its parent and
        returns the parent's next model); ``closing.participants`` holds each update's weight."""
        out = closing.output
        if out is not None and aggregate.delta.ctypes.data == out.ctypes.data and aggregate.delta.size == out.size:
            np.add(out, closing.global_vector, out=out)  # the mean is in the next model's bytes already
            return out
        _model, vector = model_buffer(self.spec, self._model_buffers)  # the next model's bytes, all written here
        np.add(closing.global_vector, aggregate.delta, out=vector)
        return vector

    def _commit_round(
        self,
        closing: _Closing,
        privacy: Privacy,
        vector: np.ndarray,
        model: bytes | bytearray,
        model_sha256: bytes,
        elapsed: float,
        commit_checkpoint: Callable[[], Any] | None,
    ) -> None:
        """Commit in this order (under the lock): the sealed checkpoint of the next state was
        written aside, the ``round`` entry is logged durably, the checkpoint is put in place, and
        only then does the in-memory state move on: a round is never applied twice or half."""
        digest = model_sha256.hex()
        epsilon = privacy.epsilon
        dp_rounds = privacy.rounds
        next_round = closing.round + 1
        finished = next_round > self.config.rounds
        participants = closing.participants
        self.events.record(
            "round",
            round=closing.round,
            attempt=closing.attempt,
            participants=participants,
            model_sha256=digest,
            **self.strategy.round_fields(),
            epsilon=epsilon,
            aggregation_seconds=round(elapsed, 6),
        )
        if commit_checkpoint is not None:
            commit_checkpoint()
        # Commit in memory: nothing below can fail for lack of disk.
        record = self.record(closing.round)
        record.participants = participants
        record.model_sha256 = digest
        record.epsilon = epsilon
        record.aggregation_seconds = elapsed
        record.attempt = closing.attempt
        self.global_vector = vector
        self._dp_rounds = dp_rounds
        self.round = next_round
        self.attempt = 1
        self._models = {self.round: model}  # the previous model is freed (a download under way keeps its view)
        if self.on_model is not None:
            self.on_model(self.round, model, finished, model_sha256)
        self.finished = finished
        self._closing = None
        self._begin()
        if finished:
            self.events.record("training_finished", rounds=self.config.rounds, model_sha256=digest)

    @property
    def dp_rounds(self) -> int:
        return self._dp_rounds

    def report_card(
        self, site_id: str, round_number: int, session: bytes, identity: bytes, text: str, signature: bytes
    ) -> None:
        """A site's signed dataset card (aggregator/cards.py), sent with its metrics report: at most
        one per site and round (checked before anything is logged: a card cannot grow the log
        faster than the metrics it comes with)."""
        with self._lock:
            current = self.config.rounds + 1 if self.finished else self.round
            if round_number != current or site_id in self.record(round_number).metrics:
                raise UpdateRefused(
                    f"a dataset card comes with the site's one metrics report of the current round ({current})"
                )
            for alert in self.cards.accept(
                self.events,
                site=site_id,
                round_number=round_number,
                session=session,
                identity=identity,
                text=text,
                signature=signature,
            ):
                self.surveillance.raise_alert(self.events, alert)

    def publish_card(self, site_id: str, session: bytes, identity: bytes, text: str, signature: bytes) -> bool:
        """A site's signed dataset card right after its admission (``PublishCard``,
        aggregator/card_calls.py), before any update: a schema mismatch refuses the site here."""
        with self._lock:
            current = self.config.rounds + 1 if self.finished else self.round
            logged, alerts = self.cards.publish(
                self.events,
                site=site_id,
                round_number=current,
                session=session,
                identity=identity,
                text=text,
                signature=signature,
            )
            for alert in alerts:
                self.surveillance.raise_alert(self.events, alert)
            return logged

    def visible_cards(self, site_id: str) -> tuple[list[Any], bool]:
        """The dataset cards ``site_id`` may fetch (``ListCards``; ``[task.cards] share_with_sites``)."""
        with self._lock:
            return self.cards.visible(site_id)

    def intelligence_state(self) -> dict[str, Any]:
        """For the sealed checkpoint: drift surveillance, contributor value and the latest cards."""
        with self._lock:
            return {"surveillance": self.surveillance.state(), "cards": self.cards.state()}

    def restore_intelligence(self, state: dict[str, Any]) -> None:
        """Take back :meth:`intelligence_state` from the checkpoint this driver resumed from."""
        with self._lock:
            if state.get("surveillance") is not None:
                self.surveillance.restore(state["surveillance"], self.round, self.attempt)
            if state.get("cards") is not None:
                self.cards.restore(state["cards"])

"""The round driver never blocks the event loop (issue 19): aggregation, encoding, checkpoint
sealing and fsync run on executor threads without the round lock, and what the event loop's
thread asks of the driver (the task, a model, an upload's first check) never waits for them.

The slow aggregation is a strategy whose combine step waits (releasing the GIL, as numpy's
kernels do) — in the unit tests until the test lets it go, in the federation for a few
seconds — installed the way any third-party strategy is (an entry point of a distribution on
``PYTHONPATH``), so the real ``attestfl serve`` runs it."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator.rounds import RoundDriver, TaskConfig
from aggregator.service import UpdateRefused
from aggregator.strategies import RoundAggregation, StackedAggregation, Strategy
from enclave.simulated.attester import SimulatedSnpAttester
from federation import Deployment, run_aggregator
from protocol.tensors import ModelSpec, flatten

MODEL = {"w": np.zeros((10, 20), np.float32), "b": np.zeros(20, np.float32)}  # 220 values


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def record(self, kind: str, **fields: Any) -> None:
        self.seen.append((kind, fields))


#: The test's hold on :class:`GatedMean` (a strategy is copied as a value: no events in its fields).
GATE, STARTED = threading.Event(), threading.Event()


@dataclass(frozen=True)
class GatedMean(Strategy):
    """A weighted mean whose combine step waits for :data:`GATE` (a stand-in for a large model's
    aggregation); the start-up warm-up (64 values) does not wait."""

    name = "gated_mean"

    def begin_round(self, size: int) -> RoundAggregation:
        def combine(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
            if stack.shape[1] != 64:
                STARTED.set()
                assert GATE.wait(30), "the test never let the aggregation finish"
            return np.average(stack, axis=0, weights=weights)

        return StackedAggregation(size, combine)


def update(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, value, np.float32) for k, v in MODEL.items()}


def submit(d: RoundDriver, site: str, value: float) -> None:
    digest = hashlib.sha256(site.encode()).digest()
    d.accept_update(site, d.round, d.attempt, update(value), 1.0, digest, {"site": site, "update_sha256": digest.hex()})


def gated_driver(**kwargs: Any) -> tuple[RoundDriver, Events, threading.Event, threading.Event]:
    GATE.clear()
    STARTED.clear()
    config = TaskConfig(initial_model=MODEL, strategy=GatedMean(), **kwargs)
    config.validate()
    events = Events()
    return RoundDriver(config, events=events), events, GATE, STARTED


def prompt(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, asserting it returned within 0.5 s (it waits for no lock held by a closer)."""
    began = time.perf_counter()
    result = fn(*args)
    assert time.perf_counter() - began < 0.5, f"{fn.__name__} waited for the aggregation"
    return result


def test_the_driver_answers_while_a_round_is_aggregated() -> None:
    d, events, gate, started = gated_driver(rounds=2, min_sites=2)
    submit(d, "a", 1.0)
    submit(d, "b", 3.0)
    closer = threading.Thread(target=d.close_if_complete)
    closer.start()
    try:
        assert started.wait(10)
        # everything the event loop's thread calls, while the aggregation runs
        task = prompt(d.task)
        assert (task.round, task.attempt, task.finished) == (1, 1, False)
        assert prompt(d.model_bytes, 1)
        with pytest.raises(UpdateRefused, match="round 1 is closing"):
            prompt(d.check_upload, "c", 1, 1)
        with pytest.raises(UpdateRefused, match="round 1 is closing"):  # no update joins an aggregate already taken
            prompt(submit, d, "c", 5.0)
        prompt(d.tick)  # a deadline cannot close (or retry) a round twice
        prompt(d.close_if_complete)
        prompt(d.report_metrics, "a", 1, {"accuracy": 0.5}, 10)  # metrics of the round's model still count
        assert [kind for kind, _ in events.seen].count("round") == 0
    finally:
        gate.set()
        closer.join(10)
    assert not closer.is_alive()
    assert d.round == 2 and d.task().round == 2
    assert [fields["participants"].keys() for kind, fields in events.seen if kind == "round"] == [{"a", "b"}]
    np.testing.assert_allclose(flatten(d.final_model(), d.spec), 2.0)
    submit(d, "c", 1.0)  # the next round is open


def test_a_round_that_cannot_be_committed_refuses_everything_after() -> None:
    class FullDisk(Events):
        def record(self, kind: str, **fields: Any) -> None:
            if kind == "round":
                raise OSError(28, "No space left on device")
            super().record(kind, **fields)

    GATE.set()
    config = TaskConfig(initial_model=MODEL, strategy=GatedMean(), rounds=2, min_sites=1)
    d = RoundDriver(config, events=FullDisk())
    submit(d, "a", 1.0)
    with pytest.raises(OSError):
        d.close_if_complete()
    assert d.round == 1 and not d.history[1].participants  # nothing applied
    with pytest.raises(UpdateRefused, match="could not be committed"):
        d.check_upload("b", 1, 1)
    d.close_if_complete()  # nothing to close again
    d.tick()


# --- the real aggregator: a handshake while a large aggregation runs -----------------------------

SLOW_SECONDS = 10.0

PLUGIN = '''
"""A weighted mean that takes SECONDS to combine (the GIL free meanwhile, as in numpy's kernels)."""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aggregator.strategies import RoundAggregation, StackedAggregation, Strategy

MARK = Path({mark!r})
SECONDS = {seconds!r}


def _combine(stack, weights):
    if stack.shape[1] != 64:  # not the start-up warm-up
        written = MARK.with_suffix(".tmp")
        written.write_text(str(time.time()))
        written.replace(MARK)  # whole: the test reads the mark as soon as it exists
        time.sleep(SECONDS)
    return np.average(stack, axis=0, weights=weights)


@dataclass(frozen=True)
class SlowMean(Strategy):
    name = "slow_mean"

    def begin_round(self, size: int) -> RoundAggregation:
        return StackedAggregation(size, _combine)
'''


@pytest.fixture
def slow_strategy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The distribution ``slow-strategy`` importable by the processes the test starts; yields
    the file the strategy writes when its aggregation starts."""
    directory = tmp_path / "plugins"
    directory.mkdir()
    mark = tmp_path / "aggregation-started"
    (directory / "slow_strategy.py").write_text(PLUGIN.format(mark=str(mark), seconds=SLOW_SECONDS))
    info = directory / "slow_strategy-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slow-strategy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[attestfl.strategies]\nslow_mean = slow_strategy:SlowMean\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")])))
    yield mark
    sys.modules.pop("slow_strategy", None)


def test_a_handshake_completes_while_a_large_aggregation_runs(slow_strategy: Path, tmp_path: Path) -> None:
    deployment = Deployment(
        tmp_path / "deployment",
        tmp_path / "sim",
        sites={"site-a": "", "site-b": ""},
        task='rounds = 2\nmin_sites = 1\nround_deadline = "120s"\n[task.strategy]\nname = "slow_mean"',
    )
    deployment.directory.mkdir()
    for aggregator in run_aggregator(deployment):

        def client(site: str, aggregator: Any = aggregator) -> Any:
            return deployment.client(aggregator.target, site_id=site, attester=SimulatedSnpAttester(deployment.sim_dir))

        a, b = client("site-a"), client("site-b")
        began = time.perf_counter()
        a.join()
        baseline = time.perf_counter() - began
        spec = ModelSpec.from_json(a.task().model_spec)
        a.download_model(1, spec)
        half = {name: np.full(array.shape, 0.5, np.float32) for name, array in deployment.model.items()}
        a.upload_update(1, half, weight=1)
        deadline = time.time() + 30
        while not slow_strategy.exists() and time.time() < deadline:  # the round closes: its only live site uploaded
            time.sleep(0.02)
        assert slow_strategy.exists(), "the aggregation did not start"
        aggregation_started = float(slow_strategy.read_text())
        began = time.perf_counter()
        b.join()  # GetChallenge, Admit: attested, while the aggregation runs
        handshake = time.perf_counter() - began
        task = b.task()
        answered = time.time()
        # On a driver that holds the event loop during aggregation the handshake ends after it (>= 10 s);
        # here it ends long before (a loaded machine makes a handshake take seconds: the margin is wide).
        assert answered - aggregation_started < SLOW_SECONDS - 3, ("the handshake waited", handshake, baseline)
        assert task.round == 1  # asked during the aggregation: round 1 is still the open one
        deadline = time.time() + 30
        while a.task().round == 1 and time.time() < deadline:
            time.sleep(0.1)
        assert a.task().round == 2
        for site in (a, b):
            site.close()
    rounds = [e for e in aggregator.events() if e["message"] == "round"]
    assert rounds and rounds[0]["strategy"] == {"name": "slow_mean"}

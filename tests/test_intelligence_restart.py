"""Federation intelligence survives an aggregator restart: the drift-surveillance and
contributor-value state (and the sites' latest dataset cards) ride in the sealed checkpoint
(version 2; version 1 is still read), so a federation whose aggregator is killed mid-round and
restarted releases the same contributor values as one that ran uninterrupted (a real
``attestfl serve``, killed with SIGKILL)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aggregator.checkpoint import (
    FILE_NAME,
    MAGIC,
    PURPOSE,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from aggregator.surveillance import (
    ContributionPolicy,
    DriftRules,
    Surveillance,
    SurveillanceConfigError,
    read_contribution,
)
from enclave.sealing import SimulatedSealingKey
from tests.federation import Deployment

SITES = ("site-a", "site-b", "site-c")
TASK = """rounds = 3
min_sites = 3
round_deadline = "120s"
[task.drift]
norm_ratio = 3.0
metric_drop = 0.2
[task.contribution]
release = "final"
seed = 11
permutations = 6
"""


def _seal_raw(state: Path, sealing: SimulatedSealingKey, fields: dict[str, Any]) -> None:
    state.mkdir(parents=True, exist_ok=True)
    nonce = os.urandom(12)
    body = cbor2.dumps(fields, canonical=True)
    (state / FILE_NAME).write_bytes(MAGIC + nonce + AESGCM(sealing.key(PURPOSE)).encrypt(nonce, body, MAGIC))


def test_checkpoint_version_2_carries_intelligence_and_version_1_is_still_read(tmp_path: Path) -> None:
    sealing, state = SimulatedSealingKey(tmp_path, b"\x01" * 48), tmp_path / "state"
    saved = Checkpoint(3, 0, b"model", "2026-11-30T00:00:00+00:00", {"surveillance": {"quarantined": 2}})
    save_checkpoint(state, sealing, saved)
    assert load_checkpoint(state, sealing) == saved
    old = {"version": 1, "round": 2, "dp_rounds": 1, "model": b"m", "created": "2026-11-01T00:00:00+00:00"}
    _seal_raw(state, sealing, old)
    assert load_checkpoint(state, sealing) == Checkpoint(2, 1, b"m", "2026-11-01T00:00:00+00:00", None)
    _seal_raw(state, sealing, {**old, "version": 3})
    with pytest.raises(CheckpointError, match="version 3"):
        load_checkpoint(state, sealing)
    _seal_raw(state, sealing, {**old, "version": 2, "intelligence": [1]})
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(state, sealing)


class _Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def record(self, kind: str, **fields: Any) -> None:
        self.seen.append((kind, fields))


class _Sum:
    def __init__(self) -> None:
        self.total = np.zeros(40)

    def add(self, vector: np.ndarray, weight: float, index: int) -> None:
        self.total += vector


def _round(s: Surveillance, events: _Events, r: int, rounds: int, *, begin: bool = True) -> None:
    rng = np.random.default_rng(r)
    base = rng.normal(size=40)
    updates = {"a": base + 0.1 * rng.normal(size=40), "b": base + 0.1 * rng.normal(size=40), "c": -base}
    if begin:  # the driver opens the round (a restored driver opened it in restore())
        s.begin(r, 1)
    for site, vector in updates.items():
        s.observe(site, vector, 10.0)
    s.on_metrics(events, "a", r, {"accuracy": 0.9 - 0.3 * (r == 3)})
    s.settle(events, _Sum(), {site: {"weight": 10.0} for site in updates}, 1)
    s.after(events, np.mean(list(updates.values()), axis=0), finished=r == rounds, rounds=rounds)


def test_surveillance_state_restored_goes_on_as_if_uninterrupted() -> None:
    policy = ContributionPolicy(permutations=6, sample=16, seed=5)  # a sample of 16 of 40 coordinates: rng-bound
    drift = DriftRules(metric_drop=0.2, min_sites=3)
    whole, events = Surveillance(40, drift, policy), _Events()
    for r in (1, 2, 3):
        _round(whole, events, r, 3)
    first, events2 = Surveillance(40, drift, policy), _Events()
    _round(first, events2, 1, 3)
    state = first.state()
    resumed = Surveillance(40, drift, ContributionPolicy(permutations=6, sample=16))  # fresh rng, restored
    resumed.begin(2, 1)
    resumed.restore(state, 2, 1)
    for r in (2, 3):
        _round(resumed, events2, r, 3, begin=r != 2)
    assert resumed.released == whole.released and resumed.released is not None
    assert [k for k, _ in events2.seen].count("drift_alert") == [k for k, _ in events.seen].count("drift_alert") >= 1

    def stats(seen: list[tuple[str, dict]]) -> list[dict]:
        return [f for k, f in seen if k == "surveillance" and f["round"] >= 2]

    assert stats(events2.seen) == stats(events.seen)  # each site's metric change needs its restored last metric
    assert stats(events.seen)[0]["sites"]["a"]["accuracy_change"] == 0.0
    with pytest.raises(SurveillanceConfigError, match="predictable"):
        read_contribution({"seed": 1, "epsilon": 1.0})


def _upload_round(clients: dict, r: int, sites: tuple[str, ...]) -> None:
    rng = np.random.default_rng(100 + r)
    base = {
        "dense.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "dense.bias": rng.normal(size=3).astype(np.float32),
    }
    scale = {"site-a": 1.0, "site-b": 1.1, "site-c": -2.0}  # site-c pulls the other way
    for site in sites:
        client = clients[site]
        deadline = time.time() + 60
        while (task := client.task()).round != r:
            assert time.time() < deadline, f"round {r} never opened for {site}"
            time.sleep(0.1)
        update = {name: (array * scale[site]).astype(np.float32) for name, array in base.items()}
        client.upload_update(r, update, 100.0, attempt=task.attempt)


def _finished(aggregator: Any) -> list[dict]:
    deadline = time.time() + 60
    while time.time() < deadline:
        events = aggregator.events()
        if any(e["message"] == "training_finished" for e in events):
            return events
        time.sleep(0.2)
    raise AssertionError("training did not finish")


def _release(events: list[dict]) -> dict:
    (release,) = [e for e in events if e["message"] == "contribution_release"]
    return {k: release[k] for k in ("values", "ranking", "rounds", "sensitivity")}


def test_contribution_release_after_a_restart_mid_federation_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    def deployment(name: str) -> Deployment:
        (tmp_path / name).mkdir()
        return Deployment(tmp_path / name, tmp_path / "vendor", sites=dict.fromkeys(SITES, ""), task=TASK)

    clean = deployment("clean")
    aggregator = clean.start()
    try:
        with (
            clean.client(aggregator.target, site_id="site-a") as a,
            clean.client(aggregator.target, site_id="site-b") as b,
            clean.client(aggregator.target, site_id="site-c") as c,
        ):
            clients = {"site-a": a, "site-b": b, "site-c": c}
            for client in clients.values():
                client.join()
            for r in (1, 2, 3):
                _upload_round(clients, r, SITES)
            uninterrupted = _release(_finished(aggregator))
    finally:
        aggregator.stop()

    restarted = deployment("restarted")
    first = restarted.start()
    try:
        with (
            restarted.client(first.target, site_id="site-a") as a,
            restarted.client(first.target, site_id="site-b") as b,
            restarted.client(first.target, site_id="site-c") as c,
        ):
            clients = {"site-a": a, "site-b": b, "site-c": c}
            for client in clients.values():
                client.join()
            _upload_round(clients, 1, SITES)
            _upload_round(clients, 2, SITES[:2])  # round 2 has two of its three updates ...
        first.process.kill()  # ... when the aggregator is killed
        first.process.wait()
    finally:
        first.stop()
    second = restarted.start()
    try:
        with (
            restarted.client(second.target, site_id="site-a") as a,
            restarted.client(second.target, site_id="site-b") as b,
            restarted.client(second.target, site_id="site-c") as c,
        ):
            clients = {"site-a": a, "site-b": b, "site-c": c}
            for client in clients.values():
                client.join()
            for r in (2, 3):
                _upload_round(clients, r, SITES)
            events = _finished(second)
    finally:
        second.stop()
    assert [e["resumed_round"] for e in events if e["message"] == "restart"] == [2]
    assert [e["round"] for e in events if e["message"] == "round"] == [2, 3]
    assert _release(events) == uninterrupted
    assert uninterrupted["ranking"][-1] == "site-c" and uninterrupted["rounds"] == 3

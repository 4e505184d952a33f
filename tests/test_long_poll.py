"""Waiting for the next task (a GetTask long poll) against a real `attestfl serve`: a site that
sent its update asks for the task past its round and is answered when the round closes, not
before and not a poll interval later; the aggregator bounds how long it holds such a call,
answers at once when the task is already elsewhere, and a waiting site does not delay a stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from federation import MODEL, Aggregator, Deployment, run_aggregator
from fedsite.client import SiteClient
from protocol.wire import federation_pb2 as pb

#: The aggregator's longest hold (aggregator.gate.Limits.task_wait).
TASK_WAIT = 1.5


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment(
        tmp_path_factory.mktemp("deployment"),
        tmp_path_factory.mktemp("simulated-vendor"),
        sites={"site-a": "", "site-b": ""},
        task='rounds = 3\nmin_sites = 2\nround_deadline = "600s"',
    )


@pytest.fixture(scope="module")
def aggregator(deployment: Deployment) -> Iterator[Aggregator]:
    yield from run_aggregator(deployment)


@pytest.fixture(scope="module")
def sites(deployment: Deployment, aggregator: Aggregator) -> dict[str, SiteClient]:
    clients = {name: deployment.client(aggregator.target, site_id=name, timeout=30) for name in ("site-a", "site-b")}
    for client in clients.values():
        client.join()
    return clients


def delta(value: float) -> dict[str, np.ndarray]:
    return {name: np.full(array.shape, value, np.float32) for name, array in MODEL.items()}


def timed_task(client: SiteClient, **options: Any) -> tuple[pb.TaskResponse, float]:
    started = time.monotonic()
    task = client.task(**options)
    return task, time.monotonic() - started


def test_a_waiting_site_is_answered_when_the_round_closes(sites: dict[str, SiteClient]) -> None:
    a, b = sites["site-a"], sites["site-b"]
    task = a.task()
    assert task.waits, "this aggregator holds long polls"
    current = (int(task.round), int(task.attempt))
    a.upload_update(current[0], delta(0.1), weight=1, attempt=current[1])
    answered: dict[str, Any] = {}

    def wait() -> None:
        answered["task"], answered["seconds"] = timed_task(a, after=current, wait=5.0)
        answered["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.6)  # the round is still open: site-b has not sent
    assert waiter.is_alive(), "the aggregator answered before the task moved on"
    b.upload_update(current[0], delta(0.3), weight=1, attempt=current[1])  # the last update: the round closes
    receipt_at = time.monotonic()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert int(answered["task"].round) == current[0] + 1, "the answer is the next round's task"
    # answered as the round closed: well before the aggregator's own limit on a hold ran out
    assert answered["at"] - receipt_at < 1.0, answered
    assert answered["seconds"] >= 0.6


def test_a_hold_is_bounded_by_the_aggregator(sites: dict[str, SiteClient]) -> None:
    a = sites["site-a"]
    task = a.task()
    current = (int(task.round), int(task.attempt))
    again, seconds = timed_task(a, after=current, wait=30.0)  # the site asks for 30 s
    assert (int(again.round), int(again.attempt)) == current, "nothing moved: the same task"
    assert TASK_WAIT - 0.2 <= seconds < TASK_WAIT + 2.0, seconds


def test_no_hold_when_the_task_is_already_past(sites: dict[str, SiteClient]) -> None:
    a = sites["site-a"]
    task, seconds = timed_task(a, after=(0, 1), wait=30.0)  # round 0 is long past
    assert int(task.round) >= 1
    assert seconds < 1.0, seconds
    _task, seconds = timed_task(a)  # no `after`: a plain request, answered at once
    assert seconds < 1.0, seconds


def test_a_waiting_site_does_not_delay_a_stop(sites: dict[str, SiteClient], aggregator: Aggregator) -> None:
    a = sites["site-a"]
    task = a.task()
    current = (int(task.round), int(task.attempt))
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            outcome["task"] = a.task(after=current, wait=30.0)
        except Exception as exc:  # noqa: BLE001 - whatever ends the call when the server goes
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    stopping = time.monotonic()
    aggregator.stop()
    stopped = time.monotonic() - stopping
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert stopped < 5.0, f"stopping took {stopped:.1f} s with a site waiting"
    # answered as the stop began, not when the hold would have run out (1.4 s later)
    assert outcome["at"] - stopping < 1.0, outcome
    assert aggregator.process.returncode == 0

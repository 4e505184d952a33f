"""``attestfl serve``'s round table (aggregator/progress.py) over a real RoundDriver: a line per
round once the sites that trained it evaluated its model, JSON lines with ``--progress json``,
and "finished" (for --exit-when-finished) only after the last line."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from aggregator import progress
from aggregator.progress import RoundTable
from aggregator.rounds import RoundDriver, TaskConfig

MODEL = {"w": np.zeros(4, np.float32)}


def train_round(driver: RoundDriver, sites: tuple[str, ...], accuracy: float) -> None:
    r = driver.round
    for site in sites:
        driver.report_metrics(site, r, {"accuracy": accuracy, "loss": 1 - accuracy}, 10)
    for site in sites:
        driver.accept_update(site, r, 1, {"w": np.ones(4, np.float32)}, 1.0, b"\0" * 32, {"site": site})
    driver.close_if_complete()


@pytest.mark.parametrize("form", ["table", "json"])
def test_a_line_per_round_once_its_model_is_evaluated(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LINGER_SECONDS", 0.0)
    driver = RoundDriver(TaskConfig(initial_model=MODEL, rounds=2, min_sites=2))
    out = io.StringIO()
    table = RoundTable(driver, out, form)
    sites = ("a", "b")
    train_round(driver, sites, 0.5)
    table.update()
    assert out.getvalue() == ""  # round 1's model is not evaluated yet
    train_round(driver, sites, 0.7)  # evaluates round 1's model, then trains round 2
    table.update()
    assert driver.finished and not table.finished()
    for site in sites:  # the final model's evaluation
        driver.report_metrics(site, 3, {"accuracy": 0.9, "loss": 0.1}, 10)
    table.update()
    assert table.finished()
    lines = out.getvalue().splitlines()
    if form == "json":
        rows = [json.loads(line) for line in lines]
        assert [(r["round"], r["sites"], r["metrics"]["accuracy"]) for r in rows] == [(1, 2, 0.7), (2, 2, 0.9)]
        assert all(len(r["model_sha256"]) == 64 for r in rows)
    else:
        assert lines[0].split() == ["round", "sites", "accuracy", "loss", "seconds"]
        cells = [line.split()[:4] for line in lines[1:]]
        assert cells == [["1", "2", "0.7000", "0.3000"], ["2", "2", "0.9000", "0.1000"]]


def test_the_last_round_is_done_after_the_grace_period_without_evaluations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LINGER_SECONDS", 0.0)
    monkeypatch.setattr(progress, "FINAL_METRICS_GRACE_SECONDS", -1.0)
    driver = RoundDriver(TaskConfig(initial_model=MODEL, rounds=1, min_sites=1))
    out = io.StringIO()
    table = RoundTable(driver, out, "none")
    train_round(driver, ("a",), 0.5)
    table.update()
    table.update()
    assert table.finished() and out.getvalue() == ""


def test_a_closed_stdout_stops_the_table_not_the_aggregator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "FINAL_METRICS_GRACE_SECONDS", -1.0)
    driver = RoundDriver(TaskConfig(initial_model=MODEL, rounds=1, min_sites=1))
    out = io.StringIO()
    out.close()  # like `attestfl serve | head -1` after head exits
    table = RoundTable(driver, out, "table")
    train_round(driver, ("a",), 0.5)
    table.update()
    table.update()
    assert table.out is None and driver.finished

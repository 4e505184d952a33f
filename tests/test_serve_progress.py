"""``attestfl serve``'s round table (aggregator/progress.py) over a real RoundDriver: a line per
round once the sites that trained it evaluated its model, JSON lines with ``--progress json``,
and "finished" (for --exit-when-finished) only after the last line."""

from __future__ import annotations

import hashlib
import io
import itertools
import json

import numpy as np
import pytest

from aggregator import progress
from aggregator.progress import RoundTable
from aggregator.rounds import RoundDriver, TaskConfig
from protocol.tensors import encode_tensors

MODEL = {"w": np.zeros(4, np.float32)}


def train_round(driver: RoundDriver, sites: tuple[str, ...], accuracy: float) -> None:
    r = driver.round
    for site in sites:
        driver.report_metrics(site, r, {"accuracy": accuracy, "loss": 1 - accuracy}, 10)
    for site in sites:
        driver.accept_update(site, r, 1, {"w": np.ones(4, np.float32)}, 1.0, b"\0" * 32, {"site": site})
    driver.close_if_complete()


@pytest.mark.parametrize("form", ["table", "json"])
def test_a_line_per_round_then_the_final_model(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Round r's line shows its model (the one before its training, as the sites evaluated it at
    its start, as in metrics.csv and the audit log's metrics entries); the final model is round 3."""
    monkeypatch.setattr(progress, "LINGER_SECONDS", 0.0)
    driver = RoundDriver(TaskConfig(initial_model=MODEL, rounds=2, min_sites=2))
    out = io.StringIO()
    table = RoundTable(driver, out, form)
    sites = ("a", "b")
    table.update()
    assert out.getvalue() == ""  # round 1 is open
    train_round(driver, sites, 0.5)  # evaluates round 1's model (the initial one), trains round 1
    table.update()
    assert len(out.getvalue().splitlines()) == (2 if form == "table" else 1)
    train_round(driver, sites, 0.7)
    table.update()
    assert driver.finished and not table.finished()  # the final model is not evaluated yet
    for site in sites:  # the final model's evaluation
        driver.report_metrics(site, 3, {"accuracy": 0.9, "loss": 0.1}, 10)
    table.update()
    assert table.finished()
    lines = out.getvalue().splitlines()
    if form == "json":
        rows = [json.loads(line) for line in lines]
        got = [(r["round"], r["sites"], r["metrics"]["accuracy"]) for r in rows]
        assert got == [(1, 2, 0.5), (2, 2, 0.7), (3, 2, 0.9)]
        assert [r.get("final", False) for r in rows] == [False, False, True]
        assert rows[0]["model_sha256"] == hashlib.sha256(encode_tensors(MODEL)).hexdigest()  # the initial model
        for earlier, later in itertools.pairwise(rows):  # round r + 1's model is what round r produced
            assert later["model_sha256"] == driver.history[earlier["round"]].model_sha256
        assert rows[-1]["seconds"] is None and rows[-1]["participants"] == ["a", "b"]
    else:
        assert lines[0].split() == ["round", "sites", "accuracy", "loss", "seconds"]
        cells = [line.split()[:4] for line in lines[1:]]
        assert cells == [["1", "2", "0.5000", "0.5000"], ["2", "2", "0.7000", "0.3000"], ["3", "2", "0.9000", "0.1000"]]
        assert lines[-1].split()[4:] == ["-", "final", "model"]


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

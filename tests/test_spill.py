"""Robust aggregation over spilled, sealed updates read back in column blocks (aggregator/spill.py):
the same results as the in-memory kernels, bounded memory, and a disk that cannot alter them."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import native
from aggregator.spill import (
    SpilledStack,
    SpillError,
    spilled_krum,
    spilled_median,
    spilled_trimmed_mean,
)
from aggregator.strategies import Privacy, SpillingAggregation


def _stack(n: int, p: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = rng.standard_normal((n, p), dtype=np.float32)
    stack[0] *= 50  # an outlier
    return stack


def _spilled(stack: np.ndarray, directory: Path, block: int) -> SpilledStack:
    spilled = SpilledStack(stack.shape[1], directory, block)
    for row in stack:
        spilled.append(row)
    return spilled


@pytest.mark.parametrize(("n", "p", "block"), [(5, 1000, 64), (7, 4097, 4096), (10, 3 * 1024 + 1, 1000), (4, 10, 100)])
def test_the_same_results_as_the_in_memory_kernels(n: int, p: int, block: int, tmp_path: Path) -> None:
    stack = _stack(n, p, seed=n * p)
    with _spilled(stack, tmp_path, block) as spilled:
        np.testing.assert_array_equal(spilled_median(spilled), native.coordinate_median(stack))
        np.testing.assert_array_equal(spilled_trimmed_mean(spilled, 0.2), native.trimmed_mean(stack, 0.2))
        if n >= 5:
            for f, m in ((1, 1), (1, 3)):
                got, selected = spilled_krum(spilled, f, m)
                want, want_selected = native.krum(stack, f, m)
                np.testing.assert_array_equal(selected, want_selected)
                np.testing.assert_array_equal(got, want)


def test_the_disk_sees_ciphertext_and_cannot_alter_a_block(tmp_path: Path) -> None:
    stack = np.tile(np.arange(256, dtype=np.float32), (3, 1))
    spilled = _spilled(stack, tmp_path, 64)
    handle = spilled._file  # the unlinked file: nothing is left in the directory
    assert os.listdir(tmp_path) == []
    raw = os.pread(handle.fileno(), 1 << 20, 0)
    assert stack[0].tobytes()[:64] not in raw
    np.testing.assert_array_equal(spilled.column_block(1), stack[:, 64:128])
    # swap two sealed blocks on disk (same length): both are refused, not read as the other
    first, second = spilled._span(0, 0), spilled._span(1, 0)
    a, b = raw[first[0] : first[1]], raw[second[0] : second[1]]
    os.pwrite(handle.fileno(), b, first[0])
    os.pwrite(handle.fileno(), a, second[0])
    spilled._close_map()
    with pytest.raises(SpillError, match="altered on disk"):
        spilled.column_block(0)
    spilled.close()


def test_a_round_aggregation_in_bounded_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n, p, block = 12, 400_000, 1 << 14
    monkeypatch.setenv("ATTESTFL_SPILL_DIR", str(tmp_path))

    def in_memory(stack: np.ndarray, _weights: np.ndarray) -> np.ndarray:  # never called: budget 0
        return native.coordinate_median(stack)

    aggregation = SpillingAggregation(p, in_memory, lambda stack, _w: spilled_median(stack), budget=0, block=block)
    rng = np.random.default_rng(1)
    native.coordinate_median(np.ones((n, block), np.float32))  # compiled (or loaded) before counting
    tracemalloc.start()
    for site in range(n):
        update = rng.standard_normal(p, dtype=np.float32)
        aggregation.add(update, 1.0, site)
        del update
    result = aggregation.close(Privacy()).delta
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.shape == (p,) and aggregation.count == n
    # far below N x model (19.2 MB): one update in flight, the result, one column block of all N
    assert peak < 4 * (4 * p) + 4 * n * block * 4, peak


def test_a_non_finite_update_is_refused_before_it_is_spilled(tmp_path: Path) -> None:
    aggregation = SpillingAggregation(
        8, lambda stack, _w: native.coordinate_median(stack), lambda stack, _w: spilled_median(stack), budget=0
    )
    bad = np.ones(8, np.float32)
    bad[3] = np.inf
    with pytest.raises(native.NonFiniteUpdateError):
        aggregation.add(bad, 1.0, 4)
    assert aggregation.count == 0
    with pytest.raises(SpillError, match="values"):
        SpilledStack(8, tmp_path).append(np.ones(9, np.float32))


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum"])
def test_a_robust_round_past_the_budget_spills_and_gives_the_same_model(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aggregator.rounds import RoundDriver, TaskConfig
    from aggregator.strategies import make_strategy

    model = {"w": np.zeros((300, 7), np.float32), "b": np.zeros(7, np.float32)}
    stack = _stack(7, 2107, seed=5)

    class Quiet:
        def record(self, kind: str, **fields: object) -> None:
            pass

    def final(budget: str) -> tuple[np.ndarray, bool]:
        monkeypatch.setenv("ATTESTFL_SPILL_BYTES", budget)
        monkeypatch.setenv("ATTESTFL_SPILL_DIR", str(tmp_path))
        config = TaskConfig(initial_model=model, rounds=1, min_sites=7, strategy=make_strategy(name))
        driver = RoundDriver(config, events=Quiet())
        aggregation = driver._aggregation
        assert isinstance(aggregation, SpillingAggregation)
        for site, row in enumerate(stack):
            update = {"w": row[: 300 * 7].reshape(300, 7), "b": row[300 * 7 :]}
            driver.accept_update(f"s{site}", 1, 1, update, 1.0, bytes(32), {})
        driver.close_if_complete()
        return np.concatenate([v.reshape(-1) for v in driver.final_model().values()]), aggregation.spilled

    in_memory, spilled_before = final(str(1 << 30))
    spilled_result, spilled_after = final(str(3 * 4 * 2107))  # the fourth update spills the round
    assert not spilled_before and spilled_after
    np.testing.assert_array_equal(spilled_result, in_memory)

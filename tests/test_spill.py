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
    SpilledAggregation,
    SpilledStack,
    SpillError,
    spilled_krum,
    spilled_median,
    spilled_trimmed_mean,
)
from aggregator.strategies import Privacy


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


def test_a_round_aggregation_in_bounded_memory(tmp_path: Path) -> None:
    n, p, block = 12, 400_000, 1 << 14
    aggregation = SpilledAggregation(p, lambda stack, _w: spilled_median(stack), tmp_path, block)
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
    aggregation = SpilledAggregation(8, lambda stack, _w: spilled_median(stack), tmp_path, 4)
    bad = np.ones(8, np.float32)
    bad[3] = np.inf
    with pytest.raises(native.NonFiniteUpdateError):
        aggregation.add(bad, 1.0, 4)
    assert aggregation.count == 0
    with pytest.raises(SpillError, match="values"):
        SpilledStack(8, tmp_path).append(np.ones(9, np.float32))

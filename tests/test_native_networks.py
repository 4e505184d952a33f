"""Comparator networks are checked exhaustively by the 0-1 principle for small n."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from native._networks import selection_network
from native_refs import assert_generated_is_current


def _apply_batch(lo: np.ndarray, hi: np.ndarray, batch: np.ndarray) -> np.ndarray:
    v = batch.copy()
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        x, y = v[:, a].copy(), v[:, b].copy()
        v[:, a] = np.minimum(x, y)
        v[:, b] = np.maximum(x, y)
    return v


def _all_01(n: int) -> np.ndarray:
    return np.array(list(itertools.product((0, 1), repeat=n)), dtype=np.int8)


@pytest.mark.parametrize("n", range(1, 15))
def test_full_sort_network_sorts_every_01_input(n: int) -> None:
    inputs = _all_01(n)
    lo, hi = selection_network(n, frozenset(range(n)))
    assert (np.all(lo < hi)) and (hi.max(initial=-1) < n)
    np.testing.assert_array_equal(_apply_batch(lo, hi, inputs), np.sort(inputs, axis=1))


@pytest.mark.parametrize("n", range(1, 15))
def test_median_and_trim_networks_place_requested_positions(n: int) -> None:
    inputs = _all_01(n)
    expected = np.sort(inputs, axis=1)
    wanted = [frozenset({(n - 1) // 2, n // 2})]
    for k in range(1, (n + 1) // 2):
        if 2 * k < n:
            wanted.append(frozenset(range(k)) | frozenset(range(n - k, n)))
    for positions in wanted:
        lo, hi = selection_network(n, positions)
        got = _apply_batch(lo, hi, inputs)
        cols = sorted(positions)
        np.testing.assert_array_equal(got[:, cols], expected[:, cols])


def test_pruned_networks_are_smaller_than_a_full_sort() -> None:
    full = len(selection_network(10, frozenset(range(10)))[0])
    assert len(selection_network(10, frozenset({4, 5}))[0]) < full
    assert len(selection_network(10, frozenset({0, 9}))[0]) <= 2 * 10


def test_generated_small_network_kernels_are_up_to_date() -> None:
    assert_generated_is_current("gen_small_networks.py", "_small_networks.py")

"""The Accumulator's serial path for small updates (issue 19: no thread hand-off below
``SERIAL_MAX_VALUES``) gives the same sums, bit for bit, as the work-shared path, and both
refuse a non-finite update and take it back out."""

from __future__ import annotations

import numpy as np
import pytest

import native
from native import accumulator
from native.errors import NonFiniteUpdateError


def _sum(updates: list[np.ndarray], weights: list[float]) -> np.ndarray:
    acc = native.Accumulator(updates[0].size)
    for update, weight in zip(updates, weights, strict=True):
        acc.add(update, weight)
    return acc.result()


@pytest.mark.parametrize("size", [1, 4095, 4097, 64 * 4096 + 1, 3 * 64 * 4096 + 7])
def test_the_serial_and_the_shared_paths_agree_bit_for_bit(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(size)
    updates = [rng.standard_normal(size, dtype=np.float32) for _ in range(4)]
    weights = [1.0, 2.5, 7, 0.125]  # an int weight takes the checked path
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 1 << 40)
    serial = _sum(updates, weights)
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 0)
    shared = _sum(updates, weights)
    np.testing.assert_array_equal(serial, shared)


@pytest.mark.parametrize("serial_max", [1 << 40, 0])
@pytest.mark.parametrize("where", [0, 4096 * 3 + 5, -1])
def test_both_paths_take_a_non_finite_update_back_out(
    serial_max: int, where: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", serial_max)
    size = 64 * 4096 * 2 + 11
    rng = np.random.default_rng(7)
    good = [rng.standard_normal(size, dtype=np.float32) for _ in range(2)]
    bad = rng.standard_normal(size, dtype=np.float32)
    bad[where] = np.nan
    acc = native.Accumulator(size)
    acc.add(good[0], 2.0)
    with pytest.raises(NonFiniteUpdateError):
        acc.add(bad, 3.0, site=9)
    acc.add(good[1], 1.0)
    expected = (2.0 * good[0].astype(np.float64) + good[1]) / 3.0
    np.testing.assert_allclose(acc.result(), expected, rtol=1e-5, atol=1e-5)
    assert [c.site for c in acc.contributions] == [0, 2]


def test_whole_update_weights_are_summed_exactly() -> None:
    acc = native.Accumulator(3)
    for weight in (0.1, 0.2, 0.3, 1e-30):
        acc.add(np.ones(3, np.float32), weight)
    # the exact sum of the four binary64 weights, rounded once
    from fractions import Fraction

    assert acc.total_weight() == float(sum(map(Fraction, (0.1, 0.2, 0.3, 1e-30))))
    np.testing.assert_allclose(acc.result(), 1.0, rtol=1e-6)

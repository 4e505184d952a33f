"""L2 norms, clipping and seeded Gaussian noise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import native
from native import AggregationError, NonFiniteUpdateError
from native_refs import stacks

SETTINGS = settings(max_examples=50, deadline=None)


@SETTINGS
@given(stacks(max_n=10, max_p=300))
def test_l2_norms_match_numpy(stack: np.ndarray) -> None:
    got = native.l2_norms(stack)
    assert got.dtype == np.float64 and got.shape == (stack.shape[0],)
    np.testing.assert_allclose(got, np.linalg.norm(stack.astype(np.float64), axis=1), rtol=1e-12)


def test_l2_norms_large_rows() -> None:
    rng = np.random.default_rng(2)
    stack = rng.standard_normal((3, 100_003), dtype=np.float32)
    np.testing.assert_allclose(native.l2_norms(stack), np.linalg.norm(stack.astype(np.float64), axis=1), rtol=1e-12)


@SETTINGS
@given(stacks(min_n=1, max_n=1, max_p=300, ties=False), st.floats(1e-3, 1e3))
def test_clip_by_l2_in_place(stack: np.ndarray, max_norm: float) -> None:
    update = stack[0].copy()
    before = np.linalg.norm(update.astype(np.float64))
    original = update.copy()
    returned = native.clip_by_l2(update, max_norm)
    assert returned == pytest.approx(before, rel=1e-12)
    after = np.linalg.norm(update.astype(np.float64))
    if before <= max_norm:
        np.testing.assert_array_equal(update, original)
    else:
        assert after == pytest.approx(max_norm, rel=1e-5)
        np.testing.assert_allclose(update, original * np.float32(max_norm / before), rtol=1e-6, atol=1e-30)


def test_clip_by_l2_validation() -> None:
    with pytest.raises(AggregationError, match="max_norm"):
        native.clip_by_l2(np.ones(4, np.float32), 0.0)
    with pytest.raises(AggregationError, match="finite"):
        native.clip_by_l2(np.ones(4, np.float32), float("nan"))
    with pytest.raises(AggregationError, match="C-contiguous"):
        native.clip_by_l2(np.ones(8, np.float32)[::2], 1.0)
    frozen = np.ones(4, np.float32)
    frozen.setflags(write=False)
    with pytest.raises(AggregationError, match="writeable"):
        native.clip_by_l2(frozen, 1.0)
    bad = np.ones(4, np.float32)
    bad[2] = np.inf
    with pytest.raises(NonFiniteUpdateError) as info:
        native.clip_by_l2(bad, 1.0, site=5)
    assert info.value.site_index == 5


@pytest.mark.parametrize("size", [0, 1, 1000, (1 << 20) + 3])
def test_gaussian_noise_is_the_documented_pcg64_stream(size: int) -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal(size, dtype=np.float32)
    expected = x + np.random.Generator(np.random.PCG64(1234)).standard_normal(size, dtype=np.float32) * np.float32(0.5)
    got = native.add_gaussian_noise(x, 0.5, 1234)
    assert got is x
    np.testing.assert_array_equal(got, expected)


def test_gaussian_noise_reproducible_and_seed_dependent() -> None:
    base = np.zeros(50_000, np.float32)
    a = native.add_gaussian_noise(base.copy(), 2.0, 7)
    b = native.add_gaussian_noise(base.copy(), 2.0, 7)
    c = native.add_gaussian_noise(base.copy(), 2.0, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() == pytest.approx(2.0, rel=0.02)
    assert abs(a.mean()) < 0.05
    np.testing.assert_array_equal(native.add_gaussian_noise(base.copy(), 0.0, 7), base)
    seq = np.random.SeedSequence(99)
    np.testing.assert_array_equal(
        native.add_gaussian_noise(base.copy(), 1.0, seq),
        native.add_gaussian_noise(base.copy(), 1.0, np.random.SeedSequence(99)),
    )


def test_gaussian_noise_validation() -> None:
    with pytest.raises(AggregationError, match="std"):
        native.add_gaussian_noise(np.zeros(3, np.float32), -1.0, 1)
    with pytest.raises(AggregationError, match="seed"):
        native.add_gaussian_noise(np.zeros(3, np.float32), 1.0, -1)
    with pytest.raises(AggregationError, match="seed"):
        native.add_gaussian_noise(np.zeros(3, np.float32), 1.0, 1.5)
    with pytest.raises(AggregationError, match="float32"):
        native.add_gaussian_noise(np.zeros(3, np.float64), 1.0, 1)
    x = np.zeros(3, np.float32)
    x[1] = np.nan
    with pytest.raises(NonFiniteUpdateError) as info:
        native.add_gaussian_noise(x, 1.0, 1)
    assert info.value.site_index is None

"""Coordinate median, trimmed mean and (multi-)Krum against numpy float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import native
from native import AggregationError, NonFiniteUpdateError
from native_refs import ref_distances, ref_krum_scores, ref_median, ref_trim_count, ref_trimmed_mean, stacks, tol

SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(stacks(max_n=40))
def test_median_matches_numpy(stack: np.ndarray) -> None:
    got = native.coordinate_median(stack)
    assert got.dtype == np.float32 and got.shape == (stack.shape[1],)
    np.testing.assert_array_equal(got, ref_median(stack))
    np.testing.assert_allclose(got, np.median(stack, axis=0), rtol=1e-6, atol=tol(stack))


@pytest.mark.parametrize("n", [1, 2, 3, 9, 10, 11, 64, 100, 101, 130])
def test_median_odd_even_and_large_n(n: int) -> None:
    rng = np.random.default_rng(n)
    stack = rng.standard_normal((n, 3000), dtype=np.float32)
    np.testing.assert_array_equal(native.coordinate_median(stack), ref_median(stack))


BETAS = st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.25, 0.29, 1 / 3, 0.4, 0.45, 0.49, 0.499])


@SETTINGS
@given(stacks(max_n=40), BETAS)
def test_trimmed_mean_matches_reference(stack: np.ndarray, beta: float) -> None:
    got = native.trimmed_mean(stack, beta)
    assert got.dtype == np.float32 and got.shape == (stack.shape[1],)
    np.testing.assert_allclose(got, ref_trimmed_mean(stack, beta), rtol=1e-6, atol=tol(stack))


@pytest.mark.parametrize("n, beta", [(10, 0.1), (100, 0.1), (100, 0.29), (33, 0.45), (7, 0.0), (128, 0.2)])
def test_trimmed_mean_sizes(n: int, beta: float) -> None:
    rng = np.random.default_rng(n)
    stack = rng.standard_normal((n, 2500), dtype=np.float32)
    stack[0, :10] = 1e30  # a poisoned site: trimmed away without cancellation
    np.testing.assert_allclose(native.trimmed_mean(stack, beta), ref_trimmed_mean(stack, beta), rtol=1e-5, atol=1e-6)


def test_trim_count_takes_beta_at_its_decimal_value() -> None:
    assert ref_trim_count(0.29, 100) == 29
    stack = np.arange(100, dtype=np.float32).reshape(100, 1)
    # floor(0.29 * 100) = 29 values dropped each side: mean of 29..70.
    assert native.trimmed_mean(stack, 0.29)[0] == pytest.approx(49.5)


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, float("nan"), float("inf"), "0.1", True])
def test_trimmed_mean_rejects_invalid_beta(beta) -> None:
    with pytest.raises(AggregationError, match="beta"):
        native.trimmed_mean(np.zeros((4, 3), np.float32), beta)


def test_trimmed_mean_beta_edges() -> None:
    stack = np.array([[1.0], [2.0], [10.0]], dtype=np.float32)
    assert native.trimmed_mean(stack, 0.0)[0] == pytest.approx(13 / 3)
    assert native.trimmed_mean(stack, 0.33)[0] == pytest.approx(13 / 3)  # floor(0.99) = 0
    assert native.trimmed_mean(stack, 0.34)[0] == 2.0  # floor(1.02) = 1
    assert native.trimmed_mean(stack[:1], 0.49)[0] == 1.0  # N = 1: nothing to trim


INTS = st.integers(-8, 8).map(float)


@st.composite
def krum_cases(draw, exact: bool):
    f = draw(st.integers(0, 3))
    n = draw(st.integers(2 * f + 3, 2 * f + 9))
    p = draw(st.integers(1, 300))
    elements = INTS if exact else st.floats(-100, 100, width=32)
    stack = draw(hnp.arrays(np.float32, (n, p), elements=elements))
    m = draw(st.integers(1, n - f))
    return stack, f, m


@SETTINGS
@given(krum_cases(exact=True))
def test_krum_matches_reference_exactly_on_integer_data(case) -> None:
    # Integer-valued updates make every distance exact, so ties break identically.
    stack, f, m = case
    scores = ref_krum_scores(stack, f)
    expected = np.argsort(scores, kind="stable")[:m]
    result, selected = native.krum(stack, f, m)
    np.testing.assert_array_equal(selected, expected)
    reference = stack[expected].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(result, reference, rtol=1e-6, atol=1e-5)
    if m == 1:
        np.testing.assert_array_equal(result, stack[expected[0]])
        assert result.base is None or result.base is not stack


@SETTINGS
@given(krum_cases(exact=False))
def test_krum_selects_lowest_scores_on_real_data(case) -> None:
    stack, f, m = case
    scores = ref_krum_scores(stack, f)
    _, selected = native.krum(stack, f, m)
    assert len(set(selected.tolist())) == m
    # Up to float rounding in the distances, the chosen scores are the m smallest.
    bound = np.sort(scores)[m - 1]
    assert np.all(scores[selected] <= bound * (1 + 1e-5) + 1e-6)
    np.testing.assert_allclose(native.pairwise_sq_distances(stack), ref_distances(stack), rtol=2e-5, atol=1e-3)


def test_krum_rejects_a_far_outlier_and_survives_overflowing_distances() -> None:
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((7, 5000), dtype=np.float32) * 0.01
    stack[3] = 3e38  # squares overflow float32: distance +inf, never selected
    result, selected = native.krum(stack, 2, 3)
    assert 3 not in selected.tolist()
    assert np.isfinite(result).all()


@pytest.mark.parametrize(
    "n, f, m, message",
    [
        (4, 1, 1, "N >= 2f\\+3 = 5"),
        (2, 0, 1, "N >= 2f\\+3 = 3"),
        (7, -1, 1, "f .* >= 0"),
        (7, 2, 0, "1 <= m <= N-f = 5"),
        (7, 2, 6, "1 <= m <= N-f = 5"),
        (7, 1.5, 1, "integer"),
        (7, 2, 2.0, "integer"),
    ],
)
def test_krum_rejects_invalid_f_and_m(n: int, f, m, message: str) -> None:
    with pytest.raises(AggregationError, match=message):
        native.krum(np.zeros((n, 4), np.float32), f, m)


@pytest.mark.parametrize("rule", ["median", "trimmed", "krum", "norms"])
@settings(max_examples=25, deadline=None)
@given(st.integers(5, 40), st.integers(1, 5000), st.data())
def test_non_finite_values_name_the_site(rule: str, n: int, p: int, data) -> None:
    rng = np.random.default_rng(p)
    stack = rng.standard_normal((n, p), dtype=np.float32)
    site = data.draw(st.integers(0, n - 1))
    stack[site, data.draw(st.integers(0, p - 1))] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    call = {
        "median": lambda: native.coordinate_median(stack),
        "trimmed": lambda: native.trimmed_mean(stack, 0.2),
        "krum": lambda: native.krum(stack, 1),
        "norms": lambda: native.l2_norms(stack),
    }[rule]
    with pytest.raises(NonFiniteUpdateError) as info:
        call()
    assert info.value.site_index == site
    assert f"site {site}" in str(info.value)


@pytest.mark.parametrize(
    "fn", [native.coordinate_median, lambda s: native.trimmed_mean(s, 0.1), lambda s: native.krum(s, 0)]
)
def test_stack_validation(fn) -> None:
    with pytest.raises(AggregationError, match="float32"):
        fn(np.zeros((5, 3), np.float64))
    with pytest.raises(AggregationError, match="2-D"):
        fn(np.zeros(5, np.float32))
    with pytest.raises(AggregationError, match="N = 0"):
        fn(np.zeros((0, 3), np.float32))
    with pytest.raises(AggregationError, match="ndarray"):
        fn([[1.0, 2.0]] * 5)


def test_non_contiguous_stack_is_accepted() -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((9, 400), dtype=np.float32)
    view = base[:, ::3]
    np.testing.assert_array_equal(native.coordinate_median(view), ref_median(view))
    np.testing.assert_allclose(
        native.trimmed_mean(base.T[:9], 0.2), ref_trimmed_mean(base.T[:9], 0.2), rtol=1e-6, atol=1e-6
    )

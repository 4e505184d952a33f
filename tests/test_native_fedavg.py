"""fedavg and Accumulator against numpy float64 references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import native
from native import AggregationError, NonFiniteUpdateError
from native_refs import assert_generated_is_current, ref_fedavg, stacks, tol

SETTINGS = settings(max_examples=60, deadline=None)
WEIGHT = st.floats(0.0, 1e4, allow_nan=False)


ACC_WEIGHT = st.one_of(st.just(0.0), st.floats(1e-3, 1e4))


@st.composite
def stacks_and_weights(draw, max_n: int = 12, weight=WEIGHT):
    stack = draw(stacks(max_n=max_n))
    weights = draw(st.lists(weight, min_size=stack.shape[0], max_size=stack.shape[0]))
    if sum(weights) <= 0:
        weights[0] = 1.0
    return stack, weights


@SETTINGS
@given(stacks_and_weights())
def test_fedavg_matches_weighted_mean(case) -> None:
    stack, weights = case
    expected = ref_fedavg(stack, weights)
    got_list = native.fedavg([row for row in stack], weights)
    got_stack = native.fedavg(stack, np.asarray(weights))
    assert got_list.dtype == np.float32 and got_list.shape == (stack.shape[1],)
    np.testing.assert_allclose(got_list, expected, rtol=1e-6, atol=tol(stack))
    np.testing.assert_array_equal(got_list, got_stack)


def test_fedavg_spans_several_blocks_and_groups() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 3, 4, 5, 8, 9, 13, 17):
        stack = rng.standard_normal((n, 3 * 4096 + 17), dtype=np.float32)
        weights = rng.uniform(0.5, 10.0, n).tolist()
        np.testing.assert_allclose(
            native.fedavg(list(stack), weights), ref_fedavg(stack, weights), rtol=1e-5, atol=1e-6
        )


def test_fedavg_of_every_count_the_unrolled_kernels_pad_spans_pool_blocks() -> None:
    # 5-12 rows are padded up to the 8- and 12-row kernels (row 0 at weight 0); the helper
    # pool's blocks are 16384 values: two whole blocks and a tail.
    rng = np.random.default_rng(5)
    for n in range(1, 18):
        stack = rng.standard_normal((n, 2 * 16384 + 5), dtype=np.float32)
        weights = rng.uniform(0.5, 10.0, n).tolist()
        got = native.fedavg(list(stack), weights)
        np.testing.assert_allclose(got, ref_fedavg(stack, weights), rtol=1e-6, atol=1e-6, err_msg=f"N={n}")
        np.testing.assert_array_equal(native.fedavg(stack, weights), got)


@pytest.mark.parametrize("n", [5, 10, 12])
@pytest.mark.parametrize("row", ["first", "last"])
def test_a_padded_mean_names_the_site_with_a_non_finite_value(n: int, row: str) -> None:
    # Row 0 is also the padding: a NaN there, or in the last real row, is still found and named.
    stack = np.random.default_rng(n).standard_normal((n, 40_000), dtype=np.float32)
    site = 0 if row == "first" else n - 1
    stack[site, 39_999] = np.nan
    with pytest.raises(NonFiniteUpdateError) as info:
        native.fedavg(list(stack), [1.0] * n)
    assert info.value.site_index == site


def test_generated_small_mean_kernels_are_up_to_date() -> None:
    assert_generated_is_current("gen_small_means.py", "_small_means.py")


def test_fedavg_accepts_strided_updates() -> None:
    rng = np.random.default_rng(4)
    base = rng.standard_normal((3, 200), dtype=np.float32)
    updates = [row[::2] for row in base]
    np.testing.assert_allclose(
        native.fedavg(updates, [1, 2, 3]), ref_fedavg(base[:, ::2], [1, 2, 3]), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        native.fedavg(base[:, ::2], [1, 2, 3]), ref_fedavg(base[:, ::2], [1, 2, 3]), rtol=1e-6, atol=1e-6
    )


@SETTINGS
@given(st.integers(1, 10), st.integers(1, 9000), st.data())
def test_fedavg_names_the_site_with_non_finite_values(n: int, p: int, data) -> None:
    rng = np.random.default_rng(p)
    updates = [rng.standard_normal(p, dtype=np.float32) for _ in range(n)]
    site = data.draw(st.integers(0, n - 1))
    where = data.draw(st.integers(0, p - 1))
    bad = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    updates[site][where] = bad
    weights = [1.0] * n
    if n > 1:
        weights[site] = data.draw(st.sampled_from([0.0, 1.0]))  # a zero weight does not hide it
    with pytest.raises(NonFiniteUpdateError) as info:
        native.fedavg(updates, weights)
    assert info.value.site_index == site
    assert isinstance(info.value, AggregationError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "updates, weights, message",
    [
        ([], [], "N = 0"),
        ([np.zeros(3, np.float64)], [1.0], "float32"),
        ([np.zeros((3, 1), np.float32)], [1.0], "1-D"),
        ([np.zeros(3, np.float32), np.zeros(4, np.float32)], [1.0, 1.0], "updates\\[1\\] has 4"),
        ([np.zeros(3, np.float32)], [1.0, 2.0], "2 weights for 1"),
        ([np.zeros(3, np.float32)], [-1.0], ">= 0"),
        ([np.zeros(3, np.float32)], [0.0], "positive sum"),
        ([np.zeros(3, np.float32)], [float("nan")], "finite"),
        ([np.zeros(3, np.float32)], [float("inf")], "finite"),
        ([np.zeros(3, np.float32)], ["1"], "real number"),
        ([[1.0, 2.0]], [1.0], "numpy.ndarray"),
        (np.zeros((0, 3), np.float32), [], "N = 0"),
        (np.zeros((2, 3), np.float16), [1, 1], "float32"),
    ],
)
def test_fedavg_rejects_invalid_input(updates, weights, message) -> None:
    with pytest.raises(AggregationError, match=message):
        native.fedavg(updates, weights)


@SETTINGS
@given(stacks_and_weights(weight=ACC_WEIGHT), st.data())
def test_accumulator_matches_weighted_mean_chunked_in_any_order(case, data) -> None:
    stack, weights = case
    n, p = stack.shape
    acc = native.Accumulator(p)
    pieces = []
    for i in range(n):
        cuts = sorted(data.draw(st.lists(st.integers(0, p), max_size=3)))
        bounds = [0, *cuts, p]
        pieces += [(i, a, b) for a, b in itertools.pairwise(bounds)]
    order = data.draw(st.permutations(pieces))
    for i, a, b in order:
        acc.add(stack[i, a:b], weights[i], offset=a)
    if p == 0:
        with pytest.raises(AggregationError):
            acc.result()
        return
    got = acc.result()
    assert got.dtype == np.float32 and got.shape == (p,)
    scale = float(np.abs(stack).max()) if stack.size else 1.0
    # float32 accumulation of raw weights: error grows with N.
    np.testing.assert_allclose(got, ref_fedavg(stack, weights), rtol=1e-5, atol=2e-6 * n * max(scale, 1.0))
    assert acc.total_weight() == pytest.approx(sum(weights))
    assert acc.result() is got


def test_accumulator_rejects_missing_or_duplicate_chunks() -> None:
    x = np.arange(10, dtype=np.float32)
    missing = native.Accumulator(10)
    missing.add(x[:4], 1.0)
    missing.add(x[6:], 1.0, offset=6)
    with pytest.raises(AggregationError, match=r"\[4, 6\)|\[0, 4\)"):
        missing.result()
    duplicate = native.Accumulator(10)
    duplicate.add(x, 1.0)
    duplicate.add(x[2:5], 1.0, offset=2)
    with pytest.raises(AggregationError, match="missing or duplicated"):
        duplicate.result()
    nothing = native.Accumulator(10)
    with pytest.raises(AggregationError):
        nothing.result()
    zero = native.Accumulator(10)
    zero.add(x, 0.0)
    with pytest.raises(AggregationError, match="total weight is 0"):
        zero.result()


def test_accumulator_validates_each_add() -> None:
    acc = native.Accumulator(8)
    with pytest.raises(AggregationError, match="outside"):
        acc.add(np.zeros(4, np.float32), 1.0, offset=5)
    with pytest.raises(AggregationError, match="outside"):
        acc.add(np.zeros(4, np.float32), 1.0, offset=-1)
    with pytest.raises(AggregationError, match="float32"):
        acc.add(np.zeros(8, np.float64), 1.0)
    with pytest.raises(AggregationError, match=">= 0"):
        acc.add(np.zeros(8, np.float32), -2.0)
    with pytest.raises(AggregationError, match="integer"):
        acc.add(np.zeros(8, np.float32), 1.0, offset=1.5)
    with pytest.raises(AggregationError, match="float32 accumulation"):
        acc.add(np.zeros(8, np.float32), 1e-40)
    with pytest.raises(AggregationError, match="float32 accumulation"):
        acc.add(np.zeros(8, np.float32), 1e31)
    with pytest.raises(AggregationError, match="size"):
        native.Accumulator(-1)
    acc.add(np.ones(8, np.float32), 2.0)
    np.testing.assert_array_equal(acc.result(), np.ones(8, np.float32))
    with pytest.raises(AggregationError, match="already"):
        acc.add(np.ones(8, np.float32), 1.0)


@SETTINGS
@given(st.integers(1, 3 * 4096 + 5), st.data())
def test_accumulator_rejects_a_non_finite_update_and_keeps_the_others(p: int, data) -> None:
    rng = np.random.default_rng(p)
    good = [rng.standard_normal(p, dtype=np.float32) for _ in range(3)]
    acc = native.Accumulator(p)
    acc.add(good[0], 2.0)
    bad = rng.standard_normal(p, dtype=np.float32)
    bad[data.draw(st.integers(0, p - 1))] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    with pytest.raises(NonFiniteUpdateError) as info:
        acc.add(bad, 5.0, site=42)
    assert info.value.site_index == 42
    with pytest.raises(NonFiniteUpdateError) as info:
        acc.add(bad, 5.0)
    assert info.value.site_index == 2  # third add call
    acc.add(good[1], 1.0)
    acc.add(good[2], 3.0)
    expected = ref_fedavg(np.stack(good), [2.0, 1.0, 3.0])
    np.testing.assert_allclose(acc.result(), expected, rtol=1e-5, atol=1e-5)
    assert [c.site for c in acc.contributions] == [0, 3, 4]


def test_accumulator_keeps_no_reference_to_added_updates() -> None:
    # O(model) memory: once add() returns, the caller's update can be freed.
    import gc
    import weakref

    size = 5 * 64 * 4096 + 3  # several work-sharing tasks per add
    acc = native.Accumulator(size)
    refs = []
    for i in range(20):
        update = np.full(size, float(i), dtype=np.float32)
        acc.add(update, 1.0)
        refs.append(weakref.ref(update))
        del update
    gc.collect()
    assert all(r() is None for r in refs)
    np.testing.assert_allclose(acc.result(), np.full(size, 9.5, np.float32))


def test_fedavg_with_a_subnormal_weight() -> None:
    # Found by hypothesis on a fresh CI run: the weighted mean of one update is that update,
    # whatever its (positive) weight; the reference must normalise before multiplying.
    stack = np.array([[0.5]], np.float32)
    np.testing.assert_array_equal(native.fedavg([stack[0]], [5e-324]), [0.5])
    np.testing.assert_array_equal(ref_fedavg(stack, [5e-324]), [0.5])

"""native/_pool.py: the native helper threads that share the Accumulator's adds, its mean
and fedavg (issue 19, kernels at the floor). The shared path gives the same sums, bit for
bit, as the serial one and as the portable Python work sharing; a busy pool, a forked
child and concurrent callers all still get the right answer; the helpers do take work."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

import native
from native import _pool, accumulator
from native.errors import NonFiniteUpdateError
from native_refs import ref_fedavg

pytestmark = pytest.mark.skipif(not _pool.available(), reason="the native helpers run on x86-64 Linux only")

SIZE = 3 * 64 * 4096 + 7


def _updates(size: int, count: int = 4, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(size, dtype=np.float32) for _ in range(count)]


def _mean(updates: list[np.ndarray], weights: list[float]) -> np.ndarray:
    acc = native.Accumulator(updates[0].size)
    for update, weight in zip(updates, weights, strict=True):
        acc.add(update, weight)
    return acc.result()


WEIGHTS = [1.0, 2.5, 7.0, 0.125]


def test_shared_serial_and_python_work_sharing_agree_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    updates = _updates(SIZE)
    updates[0][:4] = [-0.0, 0.0, -1e-45, 1e-45]  # zeros' signs, and products that underflow
    updates[1][:4] = -0.0
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 1 << 40)
    serial = _mean(updates, WEIGHTS)
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 0)
    shared = _mean(updates, WEIGHTS)
    monkeypatch.setattr(_pool, "AVAILABLE", False)
    python_shared = _mean(updates, WEIGHTS)
    assert serial.tobytes() == shared.tobytes()
    assert serial.tobytes() == python_shared.tobytes()


def test_a_busy_pool_adds_in_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 0)
    updates = _updates(SIZE, seed=1)
    expected = _mean(updates, WEIGHTS)
    state = _pool.state()
    state[_pool._BUSY] = 1  # another thread holds the helpers
    try:
        busy = _mean(updates, WEIGHTS)
        bad = updates[0].copy()
        bad[SIZE - 1] = np.inf
        acc = native.Accumulator(SIZE)
        acc.add(updates[1], 1.0)
        with pytest.raises(NonFiniteUpdateError):
            acc.add(bad, 2.0)
        np.testing.assert_allclose(acc.result(), updates[1], rtol=1e-6, atol=1e-6)
        fed = native.fedavg(updates, WEIGHTS)
    finally:
        state[_pool._BUSY] = 0
    np.testing.assert_array_equal(busy, expected)
    # numba's parallel loop sums the rows in another order: equal up to float64 rounding
    np.testing.assert_allclose(fed, native.fedavg(updates, WEIGHTS), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("where", [0, 64 * 4096 + 3, -1])
def test_a_non_finite_update_is_taken_back_out_on_the_shared_path(where: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 0)
    good = _updates(SIZE, 2, seed=2)
    bad = good[0].copy()
    bad[where] = np.nan
    acc = native.Accumulator(SIZE + 10)
    acc.add(good[0], 2.0, offset=5)
    with pytest.raises(NonFiniteUpdateError) as info:
        acc.add(bad, 3.0, offset=5, site=4)
    assert info.value.site_index == 4
    acc.add(good[1], 1.0, offset=5)
    # the 5 coordinates either side received nothing: only whole coverage has a mean
    np.testing.assert_allclose(
        acc._sum[5:-5] / 3.0, (2.0 * good[0].astype(np.float64) + good[1]) / 3.0, rtol=1e-5, atol=1e-5
    )
    assert [c.site for c in acc.contributions] == [0, 2]


@pytest.mark.parametrize("where", [0, SIZE // 2, SIZE - 1])
def test_a_fresh_sum_refuses_a_non_finite_first_update(where: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 0)
    good = _updates(SIZE, 2, seed=6)
    bad = good[0].copy()
    bad[where] = np.inf
    acc = native.Accumulator(SIZE)
    with pytest.raises(NonFiniteUpdateError):
        acc.add(bad, 2.0)
    acc.add(good[0], 1.0)
    acc.add(good[1], 3.0)
    expected = (good[0].astype(np.float64) + 3.0 * good[1]) / 4.0
    np.testing.assert_allclose(acc.result(), expected, rtol=1e-5, atol=1e-6)


def test_a_fresh_sum_takes_chunks_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 0)
    update = _updates(SIZE, 1, seed=7)[0]
    acc = native.Accumulator(SIZE)
    acc.add(update[1000:], 2.0, offset=1000)
    acc.add(update[:1000], 2.0)
    np.testing.assert_array_equal(acc.result(), _mean([update], [2.0]))
    busy = native.Accumulator(SIZE)
    state = _pool.state()
    state[_pool._BUSY] = 1
    try:
        busy.add(update, 2.0)
    finally:
        state[_pool._BUSY] = 0
    np.testing.assert_array_equal(busy.result(), _mean([update], [2.0]))


def test_fedavg_shared_matches_the_reference_and_names_the_first_bad_site() -> None:
    stack = np.stack(_updates(200_003, 7, seed=3))
    weights = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    np.testing.assert_allclose(native.fedavg(stack, weights), ref_fedavg(stack, weights), rtol=1e-6, atol=1e-6)
    stack[5, 10] = np.nan
    stack[2, 199_000] = -np.inf  # later in the update, but an earlier site
    with pytest.raises(NonFiniteUpdateError) as info:
        native.fedavg(stack, weights)
    assert info.value.site_index == 2


def test_concurrent_callers_each_get_their_own_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 0)
    sets = [_updates(SIZE, 4, seed=10 + i) for i in range(3)]
    expected = [_mean(u, WEIGHTS) for u in sets]
    got: list[np.ndarray | None] = [None] * 3

    def run(i: int) -> None:
        for _ in range(5):
            got[i] = _mean(sets[i], WEIGHTS)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_the_helpers_take_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 0)
    if _pool.helper_count() == 0:
        pytest.skip("one numba thread: no helper")
    before = _pool.helped()
    update = _updates(1 << 20, 1, seed=4)[0]
    acc = native.Accumulator(update.size)
    deadline = time.monotonic() + 10.0
    while _pool.helped() == before and time.monotonic() < deadline:
        for _ in range(20):
            acc.add(update, 1.0)
    assert _pool.helped() > before


def _child(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    updates = _updates(SIZE, 4, seed=5)
    accumulator.SERIAL_MAX_VALUES = 0
    queue.put(_mean(updates, WEIGHTS).tobytes())


def test_a_forked_child_gets_its_own_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 0)
    expected = _mean(_updates(SIZE, 4, seed=5), WEIGHTS)  # the parent's helpers are running
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    data = queue.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    np.testing.assert_array_equal(np.frombuffer(data, dtype=np.float32), expected)


def test_fedavg_into_a_reused_output() -> None:
    stack = np.stack(_updates(70_001, 5, seed=8))
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    out = np.full(70_001, 7.0, dtype=np.float32)
    got = native.fedavg(stack, weights, out=out)
    assert got is out
    np.testing.assert_array_equal(out, native.fedavg(stack, weights))
    np.testing.assert_array_equal(native.fedavg(list(stack), weights, out=out), native.fedavg(stack, weights))


@pytest.mark.parametrize(
    ("out", "reason"),
    [
        (np.zeros(10, np.float64), "float32"),
        (np.zeros(20, np.float32)[::2], "C-contiguous"),
        (np.zeros(11, np.float32), "11 values"),
        ([0.0] * 10, "numpy.ndarray"),
    ],
)
def test_fedavg_refuses_a_bad_output(out: object, reason: str) -> None:
    stack = np.ones((3, 10), np.float32)
    with pytest.raises(native.AggregationError, match=reason):
        native.fedavg(stack, [1, 1, 1], out=out)  # type: ignore[arg-type]


def test_fedavg_refuses_an_output_that_overlaps_an_update() -> None:
    stack = np.ones((3, 10), np.float32)
    with pytest.raises(native.AggregationError, match=r"overlaps updates\[1\]"):
        native.fedavg(stack, [1, 1, 1], out=stack[1])
    frozen = np.zeros(10, np.float32)
    frozen.setflags(write=False)
    with pytest.raises(native.AggregationError, match="writeable"):
        native.fedavg(stack, [1, 1, 1], out=frozen)


@pytest.mark.parametrize("serial_max", [1 << 40, 0])
def test_an_accumulator_in_a_reused_buffer(serial_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", serial_max)
    updates = _updates(SIZE, 4, seed=9)
    expected = _mean(updates, WEIGHTS)
    buffer = np.full(SIZE, np.nan, dtype=np.float32)  # old contents never leak into the sum
    for _ in range(2):
        acc = native.Accumulator(SIZE, out=buffer)
        acc.add(updates[0][:100], WEIGHTS[0])  # a chunk first: the rest of the sum is zeroed
        acc.add(updates[0][100:], WEIGHTS[0], offset=100)
        for update, weight in zip(updates[1:], WEIGHTS[1:], strict=True):
            acc.add(update, weight)
        assert acc.result() is buffer
        np.testing.assert_array_equal(buffer, expected)


@pytest.mark.parametrize(
    ("out", "reason"),
    [
        (np.zeros(10, np.float64), "float32"),
        (np.zeros(20, np.float32)[::2], "C-contiguous"),
        (np.zeros(11, np.float32), "11 values"),
    ],
)
def test_an_accumulator_refuses_a_bad_buffer(out: np.ndarray, reason: str) -> None:
    with pytest.raises(native.AggregationError, match=reason):
        native.Accumulator(10, out=out)


def test_after_a_preempted_helper_the_caller_works_alone_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulator, "SERIAL_MAX_VALUES", 0)
    updates = _updates(SIZE, 4, seed=11)
    expected = _mean(updates, WEIGHTS)
    state = _pool.state()
    state[_pool._BACKOFF] = 100  # as _finish sets it (to 32) when a helper held a job up
    before = _pool.helped()
    try:
        got = _mean(updates, WEIGHTS)  # 4 adds and the mean, all alone
        assert _pool.helped() == before
        assert 90 <= state[_pool._BACKOFF] <= 95
    finally:
        state[_pool._BACKOFF] = 0
    np.testing.assert_array_equal(got, expected)

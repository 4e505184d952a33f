"""Weighted mean and robust aggregation rules over a stack of site updates."""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np

from . import _kernels, _pool, _small_networks
from ._networks import selection_network
from ._validate import as_int, as_stack, as_update, check_output, normalised_weights, trim_count
from ._workshare import run_blocks
from .errors import AggregationError, NonFiniteUpdateError


def _first_nonfinite(rows: Sequence[np.ndarray] | np.ndarray, start: int = 0, stop: int | None = None) -> int | None:
    for i, row in enumerate(rows):
        if not np.isfinite(row[start:stop]).all():
            return i
    return None


def _raise_bad_rows(bad_rows: np.ndarray) -> None:
    if bad_rows.any():
        raise NonFiniteUpdateError(int(np.flatnonzero(bad_rows)[0]))


def fedavg(
    updates: np.ndarray | Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted mean of N equal-length float32 updates, as one fused pass.

    ``updates`` is a sequence of 1-D float32 arrays, or a 2-D (N, P) float32 array.
    Weights (e.g. example counts) must be finite and >= 0 with a positive sum; they
    are normalised in float64. Each output block is accumulated in float64 in cache
    while the N updates stream through it once, then rounded to float32 (5 to 12 updates
    stream through together, their float64 sums in registers).

    ``out``, a C-contiguous float32 array of P values that overlaps no update, receives
    the mean (and is returned) instead of a new array: a reused buffer spares the OS
    zeroing and mapping fresh pages (~20% of the time at P = 10M). On an error its
    contents are unspecified.

    Raises ``NonFiniteUpdateError`` naming the first site whose update holds NaN/inf.
    """
    if isinstance(updates, np.ndarray) and updates.ndim == 2:
        stack = as_stack(updates)
        n, size = stack.shape
        w = normalised_weights(weights, n)
        rows: Sequence[np.ndarray] | np.ndarray = stack
    else:
        if isinstance(updates, np.ndarray) or not isinstance(updates, Sequence):
            raise AggregationError("updates must be a sequence of 1-D float32 arrays or an (N, P) float32 array")
        if len(updates) == 0:
            raise AggregationError("no update to aggregate (N = 0)")
        checked = [as_update(u, f"updates[{i}]") for i, u in enumerate(updates)]
        size = checked[0].shape[0]
        for i, u in enumerate(checked):
            if u.shape[0] != size:
                raise AggregationError(f"updates[{i}] has {u.shape[0]} parameters, updates[0] has {size}")
        w = normalised_weights(weights, len(checked))
        rows = checked
    if out is None:
        out = np.empty(size, dtype=np.float32)
    else:
        _check_out(out, size, rows)
    # The kernels read the updates through their data addresses; ``rows`` keeps them alive.
    addresses = np.array([r.__array_interface__["data"][0] for r in rows], dtype=np.intp)
    if _pool.available():
        padded_addresses, padded_w = _pool.padded_rows(addresses, w)  # alive until the call returns
        shared = _pool.fedavg(_pool.state(), padded_addresses, padded_w, out)
    else:
        shared = -1
    if shared >= 0:
        bad = shared == 1
    else:  # no native helpers here, or another thread has them: numba's parallel loop
        nblocks = (size + _kernels.STREAM_BLOCK - 1) // _kernels.STREAM_BLOCK
        bad_blocks = np.zeros(nblocks, dtype=np.bool_)
        _kernels.fedavg_kernel(addresses, w, out, bad_blocks)
        bad = bool(bad_blocks.any())
    if bad:
        site = _first_nonfinite(rows)
        if site is None:  # all inputs finite: values near float32's limit rounded past it
            raise AggregationError("the weighted mean overflows float32 (inputs near +-3.4e38)")
        raise NonFiniteUpdateError(site)
    return out


def _check_out(out: object, size: int, rows: Sequence[np.ndarray] | np.ndarray) -> None:
    check_output(out, size, "the updates")
    for i, row in enumerate(rows):
        if np.may_share_memory(out, row):
            raise AggregationError(f"out overlaps updates[{i}]")


def _order_block(n: int) -> int:
    # Columns per block of the order-statistics kernel: the (N, block) float32 buffer
    # stays within ~48 KiB (L1/L2), at least 64 columns so each row pass vectorises.
    block = (48 * 1024) // (4 * n)
    return max(64, min(2048, block - block % 16))


def _order_stat(stack: np.ndarray, first: int, last: int, exact: frozenset[int]) -> np.ndarray:
    n, size = stack.shape
    out = np.empty(size, dtype=np.float32)
    bad_rows = np.zeros(n, dtype=np.bool_)
    unrolled = _small_networks.KERNELS.get((n, first, last))
    if unrolled is not None:
        nblocks = (size + _small_networks.BLOCK - 1) // _small_networks.BLOCK

        def kernel(first_block: int, last_block: int) -> None:
            unrolled(stack, out, bad_rows, first_block, last_block)

        run_blocks(kernel, nblocks, 16)
    else:
        lo, hi = selection_network(n, exact)
        block = _order_block(n)

        def generic(first_block: int, last_block: int) -> None:
            _kernels.order_stat_kernel(stack, lo, hi, first, last, block, out, bad_rows, first_block, last_block)

        run_blocks(generic, (size + block - 1) // block, max(1, 16384 // block))
    _raise_bad_rows(bad_rows)
    return out


def coordinate_median(stack: np.ndarray) -> np.ndarray:
    """Coordinate-wise median of an (N, P) float32 stack (mean of the two middle values for even N)."""
    stack = as_stack(stack)
    n = stack.shape[0]
    first, last = (n - 1) // 2, n // 2
    return _order_stat(stack, first, last, frozenset({first, last}))


def trimmed_mean(stack: np.ndarray, beta: float) -> np.ndarray:
    """Coordinate-wise mean after dropping the floor(beta*N) largest and smallest values.

    Requires 0 <= beta < 0.5 (so 2*floor(beta*N) < N); beta = 0 is the plain mean.
    """
    stack = as_stack(stack)
    n = stack.shape[0]
    k = trim_count(beta, n)
    exact = frozenset(range(k)) | frozenset(range(n - k, n))
    return _order_stat(stack, k, n - 1 - k, exact)


def _chunks(size: int, minimum: int = 4096) -> int:
    return max(1, min(8 * numba.get_num_threads(), size // minimum))


def pairwise_sq_distances(stack: np.ndarray) -> np.ndarray:
    """(N, N) float64 matrix of squared L2 distances between the rows of a float32 stack."""
    stack = as_stack(stack)
    n, size = stack.shape
    nchunks = _chunks(size)
    partial = np.zeros((nchunks, n, n), dtype=np.float64)
    bad_rows = np.zeros(n, dtype=np.bool_)
    run_blocks(lambda c0, c1: _kernels.sq_distance_kernel(stack, nchunks, partial, bad_rows, c0, c1), nchunks, 1)
    _raise_bad_rows(bad_rows)
    upper = partial.sum(axis=0)
    return upper + upper.T


def krum(stack: np.ndarray, f: int, m: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Krum (m = 1) or multi-Krum (m > 1) over an (N, P) float32 stack.

    Each update's score is the sum of its squared distances to its N - f - 2 nearest
    other updates; the m lowest scores are selected (ties go to the lower index).
    Returns (aggregate, selected) where aggregate is the selected update (m = 1) or
    the unweighted mean of the m selected updates, and ``selected`` holds their
    indices in order of increasing score. Requires f >= 0, N >= 2f + 3, 1 <= m <= N - f.
    """
    stack = as_stack(stack)
    n = stack.shape[0]
    f = as_int(f, "f")
    m = as_int(m, "m")
    if f < 0:
        raise AggregationError(f"f (number of Byzantine sites) must be >= 0, got {f}")
    if n < 2 * f + 3:
        raise AggregationError(f"Krum with f={f} needs N >= 2f+3 = {2 * f + 3} updates, got N={n}")
    if not 1 <= m <= n - f:
        raise AggregationError(f"multi-Krum m must satisfy 1 <= m <= N-f = {n - f}, got m={m}")
    d = pairwise_sq_distances(stack)
    scores = krum_scores(d, f)
    selected = np.argsort(scores, kind="stable")[:m].astype(np.int64)
    if m == 1:
        return stack[selected[0]].copy(), selected
    out = np.empty(stack.shape[1], dtype=np.float32)
    _kernels.mean_rows_kernel(stack, selected, out)
    return out, selected


def krum_scores(distances: np.ndarray, f: int) -> np.ndarray:
    """Krum scores from a squared-distance matrix: sum of the N-f-2 smallest off-diagonal entries per row."""
    n = distances.shape[0]
    closest = n - f - 2
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        others = np.delete(distances[i], i)
        scores[i] = np.sort(others)[:closest].sum()
    return scores

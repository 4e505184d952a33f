"""Comparator networks used by the order-statistics kernels (median, trimmed mean).

A network is a sequence of compare-exchange pairs ``(i, j)`` with ``i < j``; after a
pair is applied, position ``i`` holds the smaller and ``j`` the larger value. The
kernels apply every pair to a block of coordinates at once, so each pair is one
vectorised min/max pass over a row of the block held in L1 cache.

Networks are Batcher's odd-even merge sort for the next power of two, cut to ``n``
inputs: the missing inputs are +inf, and every pair touching one of them is a no-op
(+inf is never smaller than a value and so never moves), hence dropped. Then pairs
that cannot affect the requested output positions are pruned backwards.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        a, b = i + j, i + j + k
                        if b < n:
                            pairs.append((a, b))
            k //= 2
        p *= 2
    return pairs


def _extreme_pairs(n: int, k: int) -> list[tuple[int, int]]:
    """k bubble passes each way: positions 0..k-1 and n-k..n-1 end up exact."""
    pairs: list[tuple[int, int]] = []
    for p in range(k):
        for i in range(n - 1, p, -1):
            pairs.append((i - 1, i))
    for p in range(k):
        for i in range(k, n - 1 - p):
            pairs.append((i, i + 1))
    return pairs


def _prune(pairs: list[tuple[int, int]], needed: set[int]) -> list[tuple[int, int]]:
    live = set(needed)
    kept: list[tuple[int, int]] = []
    for a, b in reversed(pairs):
        if a in live or b in live:
            kept.append((a, b))
            live.add(a)
            live.add(b)
    kept.reverse()
    return kept


def _as_arrays(pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([a for a, _ in pairs], dtype=np.int64)
    hi = np.array([b for _, b in pairs], dtype=np.int64)
    lo.setflags(write=False)
    hi.setflags(write=False)
    return lo, hi


@lru_cache(maxsize=256)
def selection_network(n: int, positions: frozenset[int]) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest known network here that puts the sorted values at ``positions``."""
    candidates = [_prune(_batcher_pairs(n), set(positions))]
    # Positions that are all within k of either end: k bubble passes each way.
    k = max((min(p + 1, n - p) for p in positions), default=0)
    if k > 0 and 2 * k <= n:
        candidates.append(_prune(_extreme_pairs(n, k), set(positions)))
    best = min(candidates, key=len)
    return _as_arrays(best)

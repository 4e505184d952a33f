"""Numba kernels. Inputs are validated by the public wrappers before they get here.

Every kernel is ``njit(cache=True)``; compiled code is cached on disk next to this
module, so a new process loads it instead of compiling. Kernels are compiled lazily on
first call for the argument types actually used.

Non-finite inputs are flagged by the kernels with a vectorisable test: ``v - v`` is 0
for every finite ``v`` and NaN for NaN and +-inf, so a running sum of ``v - v`` stays 0
exactly when all values it saw are finite.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# Reassociation lets LLVM vectorise reductions (sums, finiteness checks) and contract
# forms FMAs. No nnan/ninf: the finiteness checks rely on IEEE NaN/inf semantics.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

# Coordinates per parallel work item of the streaming kernels (fedavg, accumulate):
# 4096 float64 partial sums are 32 KiB, they stay in L1/L2 while N updates stream in.
STREAM_BLOCK = 4096


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def fedavg_kernel(updates, weights, out, bad_blocks):
    """out[p] = sum_i weights[i] * updates[i][p], accumulated in float64 per block.

    ``updates`` is a 2-D (N, P) array or a typed List of 1-D arrays; ``weights`` are
    normalised float64. ``bad_blocks[b]`` is set when block b of the result is not
    finite (some input there was not).
    """
    n = len(updates)
    size = out.shape[0]
    nblocks = (size + STREAM_BLOCK - 1) // STREAM_BLOCK
    for b in prange(nblocks):
        start = b * STREAM_BLOCK
        stop = min(start + STREAM_BLOCK, size)
        length = stop - start
        acc = np.zeros(STREAM_BLOCK, dtype=np.float64)
        for i in range(n):
            x = updates[i][start:stop]
            w = weights[i]
            for t in range(length):
                acc[t] += w * x[t]
        check = 0.0
        for t in range(length):
            v = acc[t]
            out[start + t] = np.float32(v)
            check += v - v
        bad_blocks[b] = check != 0.0


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def accumulate_kernel(acc, chunk, weight, offset, added_blocks):
    """acc[offset:offset+len] += weight * chunk in float32, block by block.

    A block whose chunk values are not all finite is left untouched; every block
    that was added is marked in ``added_blocks`` so a caller can take it back out.
    Returns True when every block was finite (and added).
    """
    size = chunk.shape[0]
    w = np.float32(weight)
    nblocks = (size + STREAM_BLOCK - 1) // STREAM_BLOCK
    for b in prange(nblocks):
        start = b * STREAM_BLOCK
        stop = min(start + STREAM_BLOCK, size)
        x = chunk[start:stop]
        check = np.float32(0.0)
        for t in range(stop - start):
            check += x[t] - x[t]
        if check == 0.0:
            a = acc[offset + start:offset + stop]
            for t in range(stop - start):
                a[t] += w * x[t]
            added_blocks[b] = True
        else:
            added_blocks[b] = False
    ok = True
    for b in range(nblocks):
        if not added_blocks[b]:
            ok = False
    return ok


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def unaccumulate_kernel(acc, chunk, weight, offset, added_blocks):
    """Take back the blocks ``accumulate_kernel`` added (exact up to float32 rounding)."""
    size = chunk.shape[0]
    w = np.float32(weight)
    nblocks = (size + STREAM_BLOCK - 1) // STREAM_BLOCK
    for b in prange(nblocks):
        if added_blocks[b]:
            start = b * STREAM_BLOCK
            stop = min(start + STREAM_BLOCK, size)
            x = chunk[start:stop]
            a = acc[offset + start:offset + stop]
            for t in range(stop - start):
                a[t] -= w * x[t]


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def scale_kernel(src, factor, out):
    """out = src * factor (float32), in parallel."""
    size = src.shape[0]
    f = np.float32(factor)
    nblocks = (size + STREAM_BLOCK - 1) // STREAM_BLOCK
    for b in prange(nblocks):
        start = b * STREAM_BLOCK
        stop = min(start + STREAM_BLOCK, size)
        for t in range(start, stop):
            out[t] = src[t] * f


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _load_block(stack, start, length, buf, bad_rows):
    n = stack.shape[0]
    for i in range(n):
        row = stack[i, start:start + length]
        dst = buf[i]
        check = np.float32(0.0)
        for t in range(length):
            v = row[t]
            dst[t] = v
            check += v - v
        if check != 0.0:
            bad_rows[i] = True


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _apply_network(buf, lo, hi, length):
    for c in range(lo.shape[0]):
        a = buf[lo[c]]
        b = buf[hi[c]]
        for t in range(length):
            x = a[t]
            y = b[t]
            a[t] = x if x < y else y
            b[t] = y if x < y else x


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def order_stat_kernel(stack, lo, hi, first, last, block, out, bad_rows):
    """out[p] = mean of the sorted values at positions first..last (inclusive) of column p.

    With first == last or first + 1 == last this is the median; with first = k and
    last = N - 1 - k it is the trimmed mean. The network (lo, hi) must put the values at
    positions outside [first, last] exactly (so the positions inside hold the middle
    values as a set). Blocks of ``block`` columns are copied into a local (N, block)
    buffer and the network is applied row-pair by row-pair (vectorised over columns).
    """
    n, size = stack.shape
    nblocks = (size + block - 1) // block
    count = last - first + 1
    for b in prange(nblocks):
        start = b * block
        length = min(block, size - start)
        buf = np.empty((n, block), dtype=np.float32)
        _load_block(stack, start, length, buf, bad_rows)
        _apply_network(buf, lo, hi, length)
        acc = np.zeros(block, dtype=np.float64)
        for i in range(first, last + 1):
            r = buf[i]
            for t in range(length):
                acc[t] += r[t]
        for t in range(length):
            out[start + t] = np.float32(acc[t] / count)


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def sq_distance_kernel(stack, nchunks, partial, bad_rows):
    """partial[c] = squared pairwise distances of the columns in chunk c (float64).

    Differences and squares are float32 within a short run of columns (256) whose
    sum is then added into float64, so rounding error stays ~1e-5 relative while
    the inner loop runs on float32 vectors. A square that overflows float32 gives
    +inf, which Krum treats as "very far" (it is not NaN).
    """
    n, size = stack.shape
    per = (size + nchunks - 1) // nchunks
    run = 256
    for c in prange(nchunks):
        start = min(c * per, size)
        stop = min(start + per, size)
        d = partial[c]
        for s in range(start, stop, run):
            e = min(s + run, stop)
            for i in range(n):
                xi = stack[i, s:e]
                check = np.float32(0.0)
                for t in range(e - s):
                    check += xi[t] - xi[t]
                if check != 0.0:
                    bad_rows[i] = True
                for j in range(i + 1, n):
                    xj = stack[j, s:e]
                    acc = np.float32(0.0)
                    for t in range(e - s):
                        diff = xi[t] - xj[t]
                        acc += diff * diff
                    d[i, j] += acc


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def sq_norms_kernel(stack, nchunks, partial, bad_rows):
    """partial[c, i] = float64 sum of squares of row i over column chunk c."""
    n, size = stack.shape
    per = (size + nchunks - 1) // nchunks
    for c in prange(nchunks):
        start = min(c * per, size)
        stop = min(start + per, size)
        for i in range(n):
            x = stack[i, start:stop]
            acc = 0.0
            check = np.float32(0.0)
            for t in range(stop - start):
                v = x[t]
                check += v - v
                acc += np.float64(v) * np.float64(v)
            partial[c, i] = acc
            if check != 0.0:
                bad_rows[i] = True


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def mean_rows_kernel(stack, rows, out):
    """out = unweighted mean of stack[rows], float64 accumulation per block."""
    size = out.shape[0]
    m = rows.shape[0]
    nblocks = (size + STREAM_BLOCK - 1) // STREAM_BLOCK
    for b in prange(nblocks):
        start = b * STREAM_BLOCK
        stop = min(start + STREAM_BLOCK, size)
        acc = np.zeros(STREAM_BLOCK, dtype=np.float64)
        for r in range(m):
            x = stack[rows[r], start:stop]
            for t in range(stop - start):
                acc[t] += x[t]
        for t in range(stop - start):
            out[start + t] = np.float32(acc[t] / m)

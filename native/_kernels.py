"""Numba kernels. Inputs are validated by the public wrappers before they get here.

Every kernel is ``njit(cache=True)``; compiled code is cached on disk next to this
module, so a new process loads it instead of compiling. Kernels are compiled lazily on
first call for the argument types actually used.

Non-finite inputs are flagged by the kernels with an integer test on the float32 bit
pattern (exponent bits all ones means NaN or +-inf): a max-reduction of ``bits & EXP``
over a block equals EXP exactly when some value is not finite. It vectorises without
relying on IEEE NaN semantics, which fast-math reassociation is allowed to fold away
(``v - v`` is 0 under reassoc).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types
from numba.extending import intrinsic

# Reassociation lets LLVM vectorise float reductions (sums of squares) and contract
# forms FMAs. No nnan/ninf, so comparisons keep IEEE meaning; finiteness checks are
# done on bit patterns anyway (see _any_nonfinite).
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

EXP32 = np.uint32(0x7F800000)


@njit(cache=True, nogil=True, inline="always")
def _any_nonfinite(bits, start, stop):
    """True when one of the float32 values whose bits are bits[start:stop] is NaN or +-inf."""
    seg = bits[start:stop]
    m = np.uint32(0)
    for t in range(seg.shape[0]):  # index from 0: numba then emits no negative-index fixup
        e = seg[t] & EXP32
        m = e if e > m else m
    return m == EXP32


@intrinsic
def _f32_pointer(typingctx, address):
    """The int address of float32 data as a pointer ``numba.carray`` can view."""
    sig = types.CPointer(types.float32)(types.intp)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.float32)))

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _row(addresses, k, size):
    return carray(_f32_pointer(addresses[k]), size)


# Coordinates per parallel work item of the streaming kernels (fedavg, accumulate):
# 4096 float64 partial sums are 32 KiB, they stay in L1/L2 while N updates stream in.
STREAM_BLOCK = 4096


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def fedavg_kernel(addresses, weights, out, bad_blocks):
    """out[p] = sum_i weights[i] * x_i[p], accumulated in float64 per block.

    ``addresses[i]`` is the data address of update i, a C-contiguous float32 array of
    ``len(out)`` values that the caller keeps alive for the call (a Python list of
    arrays would otherwise need a numba typed List, whose construction costs ~0.5 s
    of JIT in every new process); ``weights`` are normalised float64. Each block of the
    output is a float64 buffer in L1/L2 that the N updates stream through once, 8 (then
    4, then 1) at a time so the buffer is read and written once per group rather than
    once per update. ``bad_blocks[b]`` is set
    when block b of the result is not finite (some input there was not).
    """
    n = addresses.shape[0]
    size = out.shape[0]
    out_bits = out.view(np.uint32)
    nblocks = (size + STREAM_BLOCK - 1) // STREAM_BLOCK
    for b in prange(nblocks):
        start = b * STREAM_BLOCK
        stop = min(start + STREAM_BLOCK, size)
        length = stop - start
        acc = np.zeros(STREAM_BLOCK, dtype=np.float64)
        i = 0
        while i + 8 <= n:
            x0 = _row(addresses, i, size)[start:stop]
            x1 = _row(addresses, i + 1, size)[start:stop]
            x2 = _row(addresses, i + 2, size)[start:stop]
            x3 = _row(addresses, i + 3, size)[start:stop]
            x4 = _row(addresses, i + 4, size)[start:stop]
            x5 = _row(addresses, i + 5, size)[start:stop]
            x6 = _row(addresses, i + 6, size)[start:stop]
            x7 = _row(addresses, i + 7, size)[start:stop]
            w0, w1, w2, w3 = weights[i], weights[i + 1], weights[i + 2], weights[i + 3]
            w4, w5, w6, w7 = weights[i + 4], weights[i + 5], weights[i + 6], weights[i + 7]
            for t in range(length):
                acc[t] += (w0 * x0[t] + w1 * x1[t] + w2 * x2[t] + w3 * x3[t]) + (
                    w4 * x4[t] + w5 * x5[t] + w6 * x6[t] + w7 * x7[t]
                )
            i += 8
        while i + 4 <= n:
            x0 = _row(addresses, i, size)[start:stop]
            x1 = _row(addresses, i + 1, size)[start:stop]
            x2 = _row(addresses, i + 2, size)[start:stop]
            x3 = _row(addresses, i + 3, size)[start:stop]
            w0, w1, w2, w3 = weights[i], weights[i + 1], weights[i + 2], weights[i + 3]
            for t in range(length):
                acc[t] += w0 * x0[t] + w1 * x1[t] + w2 * x2[t] + w3 * x3[t]
            i += 4
        while i < n:
            x = _row(addresses, i, size)[start:stop]
            w = weights[i]
            for t in range(length):
                acc[t] += w * x[t]
            i += 1
        o = out[start:stop]
        for t in range(length):
            o[t] = np.float32(acc[t])
        # The weights are normalised, so the result is finite iff every input is.
        bad_blocks[b] = _any_nonfinite(out_bits, start, stop)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def accumulate_blocks(acc, chunk, weight, offset, added_blocks, first_block, last_block):
    """acc[offset:offset+len] += weight * chunk (float32) for blocks [first_block, last_block).

    A block whose chunk values are not all finite is left untouched; every block that
    was added is marked in ``added_blocks`` so the caller can take it back out. Serial
    and ``nogil``: the Accumulator spreads blocks over threads itself (_workshare.py).

    Used by the Accumulator's own work-sharing (see accumulator.py): Python threads
    take ranges of blocks from a shared counter, so a thread that the OS has not
    scheduled yet never holds up the caller the way a parallel-region barrier does.
    """
    size = chunk.shape[0]
    w = np.float32(weight)
    chunk_bits = chunk.view(np.uint32)
    for b in range(first_block, last_block):
        start = b * STREAM_BLOCK
        stop = min(start + STREAM_BLOCK, size)
        x = chunk[start:stop]
        if not _any_nonfinite(chunk_bits, start, stop):
            a = acc[offset + start : offset + stop]
            for t in range(stop - start):
                a[t] += w * x[t]
            added_blocks[b] = True
        else:
            added_blocks[b] = False


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def accumulate_serial(acc, chunk, weight, offset):
    """acc[offset:offset+len] += weight * chunk (float32), serially, in the calling thread:
    the small-update path of the Accumulator (no work-sharing hand-off, no flags array).

    Returns -1 when every block was added, else the index of the first block whose values
    are not all finite: blocks before it were added (the caller takes them back out with
    :func:`unaccumulate_serial`), it and the blocks after it were not."""
    size = chunk.shape[0]
    w = np.float32(weight)
    chunk_bits = chunk.view(np.uint32)
    nblocks = (size + STREAM_BLOCK - 1) // STREAM_BLOCK
    for b in range(nblocks):
        start = b * STREAM_BLOCK
        stop = min(start + STREAM_BLOCK, size)
        if _any_nonfinite(chunk_bits, start, stop):
            return b
        x = chunk[start:stop]
        a = acc[offset + start : offset + stop]
        for t in range(stop - start):
            a[t] += w * x[t]
    return -1


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def unaccumulate_serial(acc, chunk, weight, offset, blocks):
    """Take back the first ``blocks`` blocks :func:`accumulate_serial` added."""
    size = chunk.shape[0]
    w = np.float32(weight)
    stop_all = min(blocks * STREAM_BLOCK, size)
    x = chunk[:stop_all]
    a = acc[offset : offset + stop_all]
    for t in range(stop_all):
        a[t] -= w * x[t]


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def unaccumulate_finite(acc, chunk, weight, offset):
    """Take back the blocks of ``chunk`` that hold only finite values: those the shared
    path (native/_pool.py) added when another block of the chunk was not finite."""
    size = chunk.shape[0]
    w = np.float32(weight)
    chunk_bits = chunk.view(np.uint32)
    nblocks = (size + STREAM_BLOCK - 1) // STREAM_BLOCK
    for b in range(nblocks):
        start = b * STREAM_BLOCK
        stop = min(start + STREAM_BLOCK, size)
        if not _any_nonfinite(chunk_bits, start, stop):
            x = chunk[start:stop]
            a = acc[offset + start : offset + stop]
            for t in range(stop - start):
                a[t] -= w * x[t]


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def scale_serial(values, factor):
    """values *= factor (float32), in place, serially (small results)."""
    f = np.float32(factor)
    for t in range(values.shape[0]):
        values[t] = values[t] * f


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def unaccumulate_kernel(acc, chunk, weight, offset, added_blocks):
    """Take back the blocks ``accumulate_blocks`` added (exact up to float32 rounding)."""
    size = chunk.shape[0]
    w = np.float32(weight)
    nblocks = (size + STREAM_BLOCK - 1) // STREAM_BLOCK
    for b in prange(nblocks):
        if added_blocks[b]:
            start = b * STREAM_BLOCK
            stop = min(start + STREAM_BLOCK, size)
            x = chunk[start:stop]
            a = acc[offset + start : offset + stop]
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
        s = src[start:stop]
        o = out[start:stop]
        for t in range(stop - start):
            o[t] = s[t] * f


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _load_block(stack, bits, start, length, buf, bad_rows):
    n = stack.shape[0]
    for i in range(n):
        row = stack[i, start : start + length]
        dst = buf[i]
        for t in range(length):
            dst[t] = row[t]
        if _any_nonfinite(bits[i], start, start + length):
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


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def order_stat_kernel(stack, lo, hi, first, last, block, out, bad_rows, first_block, last_block):
    """out[p] = mean of the sorted values at positions first..last (inclusive) of column p.

    With first == last or first + 1 == last this is the median; with first = k and
    last = N - 1 - k it is the trimmed mean. The network (lo, hi) must put the values at
    positions outside [first, last] exactly (so the positions inside hold the middle
    values as a set). Blocks of ``block`` columns are copied into a local (N, block)
    buffer and the network is applied row-pair by row-pair (vectorised over columns).
    Serial over blocks [first_block, last_block); threads share blocks via _workshare.
    """
    n, size = stack.shape
    bits = stack.view(np.uint32)
    count = last - first + 1
    for b in range(first_block, last_block):
        start = b * block
        length = min(block, size - start)
        buf = np.empty((n, block), dtype=np.float32)
        _load_block(stack, bits, start, length, buf, bad_rows)
        _apply_network(buf, lo, hi, length)
        acc = np.zeros(block, dtype=np.float64)
        for i in range(first, last + 1):
            r = buf[i]
            for t in range(length):
                acc[t] += r[t]
        o = out[start : start + length]
        for t in range(length):
            o[t] = np.float32(acc[t] / count)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def sq_distance_kernel(stack, nchunks, partial, bad_rows, first_chunk, last_chunk):
    """partial[c] = squared pairwise distances (upper triangle) of the columns in chunk c,
    for chunks [first_chunk, last_chunk) of ``nchunks`` (threads share chunks via _workshare).

    Differences and squares are float32 within a short run of columns (512) whose
    sum is then added into float64, so rounding error stays ~1e-5 relative while
    the inner loop runs on float32 vectors. A square that overflows float32 gives
    +inf, which Krum treats as "very far" (it is not NaN).
    """
    n, size = stack.shape
    bits = stack.view(np.uint32)
    per = (size + nchunks - 1) // nchunks
    run = 512
    for c in range(first_chunk, last_chunk):
        start = min(c * per, size)
        stop = min(start + per, size)
        d = partial[c]
        for s in range(start, stop, run):
            e = min(s + run, stop)
            length = e - s
            for i in range(n):
                xi = stack[i, s:e]
                if _any_nonfinite(bits[i], s, e):
                    bad_rows[i] = True
                # Four rows j at a time: x_i is loaded once per four distances.
                j = i + 1
                while j + 4 <= n:
                    x0 = stack[j, s:e]
                    x1 = stack[j + 1, s:e]
                    x2 = stack[j + 2, s:e]
                    x3 = stack[j + 3, s:e]
                    a0 = np.float32(0.0)
                    a1 = np.float32(0.0)
                    a2 = np.float32(0.0)
                    a3 = np.float32(0.0)
                    for t in range(length):
                        v = xi[t]
                        d0 = v - x0[t]
                        d1 = v - x1[t]
                        d2 = v - x2[t]
                        d3 = v - x3[t]
                        a0 += d0 * d0
                        a1 += d1 * d1
                        a2 += d2 * d2
                        a3 += d3 * d3
                    d[i, j] += a0
                    d[i, j + 1] += a1
                    d[i, j + 2] += a2
                    d[i, j + 3] += a3
                    j += 4
                while j < n:
                    xj = stack[j, s:e]
                    acc = np.float32(0.0)
                    for t in range(length):
                        diff = xi[t] - xj[t]
                        acc += diff * diff
                    d[i, j] += acc
                    j += 1


@njit(parallel=True, cache=True, nogil=True, fastmath=FASTMATH)
def sq_norms_kernel(stack, nchunks, partial, bad_rows):
    """partial[c, i] = float64 sum of squares of row i over column chunk c."""
    n, size = stack.shape
    bits = stack.view(np.uint32)
    per = (size + nchunks - 1) // nchunks
    for c in prange(nchunks):
        start = min(c * per, size)
        stop = min(start + per, size)
        for i in range(n):
            x = stack[i, start:stop]
            acc = 0.0
            for t in range(stop - start):
                v = np.float64(x[t])
                acc += v * v
            partial[c, i] = acc
            if _any_nonfinite(bits[i], start, stop):
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
        o = out[start:stop]
        for t in range(stop - start):
            o[t] = np.float32(acc[t] / m)

"""Native work sharing for the streaming kernels (Accumulator.add, its mean, fedavg).

``_workshare.run_blocks`` hands ranges of blocks to Python pool threads: each hand-off
wakes a thread that must take the GIL, some tens of microseconds, so updates below ~1M
values were added by one core. Here the helper threads run a ``nogil`` Numba loop that
never returns to Python: it watches a shared control word, spins (``pause``, ~5 ms) after
each job so a stream of ``add`` calls finds it awake, then sleeps on a futex.
A job costs the caller a few atomic operations, so updates of ~50K values and up use
both cores.

The protocol keeps what made ``run_blocks`` robust on a shared machine: the caller
takes tasks (ranges of blocks) from the same counter as the helpers and, when none
are left, waits only for tasks a helper actually took. A helper the OS has not
scheduled holds nothing up.

The control word packs the job generation and the range of tasks not yet taken; the
caller takes tasks from its front, helpers from its back, each with a compare-and-swap
that fails if the generation moved on, so it never works on a later
job with an earlier job's parameters. The caller writes a job's parameters before it
publishes the generation (sequentially consistent atomics), and rewrites them only once
every task of the previous job is done.

x86-64 Linux only (``pause`` and the ``futex`` system call as inline assembly, so the
kernels stay cacheable); elsewhere ``available()`` is False and the Accumulator keeps the
Python work sharing (fedavg numba's parallel loop).
"""

from __future__ import annotations

import os
import platform
import sys
import threading

import numba
import numpy as np
from llvmlite import binding, ir  # type: ignore[import-untyped]
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._kernels import (
    STREAM_BLOCK,
    _any_nonfinite,
    accumulate_serial,
    scale_serial,
    unaccumulate_finite,
    unaccumulate_serial,
)
from ._small_means import WIDTHS as _MEAN_WIDTHS
from ._small_means import mean_of_width

# --- atomics and system calls ---------------------------------------------------------------


def _slot(context, builder, arrty, ary, idx):
    array = context.make_array(arrty)(context, builder, ary)
    return cgutils.get_item_pointer(context, builder, arrty, array, [idx], wraparound=False)


@intrinsic
def _load(typingctx, arr, idx):
    """Sequentially consistent load of arr[idx] (int64)."""

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "seq_cst", 8)

    return types.int64(arr, idx), codegen


@intrinsic
def _store(typingctx, arr, idx, value):
    """Sequentially consistent store of value into arr[idx] (int64)."""

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(val, ptr, "seq_cst", 8)
        return context.get_dummy_value()

    return types.void(arr, idx, value), codegen


@intrinsic
def _fetch_add(typingctx, arr, idx, value):
    """arr[idx] += value atomically; returns the old value."""

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")

    return types.int64(arr, idx, value), codegen


@intrinsic
def _cas(typingctx, arr, idx, expected, new):
    """Compare-and-swap arr[idx] from expected to new; returns the value found."""

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        exp = context.cast(builder, args[2], sig.args[2], types.int64)
        val = context.cast(builder, args[3], sig.args[3], types.int64)
        pair = builder.cmpxchg(ptr, exp, val, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)

    return types.int64(arr, idx, expected, new), codegen


@intrinsic
def _address(typingctx, arr, idx):
    """The address of arr[idx], as an int."""

    def codegen(context, builder, sig, args):
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        return builder.ptrtoint(ptr, ir.IntType(64))

    return types.int64(arr, idx), codegen


@intrinsic
def _pause(typingctx):
    """The x86 spin-wait hint."""

    def codegen(context, builder, sig, args):
        asm = ir.InlineAsm(ir.FunctionType(ir.VoidType(), []), "pause", "~{memory}", side_effect=True)
        builder.call(asm, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _syscall4(typingctx, nr, a1, a2, a3, a4):
    """Linux x86-64 system call ``nr`` with four integer arguments; returns rax."""

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        vals = [context.cast(builder, v, t, types.int64) for v, t in zip(args, sig.args, strict=True)]
        fnty = ir.FunctionType(i64, [i64] * 5)
        asm = ir.InlineAsm(
            fnty, "syscall", "={rax},{rax},{rdi},{rsi},{rdx},{r10},~{rcx},~{r11},~{memory}", side_effect=True
        )
        return builder.call(asm, vals)

    return types.int64(nr, a1, a2, a3, a4), codegen


# Compiling inline assembly needs the native assembly parser, which numba leaves out.
binding.initialize_native_asmparser()

_SYS_FUTEX = 202
_FUTEX_WAIT_PRIVATE = 128
_FUTEX_WAKE_PRIVATE = 129

# --- the control block ------------------------------------------------------------------------
# int64 slots; the ones two threads write are 64 bytes apart (no two share a cache line).
_WORD = 0  # (generation << 40) | (back << 20) | front: tasks [front, back) are left
_DONE = 8  # tasks finished in this generation
_BAD = 16  # set when a block of the job holds a non-finite value
_FUTEX = 24  # bumped on every job: what sleeping helpers wait on (low 32 bits)
_SLEEPERS = 32  # helpers inside (or about to enter) futex wait
_HELPED = 40  # tasks run by helpers, all jobs together (a statistic for tests and benchmarks)
_BUSY = 48  # 1 while a caller owns the helpers (a second caller works alone)
_WAKES = 49  # futex wake calls made by callers (a statistic)
_WAITS = 50  # futex waits entered by helpers (a statistic)
_CALLER_WAITING = 51  # the caller sleeps until the helpers' tasks are done (on _DONE's futex)
_TIMESPEC = 52  # and 53: {0 s, 1 ms}, the longest such a sleep lasts (a lost wake costs no more)
_TASKS_PER_JOB_SLOT = 54  # tasks a job is cut into (0: _TASKS_PER_JOB); a tuning knob for benchmarks
_BACKOFF = 55  # jobs the caller still runs alone since a helper was preempted mid-task
#: After a helper held up a job (preempted mid-task: the machine is oversubscribed), the next
#: adds and means run in the calling thread alone: at most this many, and only while their
#: values add up to _BACKOFF_VALUES (large jobs keep both cores).
_BACKOFF_JOBS = 32
_BACKOFF_VALUES = 4 << 20
_PARAMS = 56  # 16 int64 parameters of the current job, then 8 float64
_FLOATS = 72
_STATE_SLOTS = 80
_KIND, _NTASKS, _TASK_BLOCKS, _SIZE, _OUT, _IN, _OFFSET, _ROWS, _N = range(9)
# job kinds
_ACCUMULATE, _SCALE, _FEDAVG, _STORE = 1, 2, 3, 4

#: pause instructions a helper spins before it sleeps (~5 ms here). Waking a sleeping helper
#: takes ~0.5 ms typically and up to ~8 ms on this shared VM (measured), longer than a job of
#: 1M values: a helper must stay awake through the gaps of a stream of ``add`` calls to be of
#: use. (libgomp's workers, torch's, spin ~9 ms after a parallel region.)
_SPIN = 120_000
_LOW32 = np.int64(0xFFFFFFFF)
_GEN_SHIFT = 40
_GEN_MASK = np.int64((1 << 23) - 1)
_BACK_SHIFT = 20
_TASK_MASK = np.int64((1 << 20) - 1)
#: at most this many tasks per job (the control word's 20-bit task fields)
_MAX_TASKS = 1 << 20
_TASKS_PER_JOB = 4
#: Coordinates per fedavg block: N rows stream through a float64 buffer of this many values
#: (128 KiB, in L2); longer runs per row than the Accumulator's blocks keep the prefetchers
#: on N streams at once.
_FEDAVG_BLOCK = 16384


@njit(cache=True, nogil=True, inline="always")
def _f32(address, size):
    return carray(_f32_pointer(address), size)


def _pointer_to(element: types.Type) -> object:
    """An intrinsic turning an int64 address into a pointer to ``element`` values."""

    @intrinsic
    def pointer(typingctx, address):
        sig = types.CPointer(element)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(element)))

        return sig, codegen

    return pointer


_f32_pointer = _pointer_to(types.float32)
_f64_pointer = _pointer_to(types.float64)
_i64_pointer = _pointer_to(types.int64)


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _run_task(ctrl, ip, fp, task, scratch):
    """Blocks [task * tb, (task + 1) * tb) of the current job."""
    kind = ip[_KIND]
    tb = ip[_TASK_BLOCKS]
    size = ip[_SIZE]
    block = _FEDAVG_BLOCK if kind == _FEDAVG else STREAM_BLOCK
    nblocks = (size + block - 1) // block
    first = task * tb
    last = min(first + tb, nblocks)
    if kind == _ACCUMULATE:
        x = _f32(ip[_IN], size)
        bits = x.view(np.uint32)
        acc = _f32(ip[_OUT] + 4 * ip[_OFFSET], size)
        w = np.float32(fp[0])
        for b in range(first, last):
            start = b * STREAM_BLOCK
            stop = min(start + STREAM_BLOCK, size)
            if _any_nonfinite(bits, start, stop):
                _store(ctrl, _BAD, 1)
                continue
            xs = x[start:stop]
            a = acc[start:stop]
            for t in range(stop - start):
                a[t] += w * xs[t]
    elif kind == _SCALE:
        v = _f32(ip[_OUT], size)
        f = np.float32(fp[0])
        start = first * STREAM_BLOCK
        stop = min(last * STREAM_BLOCK, size)
        vs = v[start:stop]
        for t in range(stop - start):
            vs[t] = vs[t] * f
    elif kind == _FEDAVG:
        _fedavg_blocks(ctrl, ip, first, last, scratch)
    elif kind == _STORE:
        _store_blocks(ctrl, ip, fp, first, last)


@njit(cache=True, nogil=True, fastmath={"contract"})
def _store_blocks(ctrl, ip, fp, first, last):
    """out = 0 + w * x over blocks [first, last): the first add into a fresh (unwritten) sum.
    ``+ 0`` contracts to the same fused multiply-add as adding into a zero sum (no ``nsz``
    here, so it is not dropped): the bits, zeros' signs included, are those of an add."""
    size = ip[_SIZE]
    x = _f32(ip[_IN], size)
    bits = x.view(np.uint32)
    out = _f32(ip[_OUT], size)
    w = np.float32(fp[0])
    zero = np.float32(0.0)
    for b in range(first, last):
        start = b * STREAM_BLOCK
        stop = min(start + STREAM_BLOCK, size)
        if _any_nonfinite(bits, start, stop):
            _store(ctrl, _BAD, 1)
            continue
        xs = x[start:stop]
        o = out[start:stop]
        for t in range(stop - start):
            o[t] = w * xs[t] + zero


_FM = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, nogil=True, fastmath=_FM)
def _group(acc, o, rows, weights, i, k, size, start, stop, mode):
    """Rows i..i+k-1 (k = 4, 2 or 1) of one block into the block's float64 sum. mode 0
    starts the sum, 1 adds to it, 2 is the whole mean (a single group), 3 adds the last
    group and rounds into the output. The branches are outside the vectorised loops."""
    length = stop - start
    if k == 4:
        x0 = _f32(rows[i], size)[start:stop]
        x1 = _f32(rows[i + 1], size)[start:stop]
        x2 = _f32(rows[i + 2], size)[start:stop]
        x3 = _f32(rows[i + 3], size)[start:stop]
        w0, w1, w2, w3 = weights[i], weights[i + 1], weights[i + 2], weights[i + 3]
        if mode == 0:
            for t in range(length):
                acc[t] = (w0 * x0[t] + w1 * x1[t]) + (w2 * x2[t] + w3 * x3[t])
        elif mode == 1:
            for t in range(length):
                acc[t] += (w0 * x0[t] + w1 * x1[t]) + (w2 * x2[t] + w3 * x3[t])
        elif mode == 2:
            for t in range(length):
                o[t] = np.float32((w0 * x0[t] + w1 * x1[t]) + (w2 * x2[t] + w3 * x3[t]))
        else:
            for t in range(length):
                o[t] = np.float32(acc[t] + ((w0 * x0[t] + w1 * x1[t]) + (w2 * x2[t] + w3 * x3[t])))
    elif k == 2:
        x0 = _f32(rows[i], size)[start:stop]
        x1 = _f32(rows[i + 1], size)[start:stop]
        w0, w1 = weights[i], weights[i + 1]
        if mode == 0:
            for t in range(length):
                acc[t] = w0 * x0[t] + w1 * x1[t]
        elif mode == 1:
            for t in range(length):
                acc[t] += w0 * x0[t] + w1 * x1[t]
        elif mode == 2:
            for t in range(length):
                o[t] = np.float32(w0 * x0[t] + w1 * x1[t])
        else:
            for t in range(length):
                o[t] = np.float32(acc[t] + (w0 * x0[t] + w1 * x1[t]))
    else:
        x0 = _f32(rows[i], size)[start:stop]
        w0 = weights[i]
        if mode == 0:
            for t in range(length):
                acc[t] = w0 * x0[t]
        elif mode == 1:
            for t in range(length):
                acc[t] += w0 * x0[t]
        elif mode == 2:
            for t in range(length):
                o[t] = np.float32(w0 * x0[t])
        else:
            for t in range(length):
                o[t] = np.float32(acc[t] + w0 * x0[t])


@njit(cache=True, nogil=True, fastmath=_FM)
def _fedavg_blocks(ctrl, ip, first, last, acc):
    """out = sum_i weights[i] * rows[i] over blocks [first, last), summed in float64. 8 or 12
    rows (``padded_rows`` pads 5 to 11 up to one of these) stream through at once, their sums
    in registers (native/_small_means.py); other counts go four at a time through a block
    buffer (L1/L2), the last group rounding straight into the output. Each result block is
    checked for non-finite values (the weights are normalised, so it is finite iff every
    input is)."""
    size = ip[_SIZE]
    n = ip[_N]
    out = _f32(ip[_OUT], size)
    out_bits = out.view(np.uint32)
    rows = carray(_i64_pointer(ip[_ROWS]), n)
    weights = carray(_f64_pointer(ip[_IN]), n)
    for b in range(first, last):
        start = b * _FEDAVG_BLOCK
        stop = min(start + _FEDAVG_BLOCK, size)
        if mean_of_width(n, out, rows, weights, size, start, stop):
            if _any_nonfinite(out_bits, start, stop):
                _store(ctrl, _BAD, 1)
            continue
        o = out[start:stop]
        i = 0
        while i < n:
            left = n - i
            k = 4 if left >= 4 else (2 if left >= 2 else 1)
            mode = (0 if i == 0 else 1) + (2 if i + k == n else 0)
            _group(acc, o, rows, weights, i, k, size, start, stop, mode)
            i += k
        if _any_nonfinite(out_bits, start, stop):
            _store(ctrl, _BAD, 1)


@njit(cache=True, nogil=True)
def _work(ctrl, ip, fp, generation, from_front, scratch):
    """Take and run tasks of ``generation`` until none is left; the number run. The caller
    takes tasks from the front, helpers from the back: from one job to the next each core
    tends to get the same part of the sum, which stays in its cache (when it fits there)."""
    ran = 0
    while True:
        word = _load(ctrl, _WORD)
        if (word >> _GEN_SHIFT) != generation:
            return ran
        front = word & _TASK_MASK
        back = (word >> _BACK_SHIFT) & _TASK_MASK
        if front >= back:
            return ran
        if from_front:
            task = front
            new = word + 1
        else:
            task = back - 1
            new = word - (np.int64(1) << _BACK_SHIFT)
        if _cas(ctrl, _WORD, word, new) != word:
            continue
        _run_task(ctrl, ip, fp, task, scratch)
        ran += 1


@njit(cache=True, nogil=True, inline="always")
def _split(state):
    return state, state[_PARAMS:_FLOATS], state[_FLOATS:].view(np.float64)


@njit(cache=True, nogil=True)
def helper_loop(state):
    """A helper thread's life: wait for a job, share its tasks, spin, sleep, repeat."""
    ctrl, ip, fp = _split(state)
    # The fedavg block sum, allocated once: a task never allocates, so it cannot fail half
    # done (an allocation failure here ends the thread before it takes any task).
    scratch = np.empty(_FEDAVG_BLOCK, dtype=np.float64)
    seen = _load(ctrl, _WORD) >> _GEN_SHIFT
    while True:
        spins = 0
        while True:
            generation = _load(ctrl, _WORD) >> _GEN_SHIFT
            if generation != seen:
                break
            if spins < _SPIN:
                _pause()
                spins += 1
                continue
            expected = _load(ctrl, _FUTEX) & _LOW32
            _fetch_add(ctrl, _SLEEPERS, 1)
            if (_load(ctrl, _WORD) >> _GEN_SHIFT) == seen:
                ctrl[_WAITS] += 1
                _syscall4(_SYS_FUTEX, _address(ctrl, _FUTEX), _FUTEX_WAIT_PRIVATE, expected, 0)
            _fetch_add(ctrl, _SLEEPERS, -1)
            spins = 0
        seen = generation
        ran = _work(ctrl, ip, fp, generation, False, scratch)
        if ran:
            # one shared write per job, not per task: the counters' line moves between cores once
            _fetch_add(ctrl, _HELPED, ran)  # first: once the caller sees its job done, so does helped()
            _fetch_add(ctrl, _DONE, ran)
            if _load(ctrl, _CALLER_WAITING):
                _syscall4(_SYS_FUTEX, _address(ctrl, _DONE), _FUTEX_WAKE_PRIVATE, 1 << 30, 0)


@njit(cache=True, nogil=True)
def _run_job(ctrl, ip, ntasks):
    """Publish the job whose parameters are in ip/fp (waking sleeping helpers); returns its
    generation."""
    ip[_NTASKS] = ntasks
    _store(ctrl, _DONE, 0)
    _store(ctrl, _BAD, 0)
    generation = ((_load(ctrl, _WORD) >> _GEN_SHIFT) + 1) & _GEN_MASK
    _store(ctrl, _WORD, (generation << _GEN_SHIFT) | (ntasks << _BACK_SHIFT))
    _fetch_add(ctrl, _FUTEX, 1)
    if _load(ctrl, _SLEEPERS) > 0:
        ctrl[_WAKES] += 1
        _syscall4(_SYS_FUTEX, _address(ctrl, _FUTEX), _FUTEX_WAKE_PRIVATE, 1 << 30, 0)
    return generation


@njit(cache=True, nogil=True)
def _finish(ctrl, ip, fp, generation, ntasks, scratch):
    """Run tasks of the job until none is left, then wait for those helpers took; returns
    1 when a block held a non-finite value."""
    helpers_share = ntasks - _work(ctrl, ip, fp, generation, True, scratch)
    # How long a task should take: its bytes at a slow 10 GB/s, in pause instructions
    # (~40 ns, ~420 bytes at that speed).
    block_bytes = _FEDAVG_BLOCK * 4 * (ip[_N] + 1) if ip[_KIND] == _FEDAVG else STREAM_BLOCK * 12
    patience = 256 + ip[_TASK_BLOCKS] * block_bytes // 420
    spins = 0
    while True:
        done = _load(ctrl, _DONE)
        if done >= helpers_share:
            break
        # Only tasks a helper took are left: it is running them, or the OS preempted it.
        # Spin while a task could still be running, then sleep until it is done (on a busy
        # machine the helper may need this very core) and run the next jobs alone.
        spins += 1
        if spins < patience:
            _pause()
            continue
        # Alone, a small job loses little and waits for no one; a large one would lose the
        # second core for longer than the preemption cost: back off about 4M values' worth.
        ctrl[_BACKOFF] = min(_BACKOFF_JOBS, _BACKOFF_VALUES // max(1, ip[_SIZE]))
        _store(ctrl, _CALLER_WAITING, 1)
        if _load(ctrl, _DONE) == done:
            ctrl[_TIMESPEC] = 0
            ctrl[_TIMESPEC + 1] = 1_000_000
            _syscall4(_SYS_FUTEX, _address(ctrl, _DONE), _FUTEX_WAIT_PRIVATE, done & _LOW32, _address(ctrl, _TIMESPEC))
        _store(ctrl, _CALLER_WAITING, 0)
    return _load(ctrl, _BAD)


@njit(cache=True, nogil=True, inline="always")
def _task_blocks(state, nblocks, most):
    """Blocks per task: up to ``_TASKS_PER_JOB`` tasks per job (taking a task moves a cache
    line between cores; measured, 4 beat 8 and 16 at 100K..1M values, and 2 halves beat 4
    at 100K), tasks of at least 16 blocks unless there are only 2, at most ``most`` (large
    jobs get many tasks, so cores end together), never more than the control word holds."""
    per_job = state[_TASKS_PER_JOB_SLOT]
    ntasks = min(per_job if per_job > 0 else _TASKS_PER_JOB, max(2, nblocks // 16))
    tb = max(1, min(most, (nblocks + ntasks - 1) // ntasks))
    return max(tb, (nblocks + _MAX_TASKS - 2) // (_MAX_TASKS - 1))


@njit(cache=True, nogil=True, inline="always")
def _claim(state, backoff):
    """True: the caller has the helpers for one job. False: it works alone, because another
    caller has them or (``backoff``) a helper was preempted mid-task a few jobs ago."""
    if _cas(state, _BUSY, 0, 1) != 0:
        return False
    if backoff and state[_BACKOFF] > 0:
        state[_BACKOFF] -= 1
        _store(state, _BUSY, 0)
        return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _set_job(state, ip, kind, size, block, most, out_address):
    """The fields every job sets (its kind, size, output and blocks per task); the job's task count."""
    nblocks = (size + block - 1) // block
    tb = _task_blocks(state, nblocks, most)
    ip[_KIND] = kind
    ip[_TASK_BLOCKS] = tb
    ip[_SIZE] = size
    ip[_OUT] = out_address
    return (nblocks + tb - 1) // tb


@njit(cache=True, nogil=True)
def accumulate(state, acc, chunk, weight, offset):
    """acc[offset:offset+len] += weight * chunk (float32), shared with the helpers (alone if
    another caller has them). Returns 1 when the chunk holds a non-finite value: it is then
    taken back out (the blocks that were added are subtracted), else 0."""
    if not _claim(state, True):
        first_bad = accumulate_serial(acc, chunk, weight, offset)
        if first_bad >= 0:
            unaccumulate_serial(acc, chunk, weight, offset, first_bad)
            return 1
        return 0
    ctrl, ip, fp = _split(state)
    ntasks = _set_job(state, ip, _ACCUMULATE, chunk.shape[0], STREAM_BLOCK, 64, acc.ctypes.data)
    ip[_IN] = chunk.ctypes.data
    ip[_OFFSET] = offset
    fp[0] = weight
    generation = _run_job(ctrl, ip, ntasks)
    bad = _finish(ctrl, ip, fp, generation, ntasks, fp)  # fp: a scratch of the right type, unused here
    _store(state, _BUSY, 0)
    if bad:
        # blocks holding a non-finite value were skipped; every other one was added
        unaccumulate_finite(acc, chunk, weight, offset)
        return 1
    return 0


@njit(cache=True, nogil=True)
def store(state, out, update, weight):
    """out = weight * update (float32; out is a fresh, unwritten sum of the same length),
    shared with the helpers. Returns -1 (nothing done) if another caller has them, 1 if the
    update holds a non-finite value (out is then partly written: the caller clears it), else 0."""
    if not _claim(state, True):
        return -1
    ctrl, ip, fp = _split(state)
    ntasks = _set_job(state, ip, _STORE, update.shape[0], STREAM_BLOCK, 64, out.ctypes.data)
    ip[_IN] = update.ctypes.data
    fp[0] = weight
    generation = _run_job(ctrl, ip, ntasks)
    bad = _finish(ctrl, ip, fp, generation, ntasks, fp)  # fp: a scratch of the right type, unused here
    _store(state, _BUSY, 0)
    return bad


@njit(cache=True, nogil=True)
def scale(state, values, factor):
    """values *= factor (float32), shared with the helpers (alone if another caller has them)."""
    if not _claim(state, True):
        scale_serial(values, factor)
        return
    ctrl, ip, fp = _split(state)
    ntasks = _set_job(state, ip, _SCALE, values.shape[0], STREAM_BLOCK, 64, values.ctypes.data)
    fp[0] = factor
    generation = _run_job(ctrl, ip, ntasks)
    _finish(ctrl, ip, fp, generation, ntasks, fp)  # fp: a scratch of the right type, unused here
    _store(state, _BUSY, 0)


def padded_rows(addresses: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and weights for ``fedavg``: 5 to 12 rows padded up to 8 or 12 with row 0 at
    weight 0, as the kernels of those widths keep every row's sum in registers. A zero
    weight adds an exact zero (0 * x for a finite x; a non-finite row 0 fails the mean
    anyway) and the repeated row is read from L1. Up to 4 rows the general loop is one pass
    already (two for 3), and padding them costs more than it saves; above 12 the rows are too
    many streams at once (16 was 10 % slower). Keep both arrays alive until ``fedavg``
    returns: it reads them by address."""
    n = addresses.shape[0]
    width = next((w for w in _MEAN_WIDTHS if n <= w), n) if n > 4 else n
    if width == n:
        return addresses, weights
    rows = np.full(width, addresses[0], dtype=addresses.dtype)
    rows[:n] = addresses
    padded = np.zeros(width, dtype=weights.dtype)
    padded[:n] = weights
    return rows, padded


@njit(cache=True, nogil=True)
def fedavg(state, addresses, weights, out):
    """out = sum_i weights[i] * update_i (addresses[i]: the data of a float32 update of
    len(out) values), shared with the helpers. Returns 1 if the result holds a non-finite
    value (so some input does), 0 if not, -1 (nothing done) if another caller has them."""
    scratch = np.empty(_FEDAVG_BLOCK, dtype=np.float64)  # the caller's block sum (before the claim)
    if not _claim(state, False):
        return -1
    ctrl, ip, fp = _split(state)
    ntasks = _set_job(state, ip, _FEDAVG, out.shape[0], _FEDAVG_BLOCK, 16, out.ctypes.data)
    ip[_IN] = weights.ctypes.data
    ip[_ROWS] = addresses.ctypes.data
    ip[_N] = addresses.shape[0]
    generation = _run_job(ctrl, ip, ntasks)
    bad = _finish(ctrl, ip, fp, generation, ntasks, scratch)
    _store(state, _BUSY, 0)
    return bad


# --- the pool ------------------------------------------------------------------------------------


#: Whether the native helpers run on this platform (x86-64 Linux).
AVAILABLE = sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def available() -> bool:
    """Whether the native helpers run on this platform (x86-64 Linux)."""
    return AVAILABLE


def helper_count() -> int:
    """Helper threads (numba's thread count less the caller)."""
    return max(0, numba.get_num_threads() - 1)


_state: np.ndarray | None = None
_state_lock = threading.Lock()


def state() -> np.ndarray:
    """The shared state the native entry points take; starts the helpers on first use."""
    if _state is not None:
        return _state
    return _start()


def _start() -> np.ndarray:
    global _state
    with _state_lock:
        if _state is None:
            new = np.zeros(_STATE_SLOTS, dtype=np.int64)
            # Compile (or load from the cache) here: a helper would do it holding the GIL, and
            # take no job until done; a short-lived process might never cache it at all.
            helper_loop.compile((numba.typeof(new),))
            for i in range(helper_count()):
                threading.Thread(target=helper_loop, args=(new,), name=f"attestfl-native-{i}", daemon=True).start()
            _state = new
    return _state


def helped() -> int:
    """Tasks the helpers have run in this process (0 before the first job)."""
    return 0 if _state is None else int(_state[_HELPED])


def _after_fork() -> None:
    # The helpers do not exist in a forked child: a fresh pool starts its own there.
    global _state, _state_lock
    _state = None
    _state_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

"""Work sharing for kernels called many times in a row: the order statistics and Krum, and
Accumulator.add where the native helpers (native/_pool.py, x86-64 Linux) are unavailable.

A numba ``parallel=True`` call ends at a barrier that waits for every worker thread.
On a machine shared with other processes a worker can wait a whole scheduler slice
(several ms) before it runs, and a streaming aggregator makes one such call per site
update: measured here, 100 adds of 1M values went from ~15 ms to ~800 ms under load.
Instead, ranges of blocks are taken from a shared counter by the calling thread and
by helper threads running a serial ``nogil`` kernel; when the caller runs out of
ranges it cancels helpers that have not started, and waits only for ranges a helper
actually took.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numba

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helpers() -> tuple[ThreadPoolExecutor | None, int]:
    global _pool
    count = numba.get_num_threads() - 1
    if count < 1:
        return None, 0
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="attestfl-native")
    return _pool, count


def run_blocks(kernel: Callable[[int, int], None], nblocks: int, blocks_per_task: int) -> None:
    """Call ``kernel(first, last)`` over [0, nblocks) in ranges of ``blocks_per_task``."""
    ntasks = (nblocks + blocks_per_task - 1) // blocks_per_task
    pool, count = _helpers()
    if pool is None or ntasks < 2:
        kernel(0, nblocks)
        return
    lock = threading.Lock()
    state = [0]
    errors: list[BaseException] = []
    # A cancelled helper call stays queued in the pool until a helper thread pops
    # it; it must not keep the kernel (and so the caller's update) alive till then.
    holder: list[Callable[[int, int], None]] = [kernel]

    def work() -> None:
        while True:
            with lock:
                task = state[0]
                if task >= ntasks:
                    return
                state[0] = task + 1
                run = holder[0]
            first = task * blocks_per_task
            try:
                run(first, min(first + blocks_per_task, nblocks))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors.append(exc)
                return

    futures: list[Future[None]] = [pool.submit(work) for _ in range(min(count, ntasks - 1))]
    work()
    for future in futures:
        if not future.cancel():
            future.result()
    holder.clear()
    if errors:
        raise errors[0]

"""Streaming weighted mean: O(model) memory however many sites report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import _kernels, _pool
from ._validate import as_int, as_update, check_output
from ._validate import weight as check_weight
from ._workshare import run_blocks
from .errors import AggregationError, NonFiniteUpdateError

# Weights are applied in float32: outside this range w * x underflows or overflows.
MIN_WEIGHT = 1e-30
MAX_WEIGHT = 1e30
# 64 blocks of 4096 values (1 MiB of update) per work-sharing task: few enough tasks
# that the per-task Python overhead stays small, enough that a stalled thread is covered.
_BLOCKS_PER_TASK = 64
#: Updates of at most this many values are added serially in the calling thread (no hand-off
#: to a helper thread): below it, a hand-off costs more than the second core saves
#: (benchmarks/aggregation.py, ``accumulator_vs_torch``). The native helpers (native/_pool.py)
#: take a job in well under a microsecond; the portable Python work sharing needs tens.
SERIAL_MAX_VALUES = 48 * 1024 if _pool.available() else 1 << 20
_FLOAT32 = np.dtype(np.float32)


@dataclass(frozen=True)
class Contribution:
    """One accepted ``add``: weight ``weight`` over coordinates [offset, offset + length)."""

    offset: int
    length: int
    weight: float
    site: int


class Accumulator:
    """Weighted mean of updates (or chunks of them) added one at a time.

    The running sum ``sum_i w_i * x_i`` is kept in a float32 buffer of ``size``
    values and updated in place with a parallel fused multiply-add (float32
    accumulation, like ``torch.Tensor.add_(x, alpha=w)``; a float64 buffer would
    double both the memory and the bytes moved per ``add``). ``result()`` divides
    by the total weight in place, so the accumulator holds one model's worth of
    memory beyond whatever update the caller is currently handing in.

    Chunks of an update may arrive separately: ``add(chunk, w, offset=k)`` adds
    ``w * chunk`` at coordinates [k, k + len(chunk)). ``result()`` checks that every
    coordinate received the same total weight (so a missing or duplicated chunk is
    an error, not a silently skewed mean).
    """

    def __init__(self, size: int, *, out: np.ndarray | None = None) -> None:
        """``out``: a C-contiguous, writeable float32 array of ``size`` values to hold the sum
        (and so the mean ``result()`` returns) instead of a new one; its contents are
        overwritten. A buffer reused from round to round spares the OS zeroing and mapping
        fresh pages (~2 ms per 10M values here)."""
        size = as_int(size, "size")
        if size < 0:
            raise AggregationError(f"size must be >= 0, got {size}")
        self._size = size
        # A large sum starts unwritten (np.empty): the first whole update is stored into it
        # (w * x, the bits an add into zeros gives) rather than added, which spares reading
        # zeros and faulting each page in twice (read, then write). Otherwise it starts zeroed.
        self._fresh = size > SERIAL_MAX_VALUES and _pool.available()
        if out is not None:
            out = check_output(out, size, "the accumulator")
            if not self._fresh:
                out.fill(0.0)
            self._sum = out
        else:
            self._sum = np.empty(size, dtype=np.float32) if self._fresh else np.zeros(size, dtype=np.float32)
        # (offset, length, weight, site) per accepted add: plain tuples, a Contribution each
        # would cost more than the kernel on a small update (see ``contributions``).
        self._parts: list[tuple[int, int, float, int]] = []
        # Every accepted add so far covered the whole accumulator (the usual case).
        self._whole = True
        self._adds = 0
        self._result: np.ndarray | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def contributions(self) -> tuple[Contribution, ...]:
        return tuple(Contribution(*part) for part in self._parts)

    def add(self, update: np.ndarray, weight: float, offset: int = 0, *, site: int | None = None) -> None:
        """Add ``weight * update`` at ``offset``. ``site`` names the update in errors
        (default: the number of earlier ``add`` calls). A non-finite update raises
        ``NonFiniteUpdateError`` and is taken back out (up to float32 rounding of the
        blocks already added), leaving the other contributions in place."""
        if self._result is not None:
            raise AggregationError("result() was already taken; start a new Accumulator")
        # The common case (a C-contiguous 1-D float32 array) is checked inline: on small
        # updates the checks cost as much as the kernel.
        if not (
            type(update) is np.ndarray and update.dtype is _FLOAT32 and update.ndim == 1 and update.flags.c_contiguous
        ):
            update = as_update(update)
        # The common types first (a float weight in range, int offset): the checks' cost counts on small updates.
        if type(weight) is float and MIN_WEIGHT <= weight <= MAX_WEIGHT:
            w = weight
        else:
            w = check_weight(weight)
            if w != 0.0 and not MIN_WEIGHT <= w <= MAX_WEIGHT:
                raise AggregationError(
                    f"weight must be 0 or within [{MIN_WEIGHT:g}, {MAX_WEIGHT:g}] (float32 accumulation), got {w}"
                )
        if type(offset) is not int:
            offset = as_int(offset, "offset")
        site_index = self._adds if site is None else as_int(site, "site")
        length = update.shape[0]
        if offset < 0 or offset + length > self._size:
            raise AggregationError(f"chunk [{offset}, {offset + length}) is outside the accumulator [0, {self._size})")
        self._adds += 1
        if length == 0:
            return
        if self._fresh and self._first_add(update, w, site_index):
            return
        if length <= SERIAL_MAX_VALUES:
            bad = _kernels.accumulate_serial(self._sum, update, w, offset)
            if bad >= 0:
                _kernels.unaccumulate_serial(self._sum, update, w, offset, bad)
                raise NonFiniteUpdateError(site_index)
            self._parts.append((offset, length, w, site_index))
            if length != self._size:
                self._whole = False
            return
        if _pool.AVAILABLE:
            if _pool.accumulate(_pool.state(), self._sum, update, w, offset):
                raise NonFiniteUpdateError(site_index)
        else:
            self._add_work_shared(update, w, offset, site_index)
        self._parts.append((offset, length, w, site_index))
        if length != self._size:
            self._whole = False

    def _first_add(self, update: np.ndarray, w: float, site_index: int) -> bool:
        """The first add into a fresh sum: stores a whole update (True: done), or zeroes the
        sum for an ordinary add (a chunk, or the helpers busy)."""
        self._fresh = False
        if update.shape[0] == self._size:
            done = _pool.store(_pool.state(), self._sum, update, w)
            if done == 0:
                self._parts.append((0, self._size, w, site_index))
                return True
            if done == 1:
                self._sum.fill(0.0)
                raise NonFiniteUpdateError(site_index)
        self._sum.fill(0.0)
        return False

    def _add_work_shared(self, update: np.ndarray, w: float, offset: int, site_index: int) -> None:
        """The portable shared path (Python pool threads), where native/_pool.py is unavailable."""
        nblocks = (update.shape[0] + _kernels.STREAM_BLOCK - 1) // _kernels.STREAM_BLOCK
        added = np.zeros(nblocks, dtype=np.bool_)
        target = self._sum

        def kernel(first: int, last: int) -> None:
            _kernels.accumulate_blocks(target, update, w, offset, added, first, last)

        run_blocks(kernel, nblocks, _BLOCKS_PER_TASK)
        if not added.all():
            _kernels.unaccumulate_kernel(self._sum, update, w, offset, added)
            raise NonFiniteUpdateError(site_index)

    def total_weight(self) -> float:
        """The weight every coordinate received; raises if coverage is not uniform."""
        return self._uniform_weight()

    def _uniform_weight(self) -> float:
        if self._size == 0:
            raise AggregationError("an Accumulator of size 0 has no mean")
        if self._parts and self._whole:
            # Whole updates only (the usual case): the exact sum of the weights, rounded once
            # (math.fsum rounds the exact sum correctly, as float(Fraction sum) would).
            total = math.fsum(part[2] for part in self._parts)
            if total <= 0:
                raise AggregationError("total weight is 0: nothing (or only weight 0) was added")
            return total
        events: dict[int, Fraction] = {}
        for offset, length, weight, _site in self._parts:
            w = Fraction(weight)
            events[offset] = events.get(offset, Fraction(0)) + w
            events[offset + length] = events.get(offset + length, Fraction(0)) - w
        level = Fraction(0)
        prev = 0
        expected: Fraction | None = None
        for pos in sorted(events) + [self._size]:
            if pos > prev:
                if expected is None:
                    expected = level
                elif level != expected:
                    raise AggregationError(
                        f"coordinates [{prev}, {pos}) received total weight {float(level)}, "
                        f"coordinates before them {float(expected)}: a chunk is missing or duplicated"
                    )
                prev = pos
            level += events.get(pos, Fraction(0))
        assert expected is not None
        if expected <= 0:
            raise AggregationError("total weight is 0: nothing (or only weight 0) was added")
        return float(expected)

    def result(self) -> np.ndarray:
        """The weighted mean (float32), computed in place in the accumulator's buffer.

        After this, ``add`` raises; calling ``result()`` again returns the same array.
        """
        if self._result is None:
            total = self._uniform_weight()
            factor = 1.0 / total
            if self._size <= SERIAL_MAX_VALUES:
                _kernels.scale_serial(self._sum, factor)
            elif _pool.available():
                _pool.scale(_pool.state(), self._sum, factor)
            else:
                _kernels.scale_kernel(self._sum, factor, self._sum)
            self._result = self._sum
        return self._result

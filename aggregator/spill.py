"""Robust aggregation of models larger than memory / N: updates spilled to disk, sealed, read
back in column blocks (issue 19).

Median, trimmed mean and Krum need all N updates at once: N x model bytes in memory. Here each
update is written, as it arrives, to one unlinked temporary file (:class:`SpilledStack`), sealed
in column blocks with AES-256-GCM under a key that exists only in this process's memory (the
disk is outside the TEE: it sees ciphertext only; a block moved, swapped, replayed from another
round or altered fails its tag). The file is memory-mapped to be read back one column block of
all N updates at a time; the kernels run on each (N, block) piece (the round aggregation that
spills past a memory budget is :class:`aggregator.strategies.SpillingAggregation`):

* median and trimmed mean are per coordinate: block by block they are *exactly* the in-memory
  kernels' results;
* Krum sums each block's pairwise squared distances (float64), scores and selects as
  :func:`native.krum` does, then averages the selected rows block by block.

Memory: one model-sized result plus one (N, block) piece (``block`` values per update, 1 MiB by
default) whatever N and P are; the page cache holds what the kernel reads, and the kernel may drop it.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import native
from attestation.errors import AttestflError

#: Values per column block (1 MiB of float32 per update).
BLOCK_VALUES = 1 << 18
_TAG = 16


class SpillError(AttestflError, ValueError):
    """A spilled update cannot be written or read back intact."""


class SpilledStack:
    """N updates of ``size`` float32 values on disk, sealed per (row, column block)."""

    def __init__(self, size: int, directory: str | Path | None = None, block: int = BLOCK_VALUES) -> None:
        if size < 1 or block < 1:
            raise SpillError("a spilled stack needs size >= 1 and block >= 1")
        self.size = size
        self.block = block
        self.blocks = (size + block - 1) // block
        self.rows = 0
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))  # never leaves this process
        # unlinked at once; closed by close() (the stack outlives any with-block here)
        self._file = tempfile.TemporaryFile(dir=directory, prefix="attestfl-spill-")  # noqa: SIM115
        self._row_bytes = 4 * size + _TAG * self.blocks
        self._map: mmap.mmap | None = None

    def _span(self, row: int, b: int) -> tuple[int, int]:
        start = row * self._row_bytes + b * (4 * self.block + _TAG)
        width = min(self.block, self.size - b * self.block)
        return start, start + 4 * width + _TAG

    @staticmethod
    def _nonce(row: int, b: int) -> bytes:
        return row.to_bytes(4, "big") + b.to_bytes(8, "big")

    def _aad(self, row: int, b: int) -> bytes:
        return b"attestfl-spill" + self.size.to_bytes(8, "big") + self._nonce(row, b)

    def append(self, update: np.ndarray) -> int:
        """Seal and write one update; returns its row."""
        update = np.ascontiguousarray(update, dtype=np.float32).reshape(-1)
        if update.shape[0] != self.size:
            raise SpillError(f"update has {update.shape[0]} values, the stack {self.size}")
        row = self.rows
        if row >= 1 << 32:
            raise SpillError("too many rows")
        self._close_map()
        view = update.view(np.uint8)
        for b in range(self.blocks):
            start, _stop = self._span(row, b)
            plain = view[4 * b * self.block : 4 * min((b + 1) * self.block, self.size)]
            sealed = self._aead.encrypt(self._nonce(row, b), plain.tobytes(), self._aad(row, b))
            os.pwrite(self._file.fileno(), sealed, start)
        self.rows += 1
        return row

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            self._file.flush()
            self._map = mmap.mmap(self._file.fileno(), self.rows * self._row_bytes, access=mmap.ACCESS_READ)
        return self._map

    def column_block(self, b: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Columns [b * block, ...) of every row (or of ``rows``), as an (n, width) float32 array."""
        if self.rows == 0:
            raise SpillError("no update was spilled")
        chosen = range(self.rows) if rows is None else [int(r) for r in rows]
        width = min(self.block, self.size - b * self.block)
        out = np.empty((len(chosen), width), np.float32)
        data = self._mapped()
        for i, row in enumerate(chosen):
            start, stop = self._span(row, b)
            try:
                plain = self._aead.decrypt(self._nonce(row, b), data[start:stop], self._aad(row, b))
            except InvalidTag:
                raise SpillError(f"spilled block {b} of update {row} was altered on disk") from None
            out[i] = np.frombuffer(plain, dtype=np.float32)
        return out

    def columns(self, b: int) -> slice:
        return slice(b * self.block, min((b + 1) * self.block, self.size))

    def _close_map(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def close(self) -> None:
        self._close_map()
        self._file.close()

    def __enter__(self) -> SpilledStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def blockwise(stack: SpilledStack, kernel: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """A per-coordinate kernel (median, trimmed mean) applied one column block at a time."""
    out = np.empty(stack.size, np.float32)
    for b in range(stack.blocks):
        out[stack.columns(b)] = kernel(stack.column_block(b))
    return out


def spilled_median(stack: SpilledStack) -> np.ndarray:
    return blockwise(stack, native.coordinate_median)


def spilled_trimmed_mean(stack: SpilledStack, beta: float) -> np.ndarray:
    return blockwise(stack, lambda piece: native.trimmed_mean(piece, beta))


def spilled_krum(stack: SpilledStack, f: int, m: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Krum / multi-Krum as :func:`native.krum`, with distances summed over column blocks."""
    n = stack.rows
    if n < 2 * f + 3:
        raise SpillError(f"Krum with f={f} needs N >= 2f+3 = {2 * f + 3} updates, got N={n}")
    if not 1 <= m <= n - f:
        raise SpillError(f"multi-Krum m must satisfy 1 <= m <= N-f = {n - f}, got m={m}")
    distances = np.zeros((n, n), np.float64)
    for b in range(stack.blocks):
        distances += native.pairwise_sq_distances(stack.column_block(b))
    selected = np.argsort(native.krum_scores(distances, f), kind="stable")[:m].astype(np.int64)
    out = np.empty(stack.size, np.float32)
    for b in range(stack.blocks):
        piece = stack.column_block(b, selected)
        total = np.zeros(piece.shape[1], np.float64)
        for row in piece:  # in selection order, float64, as native.krum's mean of rows
            total += row
        out[stack.columns(b)] = piece[0] if m == 1 else (total / m).astype(np.float32)
    return out, selected


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


#: Updates held in memory per round before a robust strategy spills them: ``ATTESTFL_SPILL_BYTES``
#: (bytes), by default a quarter of this machine's memory. ``ATTESTFL_SPILL_DIR``: where (default:
#: the system's temporary directory; choose a disk, not a tmpfs, in a TEE).
def spill_budget() -> int:
    value = os.environ.get("ATTESTFL_SPILL_BYTES")
    if value is not None and value.strip().isdigit():
        return int(value)
    return _physical_memory() // 4

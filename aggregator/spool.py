"""An upload's plaintext held in bounded memory, whatever the model's size (issue 19).

An update of a few megabytes is decrypted in place into one buffer of its size. A larger one is
*spooled*: each chunk is decrypted into one reusable buffer, then re-sealed in fixed blocks with
AES-256-GCM under a key that exists only in this process's memory and written to an unlinked
temporary file (the disk is outside the TEE: it holds ciphertext only; a block altered, moved
or swapped fails its tag when read back). The aggregator's memory per upload is then one chunk
and one block, not the update.

The update is read back twice, by range (:meth:`UpdateSpool.read`): once to check it (layout,
finite values, norm) before its receipt is logged, once to add it to the round's aggregate
after (aggregator/rounds.py). :class:`StreamedUpdate` is that read-back, as float32 pieces.

The spool is written by hand because no library seals a growing file in blocks that can be read
back at random (``cryptography`` gives the AEAD; this is only the framing around it).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import native
from protocol.compression import UpdateLayout, iter_pieces, non_finite, read_layout
from protocol.streams import MAX_CHUNK_BYTES, TAG_BYTES, StreamError, StreamOpener
from protocol.tensors import MAX_HEADER_BYTES, ModelSpec, ReceiveBuffers, unflatten

#: Updates up to this size are received in memory (one buffer of the update's size).
MEMORY_BYTES = 64 * 1024 * 1024
#: Plaintext bytes per sealed block of a spooled update.
BLOCK_BYTES = 1 << 20


class SpoolError(StreamError):
    """A spooled update cannot be written (the disk) or read back intact (altered on disk)."""


#: The aggregator's kept receive buffers (protocol.tensors.ReceiveBuffers): a round's uploads are
#: written over the last round's buffers. At most 16 of them and 1 GiB.
RECEIVE_BUFFERS = ReceiveBuffers(most_buffers=16, most_bytes=1 << 30)


class UpdateSpool:
    """One upload's plaintext, ``limit`` bytes at most: in memory when ``limit`` is at most
    ``memory_bytes``, else sealed on disk in blocks of ``block`` bytes. Thread-compatible: written by one task,
    then read by one thread at a time."""

    def __init__(
        self,
        limit: int,
        *,
        memory_bytes: int = MEMORY_BYTES,
        directory: str | os.PathLike[str] | None = None,
        block: int = BLOCK_BYTES,
        buffers: ReceiveBuffers = RECEIVE_BUFFERS,
    ) -> None:
        self.limit = limit
        self.size = 0
        self._directory = directory
        self._block = block
        # In memory only when the largest valid update fits: a larger one is spooled from its first byte.
        self._memory: memoryview | None = buffers.take(limit) if limit <= memory_bytes else None
        self._scratch: bytearray | None = None
        self._pending = bytearray()
        self._fd: int | None = None
        self._aead: AESGCM | None = None
        self._blocks = 0
        self._finished = False
        self._cached: tuple[int, bytes] | None = None
        self._hash = hashlib.sha256()

    @property
    def spooled(self) -> bool:
        """Whether the update went to disk."""
        return self._fd is not None

    @property
    def memory_bytes(self) -> int:
        """What this upload holds in memory now."""
        held = len(self._memory) if self._memory is not None else 0
        return held + len(self._pending) + (len(self._scratch) if self._scratch is not None else 0)

    def receive(self, opener: StreamOpener, index: int, ciphertext: bytes | memoryview, *, final: bool) -> int:
        """Authenticate and decrypt one chunk of the stream into the spool; its plaintext length."""
        length = len(ciphertext) - TAG_BYTES
        if length < 0 or length > MAX_CHUNK_BYTES:
            raise StreamError("chunk has an impossible size")
        if self.size + length > self.limit:
            raise StreamError(f"stream is larger than the {self.limit} bytes allowed for it")
        if self._memory is not None:
            added = opener.open_into(index, ciphertext, final=final, buffer=self._memory, offset=self.size)
        else:
            if self._scratch is None:
                self._scratch = bytearray(MAX_CHUNK_BYTES)
            added = opener.open_into(index, ciphertext, final=final, buffer=self._scratch, offset=0)
            self._append(memoryview(self._scratch)[:added])
        self.size += added
        return added

    def append_plaintext(self, data: bytes) -> None:
        """Add plaintext already authenticated (a stream's chunk 0, opened before the spool exists)."""
        if self.size + len(data) > self.limit:
            raise StreamError(f"stream is larger than the {self.limit} bytes allowed for it")
        if self._memory is not None:
            self._memory[self.size : self.size + len(data)] = data
        else:
            self._append(memoryview(data))
        self.size += len(data)

    def _append(self, data: memoryview) -> None:
        """Seal ``data`` to disk in whole blocks (the rest pending until the next or :meth:`finish`)."""
        if self._fd is None:
            self._open_file()
        self._hash.update(data)
        self._pending += data
        while len(self._pending) >= self._block:
            self._write_block(memoryview(self._pending)[: self._block])
            del self._pending[: self._block]

    def _open_file(self) -> None:
        try:
            handle = tempfile.TemporaryFile(dir=self._directory, prefix="attestfl-upload-")  # noqa: SIM115 - kept open
        except OSError as exc:
            raise SpoolError(f"cannot spool the upload to disk: {exc.strerror or exc}") from None
        self._fd = os.dup(handle.fileno())  # unlinked already; the descriptor keeps it
        handle.close()
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))  # never leaves this process

    def _write_block(self, data: memoryview | bytearray) -> None:
        assert self._fd is not None and self._aead is not None
        sealed = self._aead.encrypt(self._blocks.to_bytes(12, "big"), bytes(data), None)
        try:
            written = os.pwrite(self._fd, sealed, self._blocks * (self._block + TAG_BYTES))
        except OSError as exc:
            raise SpoolError(f"cannot spool the upload to disk: {exc.strerror or exc}") from None
        if written != len(sealed):
            raise SpoolError("cannot spool the upload to disk: short write (the disk is full)")
        self._blocks += 1

    def finish(self) -> bytes:
        """The stream ended: seal what is pending; the update's SHA-256."""
        if not self._finished:
            if self._fd is None:
                assert self._memory is not None
                self._hash.update(memoryview(self._memory)[: self.size])
            elif self._pending:
                self._write_block(self._pending)
                self._pending = bytearray()
            self._scratch = None
            self._finished = True
        return self._hash.digest()

    def read(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        """``length`` bytes of the update at ``offset`` (after :meth:`finish`)."""
        if not self._finished or offset < 0 or length < 0 or offset + length > self.size:
            raise SpoolError(f"read of [{offset}, {offset + length}) outside the update's {self.size} bytes")
        if self._fd is None:
            assert self._memory is not None
            return memoryview(self._memory)[offset : offset + length]
        first, last = offset // self._block, (offset + length - 1) // self._block if length else offset // self._block
        if first == last:
            start = offset - first * self._block
            return memoryview(self._block_bytes(first))[start : start + length]
        out = bytearray(length)
        position = 0
        for index in range(first, last + 1):
            data = self._block_bytes(index)
            start = max(offset, index * self._block) - index * self._block
            stop = min(offset + length, (index + 1) * self._block) - index * self._block
            out[position : position + stop - start] = memoryview(data)[start:stop]
            position += stop - start
        return out

    def _block_bytes(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        assert self._fd is not None and self._aead is not None
        expected = min(self._block, self.size - index * self._block) + TAG_BYTES
        sealed = os.pread(self._fd, expected, index * (self._block + TAG_BYTES))
        try:
            if len(sealed) != expected:
                raise InvalidTag
            data = self._aead.decrypt(index.to_bytes(12, "big"), sealed, None)
        except InvalidTag:
            raise SpoolError(f"block {index} of a spooled upload was altered on disk") from None
        self._cached = (index, data)
        return data

    def close(self) -> None:
        """Release the memory (the buffer goes back to its keeper once nothing else refers to it)
        and the file (idempotent)."""
        self._memory = None
        self._scratch = None
        self._pending = bytearray()
        self._cached = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


@dataclass
class StreamedUpdate:
    """A received update, read back from its spool as float32 pieces (flat offset, values) in
    model-spec order; :meth:`check` reads it once (layout, finite values, norm)."""

    spool: UpdateSpool
    spec: ModelSpec
    mode: str
    layout: UpdateLayout = field(init=False)
    norm: float = 0.0
    _checked: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        head = self.spool.read(0, min(self.spool.size, 8 + MAX_HEADER_BYTES))
        self.layout = read_layout(head, self.spool.size, self.spec, self.mode)

    @property
    def metadata(self) -> dict[str, str]:
        return self.layout.metadata

    def pieces(self) -> Iterator[tuple[int, np.ndarray]]:
        """The values, piece by piece; after :meth:`check` not checked finite again (they were,
        and the spool's blocks are authenticated: what is read back is what was checked)."""
        return iter_pieces(self.layout, self.spool.read, check_finite=not self._checked)

    def check(self) -> None:
        """Read every value once: all finite (else UpdateFormatError), and the update's L2 norm
        (float64, as the in-memory clip computes it), in one pass of the norm kernel."""
        total = 0.0
        for offset, piece in iter_pieces(self.layout, self.spool.read, check_finite=False):
            try:
                total += float(native.l2_norms(piece.reshape(1, -1))[0]) ** 2
            except native.NonFiniteUpdateError:
                raise non_finite(self._tensor_at(offset)) from None
        self.norm = math.sqrt(total)
        self._checked = True

    def _tensor_at(self, offset: int) -> str:
        return next(t.name for t in reversed(self.layout.tensors) if t.offset <= offset)

    def vector(self) -> np.ndarray:
        """The whole update as one float32 vector (for the strategies that need every value at once)."""
        flat = np.empty(self.spec.parameter_count, np.float32)
        for offset, piece in self.pieces():
            flat[offset : offset + piece.size] = piece
        return flat

    def gather(self, coordinates: np.ndarray) -> np.ndarray:
        """The values at ``coordinates`` (sorted flat indices), in float64."""
        out = np.empty(coordinates.size, np.float64)
        for offset, piece in self.pieces():
            lo, hi = np.searchsorted(coordinates, [offset, offset + piece.size])
            out[lo:hi] = piece[coordinates[lo:hi] - offset]
        return out

    def tensors(self) -> dict[str, np.ndarray]:
        return unflatten(self.vector(), self.spec)

    def close(self) -> None:
        self.spool.close()

"""Model updates as named tensors in the safetensors layout, checked against the task's model spec.

Layout (the safetensors format): an 8-byte little-endian header length N, N bytes of UTF-8
JSON ``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
{...}}``, then the tensor bytes (little-endian, row-major), offsets relative to the end of the
header.

Everything is checked before a single tensor byte is interpreted: the update's size against
the spec's bound, the header size against :data:`MAX_HEADER_BYTES`, the header as strict
JSON (no duplicate keys, no NaN or fractions, integers of at most 20 digits, nesting refused
as it fails), every entry's keys and types (:class:`_Entry`), ranks and element counts
bounded, sizes computed exactly (no integer overflow), the names, dtypes and shapes against
the :class:`ModelSpec`, offsets contiguous and covering the data exactly. So an update's total
size is known (and bounded by the spec) before it is read, nothing is allocated from what a
header claims, and a crafted header is an :class:`UpdateFormatError` with a one-line reason,
never another exception. Non-finite values are rejected before anything is aggregated.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import msgspec
import numpy as np
from msgspec import Meta

from attestation.errors import AttestflError

#: The dtypes attestfl aggregates: float32 only, as the native kernels.
DTYPES = {"F32": np.dtype("<f4")}
MAX_HEADER_BYTES = 1024 * 1024
MAX_TENSORS = 4096
#: The most dimensions a tensor may have (numpy 1.x's limit).
MAX_RANK = 32
#: The most elements a shape may describe, zero dimensions counted as one (so numpy can index
#: even an empty tensor's shape); far above any model attestfl aggregates.
MAX_ELEMENTS = 2**40
#: JSON integers longer than this are refused while parsing (offsets and dimensions fit in 20 digits).
MAX_INTEGER_DIGITS = 20
_LENGTH = struct.Struct("<Q")
#: What a :class:`KeptBuffers` keeps.
_Buffer = TypeVar("_Buffer", np.ndarray, bytearray)

Dimension = Annotated[int, Meta(ge=0)]


class UpdateFormatError(AttestflError, ValueError):
    """An update (or model file) is not valid safetensors, or does not match the model spec."""


def _show(name: str, limit: int = 64) -> str:
    """A tensor name for a one-line message: quoted, escaped, cut."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _show_names(names: list[str]) -> str:
    """Tensor names for a one-line message: at most eight, each cut."""
    if not names:
        return "none"
    return "[" + ", ".join(_show(n) for n in names[:8]) + (", ..." if len(names) > 8 else "") + "]"


def _check_shape(shape: tuple[int, ...], where: str) -> None:
    if len(shape) > MAX_RANK:
        raise UpdateFormatError(f"{where}: {len(shape)} dimensions, more than {MAX_RANK}")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise UpdateFormatError(f"{where}: dimensions must be non-negative integers")
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise UpdateFormatError(f"{where}: shape of more than {MAX_ELEMENTS} elements")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # exact: Python integers do not overflow

    @property
    def nbytes(self) -> int:
        return self.size * DTYPES[self.dtype].itemsize


class _SpecEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    dtype: str
    shape: Annotated[list[Dimension], Meta(max_length=MAX_RANK)]


@dataclass(frozen=True)
class ModelSpec:
    """The tensors of the task's model, in order: what every update must contain, exactly."""

    tensors: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise UpdateFormatError("model spec: duplicate tensor names")
        if not self.tensors or len(self.tensors) > MAX_TENSORS:
            raise UpdateFormatError(f"model spec: 1 to {MAX_TENSORS} tensors expected")
        for tensor in self.tensors:
            if not isinstance(tensor.name, str):
                raise UpdateFormatError(f"model spec: tensor name {tensor.name!r} is not a string")
            if tensor.dtype not in DTYPES:
                raise UpdateFormatError(
                    f"model spec: tensor {_show(tensor.name)} has dtype {tensor.dtype}; "
                    f"only {', '.join(DTYPES)} is supported"
                )
            _check_shape(tensor.shape, f"model spec: tensor {_show(tensor.name)}")

    @property
    def parameter_count(self) -> int:
        return sum(t.size for t in self.tensors)

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def max_update_bytes(self) -> int:
        """No valid update is larger than this (header bound included)."""
        return _LENGTH.size + MAX_HEADER_BYTES + self.data_bytes

    @classmethod
    def of(cls, tensors: Mapping[str, np.ndarray]) -> ModelSpec:
        return cls(
            tuple(TensorSpec(name, "F32", tuple(int(d) for d in array.shape)) for name, array in tensors.items())
        )

    def to_json(self) -> str:
        return json.dumps(
            [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.tensors], separators=(",", ":")
        )

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """The spec a task carries (from the aggregator): every field typed and bounded."""
        if len(text) > MAX_HEADER_BYTES:
            raise UpdateFormatError(f"model spec is over {MAX_HEADER_BYTES} characters")
        try:
            items = msgspec.json.decode(text, type=Annotated[list[_SpecEntry], Meta(max_length=MAX_TENSORS)])
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise UpdateFormatError(f"model spec is not valid JSON of tensors: {exc}") from None
        return cls(tuple(TensorSpec(i.name, i.dtype, tuple(i.shape)) for i in items))


def encode_tensors(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise float32 tensors in the safetensors layout (in the given order)."""
    return b"".join(encode_tensor_parts(tensors, metadata))


def encode_tensor_parts(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> list[bytes | memoryview]:
    """The safetensors layout as buffers to send back to back: the length-prefixed header, then
    each tensor's memory (no copy when a tensor already is contiguous little-endian float32)."""
    blobs: list[bytes | memoryview] = []
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=DTYPES["F32"])
        shapes.append((name, tuple(data.shape)))
        blobs.append(data.reshape(-1).data.cast("B"))  # the tensor's own memory, as bytes
    return [_header(shapes, metadata), *blobs]


def _header(tensors: list[tuple[str, tuple[int, ...]]], metadata: Mapping[str, str] | None) -> bytes:
    """The length-prefixed safetensors header of float32 tensors laid out back to back in order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, shape in tensors:
        nbytes = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw_header = json.dumps(header, separators=(",", ":")).encode()
    raw_header += b" " * (-len(raw_header) % 8)  # align tensor data to 8 bytes, as safetensors does
    return _LENGTH.pack(len(raw_header)) + raw_header


class KeptBuffers(Generic[_Buffer]):
    """Buffers kept for reuse: a buffer of the same size as an earlier one is that one, written
    over, once nothing refers to it any more, instead of new memory that the kernel must map and
    zero page by page (see :class:`ReceiveBuffers` and :class:`ModelBuffers` for what that costs).

    A kept buffer is reused only when its reference count shows no reference but this keeper's:
    no view of it (an update piece, a model's tensors, a memoryview slice, a numpy array over it)
    is alive anywhere, so nobody can see it change. At most ``most_buffers`` buffers and
    ``most_bytes`` bytes are kept, the least recently taken dropped first; a buffer over
    ``most_bytes`` is never kept. What an earlier use left in a buffer is never read: every
    taker writes what it reads. Thread-safe."""

    def __init__(self, most_buffers: int, most_bytes: int, new: Callable[[int], _Buffer]) -> None:
        self.most_buffers = most_buffers
        self.most_bytes = most_bytes
        self._new: Callable[[int], _Buffer] = new
        self._kept: list[_Buffer] = []  # least recently taken first
        self._lock = threading.Lock()
        #: Buffers made new so far (the others were reused).
        self.made = 0

    def take_buffer(self, size: int) -> _Buffer:
        """A buffer of ``size`` bytes: a kept one nobody refers to (its old contents), else a new
        one (kept for later when within the bounds). It is free again once the caller's
        references, and every view made of it, are gone."""
        with self._lock:
            for position in range(len(self._kept)):
                kept = self._kept[position]
                # References: the list's, ``kept`` and getrefcount's argument. Any other is a user's.
                if len(kept) == size and sys.getrefcount(kept) == 3:
                    del self._kept[position]
                    self._kept.append(kept)
                    return kept
                del kept
            buffer: _Buffer = self._new(size)
            self.made += 1
            if size <= self.most_bytes:
                self._kept.append(buffer)
                while len(self._kept) > self.most_buffers or sum(len(k) for k in self._kept) > self.most_bytes:
                    del self._kept[0]
            return buffer

    def take(self, size: int) -> memoryview:
        """:meth:`take_buffer` as a writable byte view (which refers to the buffer)."""
        return memoryview(self.take_buffer(size))  # type: ignore[arg-type]  # an ndarray is a buffer

    @property
    def kept_bytes(self) -> int:
        """Bytes of the buffers kept (in use or not)."""
        with self._lock:
            return sum(len(kept) for kept in self._kept)


def _zero_pages(size: int) -> np.ndarray:
    # numpy, not bytearray(size): numpy takes fresh zero pages from the kernel and advises huge
    # pages for a large buffer, where bytearray writes every byte and faults 4 KiB pages in
    # one by one (40 MB: about 4 ms against 19 ms here).
    return np.zeros(size, dtype=np.uint8)


class ReceiveBuffers(KeptBuffers[np.ndarray]):
    """Receive buffers kept for reuse (:class:`KeptBuffers`): a model or an update of the same
    size as an earlier one is received into that one's buffer once nothing refers to it any
    more. A new buffer's pages are faulted in and zeroed by the kernel as the first chunks are
    decrypted into it: about 10 ms for 40 MB, each time, on the receiving thread (the
    aggregator's event loop). A kept buffer is written over instead. Receivers read only the
    bytes their own stream wrote."""

    def __init__(self, most_buffers: int, most_bytes: int) -> None:
        super().__init__(most_buffers, most_bytes, _zero_pages)


class ModelBuffers(KeptBuffers[bytearray]):
    """Model buffers kept for reuse (:class:`KeptBuffers`), for :func:`model_buffer`: a round's
    next model is made in the buffer of the model before the last once nothing refers to it (no
    download, checkpoint or delivery still holds it), so two buffers take turns. A new one is a
    ``bytearray``, zeroed byte by byte: 14 ms for 40 MB here, 0.22 s for 600 MB."""

    def __init__(self, most_buffers: int = 2, most_bytes: int = 1 << 62) -> None:
        super().__init__(most_buffers, most_bytes, bytearray)


def model_buffer(spec: ModelSpec, buffers: ModelBuffers | None = None) -> tuple[bytearray, np.ndarray]:
    """A model's safetensors bytes, header written, and the flat float32 vector that is its data
    section (a view: what is written into the vector is the model's bytes, no second copy).
    The header is :func:`encode_tensors`'s for the spec's tensors in order, without metadata.
    From ``buffers`` when given: the data section then holds whatever an earlier model left
    there, and the caller writes every value of it; else it is zeros."""
    header = _header([(t.name, t.shape) for t in spec.tensors], None)
    size = len(header) + 4 * spec.parameter_count
    buffer = buffers.take_buffer(size) if buffers is not None else bytearray(size)
    buffer[: len(header)] = header
    return buffer, np.frombuffer(buffer, dtype=DTYPES["F32"], offset=len(header))


def adopt_model_buffer(tensors: Mapping[str, np.ndarray], spec: ModelSpec) -> tuple[bytearray, np.ndarray] | None:
    """When ``tensors`` are views of one buffer laid out as :func:`model_buffer` lays out ``spec``
    (a model file or checkpoint read by :func:`load_model` / :func:`decode_tensors`), that buffer
    and its flat vector: the model is then used where it was read, not copied. Else None."""
    base: object = tensors.get(spec.tensors[0].name) if spec.tensors else None
    while isinstance(base, np.ndarray):  # a reshaped view's base is the flat view, whose base is the buffer's
        base = base.base
    buffer = base.obj if isinstance(base, memoryview) else None
    if not isinstance(buffer, bytearray):
        return None
    header = _header([(t.name, t.shape) for t in spec.tensors], None)
    if len(buffer) != len(header) + 4 * spec.parameter_count or buffer[: len(header)] != header:
        return None
    vector = np.frombuffer(buffer, dtype=DTYPES["F32"], offset=len(header))
    position = vector.ctypes.data
    for tensor in spec.tensors:  # each tensor is the buffer's own slice, in order
        array = tensors[tensor.name]
        if array.ctypes.data != position or array.size != tensor.size or not array.flags.c_contiguous:
            return None
        position += 4 * tensor.size
    return buffer, vector


def model_bytes_of(vector: np.ndarray, spec: ModelSpec) -> bytes | bytearray:
    """The safetensors bytes of a flat model vector: the buffer itself (no copy) when ``vector`` is
    the data section of a :func:`model_buffer`, else a new encoding."""
    base = vector.base
    if isinstance(base, memoryview) and isinstance(base.obj, bytearray) and vector.size == spec.parameter_count:
        buffer = base.obj
        start = len(buffer) - 4 * spec.parameter_count
        if start >= _LENGTH.size and vector.ctypes.data == np.frombuffer(buffer, np.uint8)[start:].ctypes.data:
            return buffer
    return encode_tensors(unflatten(vector, spec))


def header_length(prefix: bytes | bytearray | memoryview) -> int:
    """The header length from the first 8 bytes, checked against the bound."""
    if len(prefix) < _LENGTH.size:
        raise UpdateFormatError("update is shorter than the 8-byte safetensors header length")
    (length,) = _LENGTH.unpack_from(prefix, 0)
    if length > MAX_HEADER_BYTES:
        raise UpdateFormatError(f"safetensors header of {length} bytes is over the {MAX_HEADER_BYTES}-byte limit")
    return int(length)


# ---- the header as strict JSON -----------------------------------------------------------------


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise UpdateFormatError(f"safetensors header has a duplicate key {_show(key)}")
        result[key] = value
    return result


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise UpdateFormatError(
            f"safetensors header has an integer of {len(text)} digits (at most {MAX_INTEGER_DIGITS})"
        )
    return int(text)


def _no_float(text: str) -> float:
    raise UpdateFormatError(f"safetensors header has a non-integer number {text[:32]}")


def _no_constant(text: str) -> float:
    raise UpdateFormatError(f"safetensors header has {text}, which is not JSON")


def parse_header(raw: bytes) -> dict[str, Any]:
    """The header's JSON object, parsed strictly (see the module docstring)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UpdateFormatError(f"safetensors header is not UTF-8 (byte {exc.start})") from None
    try:
        header = json.loads(
            text, object_pairs_hook=_object, parse_int=_integer, parse_float=_no_float, parse_constant=_no_constant
        )
    except UpdateFormatError:
        raise
    except RecursionError:
        raise UpdateFormatError("safetensors header is nested too deeply") from None
    except ValueError as exc:
        raise UpdateFormatError(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise UpdateFormatError("safetensors header is not a JSON object")
    return header


class _Entry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One tensor's header entry, exactly as safetensors writes it."""

    dtype: str
    shape: Annotated[list[Dimension], Meta(max_length=MAX_RANK)]
    data_offsets: tuple[Dimension, Dimension]


def _entry(name: str, value: Any) -> tuple[str, str, tuple[int, ...], int, int]:
    where = f"tensor {_show(name)}"
    try:
        entry = msgspec.convert(value, _Entry, strict=True)
    except msgspec.ValidationError as exc:
        raise UpdateFormatError(f"{where}: malformed entry ({exc})") from None
    if entry.dtype not in DTYPES:
        raise UpdateFormatError(f"{where}: dtype {entry.dtype[:32]!r} is not supported (only {', '.join(DTYPES)})")
    shape = tuple(entry.shape)
    _check_shape(shape, where)
    begin, stop = entry.data_offsets
    size = math.prod(shape) * DTYPES[entry.dtype].itemsize
    if stop < begin or stop - begin != size:
        raise UpdateFormatError(
            f"{where}: data_offsets [{begin}, {stop}] do not fit its shape {list(shape)} ({size} bytes)"
        )
    return name, entry.dtype, shape, begin, stop


def decode_tensors(
    data: bytes | bytearray | memoryview, spec: ModelSpec | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse and check an update: (name -> float32 array in spec order, metadata).

    With ``spec``, the update may be no larger than the spec allows, names, dtypes and shapes
    must equal it exactly and every value must be finite. Without, the file is read as it is
    (loading an initial model), still bounded. The arrays are views of ``data`` (no copy).
    Anything else than a valid update raises :class:`UpdateFormatError`.
    """
    if spec is not None and len(data) > spec.max_update_bytes:
        raise UpdateFormatError(
            f"update of {len(data)} bytes is larger than the model spec allows ({spec.max_update_bytes})"
        )
    length = header_length(data)
    end = _LENGTH.size + length
    if len(data) < end:
        raise UpdateFormatError(
            f"update is truncated inside its safetensors header ({length} bytes announced, "
            f"{len(data) - _LENGTH.size} present)"
        )
    header = parse_header(bytes(data[_LENGTH.size : end]))
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UpdateFormatError("safetensors __metadata__ must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise UpdateFormatError(f"update has {len(header)} tensors, more than {MAX_TENSORS}")

    entries = [_entry(name, value) for name, value in header.items()]

    if spec is not None:
        expected = {t.name: t for t in spec.tensors}
        missing = sorted(set(expected) - {e[0] for e in entries})
        extra = sorted({e[0] for e in entries} - set(expected))
        if missing or extra:
            raise UpdateFormatError(
                f"update tensors differ from the model spec: missing {_show_names(missing)}, "
                f"unexpected {_show_names(extra)}"
            )
        for name, dtype, shape, _b, _e in entries:
            want = expected[name]
            if dtype != want.dtype or shape != want.shape:
                raise UpdateFormatError(
                    f"tensor {_show(name)} is {dtype}{list(shape)}, the model spec says {want.dtype}{list(want.shape)}"
                )

    # Offsets: contiguous from 0, each the size its dtype and shape give, covering the data exactly.
    position = 0
    for name, _dtype, _shape, begin, stop in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin != position:
            problem = (
                "overlap another tensor" if begin < position else f"leave a gap of {begin - position} bytes before it"
            )
            raise UpdateFormatError(f"tensor {_show(name)}: data_offsets [{begin}, {stop}] {problem}")
        position = stop
    if len(data) - end != position:
        raise UpdateFormatError(f"update carries {len(data) - end} data bytes, its header describes {position}")

    body = memoryview(data)[end:]
    order = [t.name for t in spec.tensors] if spec is not None else [e[0] for e in entries]
    by_name = {e[0]: e for e in entries}
    tensors: dict[str, np.ndarray] = {}
    for name in order:
        _n, dtype, shape, begin, stop = by_name[name]
        array = np.frombuffer(body[begin:stop], dtype=DTYPES[dtype]).reshape(shape)
        if spec is not None and not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise UpdateFormatError(
                f"tensor {_show(name)} has {bad} non-finite value(s) (NaN or infinity): refused before aggregation"
            )
        tensors[name] = array
    return tensors, dict(metadata)


#: The default size limit of a model file (:func:`load_model`).
MAX_MODEL_BYTES = 64 * 1024**3


def load_model(path: str | Path, *, limit: int = MAX_MODEL_BYTES) -> dict[str, np.ndarray]:
    """Read a safetensors model file (float32 tensors) of at most ``limit`` bytes.

    The file must be a regular file (a FIFO or device is refused without blocking); it is read
    into one buffer of its own size (:func:`attestation.files.read_bounded_buffer`)."""
    from attestation.files import read_bounded_buffer

    data = read_bounded_buffer(path, limit, "model file", UpdateFormatError)
    tensors, _metadata = decode_tensors(data)
    return tensors  # writable views of the one buffer the file was read into (no second copy)


def flatten(tensors: Mapping[str, np.ndarray], spec: ModelSpec) -> np.ndarray:
    """One float32 vector, tensors in spec order (what the native kernels take)."""
    return np.concatenate([np.asarray(tensors[t.name], dtype=np.float32).reshape(-1) for t in spec.tensors])


def unflatten(vector: np.ndarray, spec: ModelSpec) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    position = 0
    for tensor in spec.tensors:
        out[tensor.name] = vector[position : position + tensor.size].reshape(tensor.shape)
        position += tensor.size
    if position != vector.size:
        raise UpdateFormatError(f"vector of {vector.size} values does not fit the model spec ({position})")
    return out

"""Model updates as named tensors in the safetensors layout, checked against the task's model spec.

Layout (the safetensors format): an 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the tensor bytes (little-endian, row-major), offsets relative to the end of the header.

Everything is checked before a single tensor byte is interpreted: the header size against a
bound, the names, dtypes and shapes against the :class:`ModelSpec`, offsets contiguous and
covering the data exactly, so an update's total size is known (and bounded by the spec)
before it is read. Non-finite values are rejected before anything is aggregated.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

#: The dtypes attestfl aggregates: float32 only, as the native kernels.
DTYPES = {"F32": np.dtype("<f4")}
MAX_HEADER_BYTES = 1024 * 1024
MAX_TENSORS = 4096
_LENGTH = struct.Struct("<Q")


class UpdateFormatError(ValueError):
    """An update (or model file) is not valid safetensors, or does not match the model spec."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * DTYPES[self.dtype].itemsize


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
            if tensor.dtype not in DTYPES:
                raise UpdateFormatError(f"model spec: tensor {tensor.name!r} has dtype {tensor.dtype}; only {', '.join(DTYPES)} is supported")

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
    def of(cls, tensors: Mapping[str, np.ndarray]) -> "ModelSpec":
        return cls(tuple(TensorSpec(name, "F32", tuple(int(d) for d in array.shape)) for name, array in tensors.items()))

    def to_json(self) -> str:
        return json.dumps([{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.tensors], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            items = json.loads(text)
            return cls(tuple(TensorSpec(str(i["name"]), str(i["dtype"]), tuple(int(d) for d in i["shape"])) for i in items))
        except (ValueError, KeyError, TypeError) as exc:
            raise UpdateFormatError(f"model spec is not valid JSON of tensors: {exc}") from exc


def encode_tensors(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise float32 tensors in the safetensors layout (in the given order)."""
    return b"".join(encode_tensor_parts(tensors, metadata))


def encode_tensor_parts(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> list:
    """The safetensors layout as buffers to send back to back: the length-prefixed header, then
    each tensor's memory (no copy when a tensor already is contiguous little-endian float32)."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    blobs = []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=DTYPES["F32"])
        header[name] = {"dtype": "F32", "shape": list(data.shape), "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
        blobs.append(data.reshape(-1))
    raw_header = json.dumps(header, separators=(",", ":")).encode()
    raw_header += b" " * (-len(raw_header) % 8)  # align tensor data to 8 bytes, as safetensors does
    return [_LENGTH.pack(len(raw_header)) + raw_header, *blobs]


def header_length(prefix: bytes) -> int:
    """The header length from the first 8 bytes, checked against the bound."""
    if len(prefix) < _LENGTH.size:
        raise UpdateFormatError("update is shorter than the 8-byte safetensors header length")
    (length,) = _LENGTH.unpack_from(prefix, 0)
    if length > MAX_HEADER_BYTES:
        raise UpdateFormatError(f"safetensors header of {length} bytes is over the {MAX_HEADER_BYTES}-byte limit")
    return int(length)


def decode_tensors(data: bytes | bytearray, spec: ModelSpec | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse and check an update: (name -> float32 array in spec order, metadata).

    With ``spec``, names, dtypes and shapes must equal it exactly and every value must be
    finite. Without, the file is read as it is (loading an initial model), still bounded.
    """
    length = header_length(data)
    end = _LENGTH.size + length
    if len(data) < end:
        raise UpdateFormatError("update is truncated inside its safetensors header")
    try:
        header = json.loads(bytes(data[_LENGTH.size:end]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UpdateFormatError(f"safetensors header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise UpdateFormatError("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UpdateFormatError("safetensors __metadata__ must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise UpdateFormatError(f"update has {len(header)} tensors, more than {MAX_TENSORS}")

    entries: list[tuple[str, str, tuple[int, ...], int, int]] = []
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, stop = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UpdateFormatError(f"tensor {name!r}: malformed entry ({exc})") from exc
        if dtype not in DTYPES:
            raise UpdateFormatError(f"tensor {name!r}: dtype {dtype} is not supported (only {', '.join(DTYPES)})")
        if any(d < 0 for d in shape):
            raise UpdateFormatError(f"tensor {name!r}: negative dimension in shape {list(shape)}")
        entries.append((name, dtype, shape, begin, stop))

    if spec is not None:
        expected = {t.name: t for t in spec.tensors}
        missing = sorted(set(expected) - {e[0] for e in entries})
        extra = sorted({e[0] for e in entries} - set(expected))
        if missing or extra:
            raise UpdateFormatError(f"update tensors differ from the model spec: missing {missing or 'none'}, unexpected {extra or 'none'}")
        for name, dtype, shape, _b, _e in entries:
            want = expected[name]
            if dtype != want.dtype or shape != want.shape:
                raise UpdateFormatError(f"tensor {name!r} is {dtype}{list(shape)}, the model spec says {want.dtype}{list(want.shape)}")

    # Offsets: contiguous from 0, each the size its dtype and shape give, covering the data exactly.
    position = 0
    for name, dtype, shape, begin, stop in sorted(entries, key=lambda e: e[3]):
        size = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        if begin != position or stop - begin != size:
            raise UpdateFormatError(f"tensor {name!r}: data_offsets [{begin}, {stop}] do not fit its shape or overlap another tensor")
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
            raise UpdateFormatError(f"tensor {name!r} has {bad} non-finite value(s) (NaN or infinity): refused before aggregation")
        tensors[name] = array
    return tensors, {str(k): v for k, v in metadata.items()}


#: The default size limit of a model file (:func:`load_model`).
MAX_MODEL_BYTES = 64 * 1024 ** 3


def load_model(path: str | Path, *, limit: int = MAX_MODEL_BYTES) -> dict[str, np.ndarray]:
    """Read a safetensors model file (float32 tensors) of at most ``limit`` bytes.

    The file must be a regular file (a FIFO or device is refused without blocking); it is read
    into one buffer of its own size (:func:`attestation.files.read_bounded_buffer`)."""
    from attestation.files import read_bounded_buffer

    data = read_bounded_buffer(path, limit, "model file", UpdateFormatError)
    tensors, _metadata = decode_tensors(data)
    return {name: array.copy() for name, array in tensors.items()}


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

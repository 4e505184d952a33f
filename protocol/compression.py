"""Compressed updates: float16, bfloat16, and int8 with per-block scales (issue 19).

The task chooses the mode (``[task] compression``, sent to the sites in ``TaskResponse.compression``);
a site encodes its update in that mode, the aggregator decodes it back to float32 and
aggregates in float32. The model the aggregator publishes stays float32.

Wire format: a safetensors file, like a float32 update, whose tensors carry the model spec's
names and shapes in another dtype:

* ``float32``: ``F32`` (the uncompressed update, :func:`protocol.tensors.encode_tensor_parts`);
* ``float16``: ``F16`` (IEEE half, round to nearest even; a value beyond half's range is refused
  at the site, never sent as infinity);
* ``bfloat16``: ``BF16`` (the top 16 bits of the float32, round to nearest even);
* ``int8``: ``I8`` per tensor and beside it ``<name>::scales``, ``F32`` of shape
  ``[ceil(size / block)]``: value ``i`` of the flattened tensor is ``q[i] * scales[i // block]``,
  ``|q| <= 127``, the scale of a block its largest magnitude / 127 (so the error of each value is
  at most half its block's scale).

``__metadata__`` holds ``compression`` (the mode) and, for int8, ``block``; plus the site's own
entries (``weight``). Decoding checks everything against the model spec and the task's mode
(names, dtypes, shapes, offsets, the mode and block, finite scales and values) and raises
:class:`~protocol.tensors.UpdateFormatError` with a one-line reason.

Error feedback (:class:`ErrorFeedback`) is the site's: what compression lost from one round's
update is added to the next round's before it is compressed, so the error does not accumulate
over rounds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from protocol.tensors import (
    ModelSpec,
    UpdateFormatError,
    decode_tensors,
    encode_tensor_parts,
    header_length,
    parse_header,
)

FLOAT32: Final = "float32"
FLOAT16: Final = "float16"
BFLOAT16: Final = "bfloat16"
INT8: Final = "int8"
#: The modes a task may choose, and each one's bytes per value (int8: plus 4 per block).
MODES: Final = {FLOAT32: 4, FLOAT16: 2, BFLOAT16: 2, INT8: 1}
#: Values per int8 scale.
INT8_BLOCK: Final = 256
SCALES_SUFFIX: Final = "::scales"
_SAFETENSORS_DTYPE = {FLOAT32: "F32", FLOAT16: "F16", BFLOAT16: "BF16", INT8: "I8"}
_LENGTH_BYTES = 8
_F16_MAX = float(np.finfo(np.float16).max)


class CompressionError(UpdateFormatError):
    """An update cannot be compressed in the task's mode (e.g. a value beyond float16's range)."""


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise CompressionError(f"compression {mode!r} is not one of {', '.join(MODES)}")
    return mode


# ---- the codecs, on one flat float32 array ------------------------------------------------------


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even (finite inputs)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def int8_blocks(values: np.ndarray, block: int = INT8_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(q int8, scales float32): value i ~= q[i] * scales[i // block]; |q| <= 127."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    blocks = (flat.size + block - 1) // block
    padded = np.zeros(blocks * block, np.float32)
    padded[: flat.size] = flat
    rows = padded.reshape(blocks, block)
    scales = (np.abs(rows).max(axis=1) / np.float32(127.0)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    q = np.clip(np.rint(rows / safe[:, None]), -127, 127).astype(np.int8)
    return q.reshape(-1)[: flat.size], scales


def from_int8_blocks(q: np.ndarray, scales: np.ndarray, block: int = INT8_BLOCK) -> np.ndarray:
    flat = np.asarray(q, dtype=np.int8).reshape(-1).astype(np.float32)
    with np.errstate(over="ignore"):  # a hostile scale overflows to infinity: refused by the caller's check
        return flat * np.repeat(np.asarray(scales, dtype=np.float32), block)[: flat.size]


def compress_array(values: np.ndarray, mode: str) -> tuple[np.ndarray, ...]:
    """The wire arrays of one tensor (int8: values and scales)."""
    if mode == FLOAT32:
        return (np.ascontiguousarray(values, dtype=np.float32),)
    if not np.isfinite(values).all():
        raise CompressionError("an update with a non-finite value cannot be compressed")
    if mode == FLOAT16:
        if values.size and float(np.abs(values).max()) > _F16_MAX:
            raise CompressionError(f"a value beyond float16's range ({_F16_MAX:g}): use bfloat16 or int8")
        return (np.asarray(values, dtype=np.float16),)
    if mode == BFLOAT16:
        return (to_bfloat16(values).reshape(values.shape),)
    if mode == INT8:
        q, scales = int8_blocks(values)
        return q.reshape(values.shape), scales
    raise CompressionError(f"compression {mode!r} is not one of {', '.join(MODES)}")


def decompress_array(parts: tuple[np.ndarray, ...], mode: str, shape: tuple[int, ...]) -> np.ndarray:
    if mode == FLOAT32:
        return np.asarray(parts[0], dtype=np.float32).reshape(shape)
    if mode == FLOAT16:
        return np.asarray(parts[0], dtype=np.float16).astype(np.float32).reshape(shape)
    if mode == BFLOAT16:
        return from_bfloat16(parts[0]).reshape(shape)
    if mode == INT8:
        return from_int8_blocks(parts[0], parts[1]).reshape(shape)
    raise CompressionError(f"compression {mode!r} is not one of {', '.join(MODES)}")


def roundtrip(values: np.ndarray, mode: str) -> np.ndarray:
    """What the aggregator will read of ``values`` sent in ``mode``."""
    values = np.asarray(values, dtype=np.float32)
    return decompress_array(compress_array(values, mode), mode, values.shape)


def error_bound(values: np.ndarray, mode: str) -> np.ndarray:
    """The largest error :func:`roundtrip` may make on each value (float32 arithmetic aside)."""
    magnitude = np.abs(np.asarray(values, dtype=np.float32))
    if mode == FLOAT32:
        return np.zeros_like(magnitude)
    if mode == FLOAT16:  # half an ulp: 2**-11 relative, 2**-25 absolute below the normal range
        return np.maximum(magnitude * 2.0**-11, 2.0**-25).astype(np.float32)
    if mode == BFLOAT16:  # half an ulp of an 8-bit significand
        return (magnitude * 2.0**-8).astype(np.float32)
    if mode == INT8:
        _, scales = int8_blocks(magnitude)
        return (np.repeat(scales, INT8_BLOCK)[: magnitude.size].reshape(magnitude.shape) * 0.5).astype(np.float32)
    raise CompressionError(f"compression {mode!r} is not one of {', '.join(MODES)}")


def wire_bytes(spec: ModelSpec, mode: str) -> int:
    """The tensor data bytes of one update in ``mode`` (headers aside)."""
    total = 0
    for tensor in spec.tensors:
        total += tensor.size * MODES[check_mode(mode)]
        if mode == INT8:
            total += 4 * ((tensor.size + INT8_BLOCK - 1) // INT8_BLOCK)
    return total


# ---- updates: encode at the site, decode at the aggregator --------------------------------------


class ErrorFeedback:
    """The site's memory of what compression lost (per tensor), added to the next update."""

    def __init__(self) -> None:
        self.residual: dict[str, np.ndarray] = {}

    def apply(self, update: Mapping[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
        """The update to send (this one plus the residual), compressed then decompressed: what the
        aggregator will read; the residual becomes what that loses."""
        sent: dict[str, np.ndarray] = {}
        for name, array in update.items():
            target = np.asarray(array, dtype=np.float32)
            residual = self.residual.get(name)
            if residual is not None and residual.shape == target.shape:
                target = target + residual
            sent[name] = roundtrip(target, mode)
            if mode == FLOAT32:
                self.residual.pop(name, None)
            else:
                self.residual[name] = (target - sent[name]).astype(np.float32)
        return sent


def encode_update(
    update: Mapping[str, np.ndarray],
    metadata: Mapping[str, str],
    mode: str,
    feedback: ErrorFeedback | None = None,
) -> list[bytes | memoryview]:
    """The update's wire bytes (as buffers) in ``mode``; with ``feedback``, error feedback applied."""
    check_mode(mode)
    if mode == FLOAT32 and feedback is None:
        return encode_tensor_parts(update, metadata)
    tensors = feedback.apply(update, mode) if feedback is not None else dict(update)
    if mode == FLOAT32:
        return encode_tensor_parts(tensors, metadata)
    header: dict[str, object] = {
        "__metadata__": {
            **{str(k): str(v) for k, v in metadata.items()},
            "compression": mode,
            **({"block": str(INT8_BLOCK)} if mode == INT8 else {}),
        }
    }
    blobs: list[bytes | memoryview] = []
    offset = 0
    for name, array in tensors.items():
        parts = compress_array(np.asarray(array, dtype=np.float32), mode)
        for suffix, part, dtype in zip(("", SCALES_SUFFIX), parts, (_SAFETENSORS_DTYPE[mode], "F32"), strict=False):
            data = np.ascontiguousarray(part)
            header[name + suffix] = {
                "dtype": dtype,
                "shape": list(data.shape),
                "data_offsets": [offset, offset + data.nbytes],
            }
            offset += data.nbytes
            blobs.append(data.reshape(-1).view(np.uint8).data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return [len(raw).to_bytes(_LENGTH_BYTES, "little") + raw, *blobs]


def _expected(spec: ModelSpec, mode: str) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """name -> (dtype, shape, bytes) of every tensor an update in ``mode`` carries."""
    out: dict[str, tuple[str, tuple[int, ...], int]] = {}
    width = MODES[mode]
    for tensor in spec.tensors:
        out[tensor.name] = (_SAFETENSORS_DTYPE[mode], tensor.shape, tensor.size * width)
        if mode == INT8:
            blocks = (tensor.size + INT8_BLOCK - 1) // INT8_BLOCK
            out[tensor.name + SCALES_SUFFIX] = ("F32", (blocks,), 4 * blocks)
    return out


@dataclass(frozen=True)
class TensorLayout:
    """Where one tensor of an update lies: its values in the flat float32 vector (spec order) and
    its bytes in the update's body."""

    name: str
    offset: int  # index of its first value in the flat vector
    size: int  # values
    values: tuple[int, int]  # byte span of its values in the body
    scales: tuple[int, int] | None  # int8: byte span of its scales in the body


@dataclass(frozen=True)
class UpdateLayout:
    """An update's checked safetensors header: the mode, its metadata and each tensor's place."""

    mode: str
    metadata: dict[str, str]
    body_start: int  # the length prefix and the header
    total: int  # the update's bytes
    tensors: tuple[TensorLayout, ...]


def read_layout(head: bytes | bytearray | memoryview, total: int, spec: ModelSpec, mode: str) -> UpdateLayout:
    """Check an update's header against ``spec`` and the task's ``mode`` before any of its values
    is read. ``head``: the update's first bytes (at least its header; the whole update will do);
    ``total``: the update's length. Raises :class:`~protocol.tensors.UpdateFormatError`."""
    check_mode(mode)
    if total > spec.max_update_bytes:
        raise UpdateFormatError(
            f"update of {total} bytes is larger than the model spec allows ({spec.max_update_bytes})"
        )
    length = header_length(head)
    end = _LENGTH_BYTES + length
    if len(head) < end or total < end:
        raise UpdateFormatError(
            f"update is truncated inside its safetensors header ({length} bytes announced, "
            f"{min(len(head), total) - _LENGTH_BYTES} present)"
        )
    header = parse_header(bytes(head[_LENGTH_BYTES:end]))
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise UpdateFormatError("safetensors __metadata__ must map strings to strings")
    if metadata.get("compression", FLOAT32 if mode == FLOAT32 else None) != mode:
        raise UpdateFormatError(
            f"the update is compressed as {str(metadata.get('compression', 'float32'))[:16]!r}, "
            f"the task asks for {mode!r}"
        )
    if mode == INT8 and metadata.get("block") != str(INT8_BLOCK):
        raise UpdateFormatError(f"int8 update with block {str(metadata.get('block'))[:16]!r}, expected {INT8_BLOCK}")
    expected = _expected(spec, mode)
    if set(header) != set(expected):
        missing = sorted(set(expected) - set(header))[:4]
        extra = sorted(set(header) - set(expected))[:4]
        raise UpdateFormatError(f"update tensors differ from the model spec: missing {missing}, unexpected {extra}")
    spans: dict[str, tuple[int, int]] = {}
    for name, (dtype, shape, size) in expected.items():
        entry = header[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise UpdateFormatError(f"tensor {name[:64]!r}: malformed entry")
        offsets = entry["data_offsets"]
        if entry["dtype"] != dtype or entry["shape"] != list(shape):
            raise UpdateFormatError(
                f"tensor {name[:64]!r} is {str(entry['dtype'])[:8]}{str(entry['shape'])[:64]}, "
                + (
                    f"the model spec says {dtype}{list(shape)}"
                    if mode == FLOAT32
                    else f"expected {dtype}{list(shape)} for {mode}"
                )
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(v) is int for v in offsets)
            or offsets[1] - offsets[0] != size
        ):
            raise UpdateFormatError(f"tensor {name[:64]!r}: data_offsets do not fit its shape")
        spans[name] = (offsets[0], offsets[1])
    position = 0
    for (begin, stop), name in sorted((span, name) for name, span in spans.items()):
        if begin != position:
            raise UpdateFormatError(f"tensor {name[:64]!r}: data_offsets overlap or leave a gap")
        position = stop
    if total - end != position:
        raise UpdateFormatError(f"update carries {total - end} data bytes, its header describes {position}")
    tensors = []
    offset = 0
    for tensor in spec.tensors:
        scales = spans[tensor.name + SCALES_SUFFIX] if mode == INT8 else None
        tensors.append(TensorLayout(tensor.name, offset, tensor.size, spans[tensor.name], scales))
        offset += tensor.size
    return UpdateLayout(mode, dict(metadata), end, total, tuple(tensors))


#: Values per piece read by :func:`iter_pieces` (a multiple of the int8 block).
PIECE_VALUES: Final = 1 << 20


def iter_pieces(
    layout: UpdateLayout,
    read: Callable[[int, int], bytes | bytearray | memoryview],
    max_values: int = PIECE_VALUES,
    *,
    check_finite: bool = True,
) -> Iterator[tuple[int, np.ndarray]]:
    """The update's values as float32 pieces ``(flat offset, values)`` of at most ``max_values``,
    in spec order, each checked finite before it is yielded (unless ``check_finite`` is False: a
    caller that checks them itself, or read them once already); ``read(offset, length)`` returns
    the update's bytes there. Memory: one piece (and one tensor's int8 scales) at a time."""
    step = max(INT8_BLOCK, max_values // INT8_BLOCK * INT8_BLOCK)
    width = MODES[layout.mode]
    for tensor in layout.tensors:
        scales: np.ndarray | None = None
        if tensor.scales is not None:
            begin, stop = tensor.scales
            scales = np.frombuffer(read(layout.body_start + begin, stop - begin), dtype="<f4")
            if not np.isfinite(scales).all() or (scales < 0).any():
                raise UpdateFormatError(f"tensor {tensor.name[:64]!r}: int8 scales must be finite and >= 0")
        for start in range(0, tensor.size, step):
            count = min(step, tensor.size - start)
            raw = read(layout.body_start + tensor.values[0] + start * width, count * width)
            piece = _decode_piece(raw, layout.mode, scales, start, tensor.name)
            if check_finite and not np.isfinite(piece).all():
                raise non_finite(tensor.name)
            yield tensor.offset + start, piece


def non_finite(name: str) -> UpdateFormatError:
    """The refusal of an update with a NaN or an infinity in tensor ``name``."""
    return UpdateFormatError(
        f"tensor {name[:64]!r} has non-finite value(s) (NaN or infinity): refused before aggregation"
    )


def _decode_piece(
    raw: bytes | bytearray | memoryview, mode: str, scales: np.ndarray | None, start: int, name: str
) -> np.ndarray:
    """float32 values of one piece of a tensor starting at value ``start`` (int8: a block boundary)."""
    if mode == FLOAT32:
        return np.frombuffer(raw, dtype="<f4")
    if mode == FLOAT16:
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if mode == BFLOAT16:
        return from_bfloat16(np.frombuffer(raw, dtype="<u2"))
    q = np.frombuffer(raw, dtype="i1")
    if (q == -128).any():
        raise UpdateFormatError(f"tensor {name[:64]!r}: int8 value -128 (the range is -127..127)")
    assert scales is not None
    first = start // INT8_BLOCK
    return from_int8_blocks(q, scales[first : first + (q.size + INT8_BLOCK - 1) // INT8_BLOCK])


def decode_update(
    data: bytes | bytearray | memoryview, spec: ModelSpec, mode: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """An update sent in the task's ``mode``, as float32 tensors in spec order (and its metadata).
    float32 is :func:`protocol.tensors.decode_tensors` itself (views of ``data``, no copy)."""
    check_mode(mode)
    if mode == FLOAT32:
        return decode_tensors(data, spec)
    layout = read_layout(data, len(data), spec, mode)
    view = memoryview(data)
    flat = np.empty(spec.parameter_count, np.float32)
    for offset, piece in iter_pieces(layout, lambda begin, length: view[begin : begin + length]):
        flat[offset : offset + piece.size] = piece
    tensors = {
        t.name: flat[t.offset : t.offset + t.size].reshape(s.shape)
        for t, s in zip(layout.tensors, spec.tensors, strict=True)
    }
    return tensors, layout.metadata


def update_bytes(parts: list[bytes | memoryview]) -> int:
    return sum(memoryview(p).nbytes for p in parts)


__all__ = [
    "BFLOAT16",
    "FLOAT16",
    "FLOAT32",
    "INT8",
    "INT8_BLOCK",
    "MODES",
    "PIECE_VALUES",
    "CompressionError",
    "ErrorFeedback",
    "TensorLayout",
    "UpdateLayout",
    "check_mode",
    "compress_array",
    "decode_update",
    "decompress_array",
    "encode_update",
    "error_bound",
    "iter_pieces",
    "non_finite",
    "read_layout",
    "roundtrip",
    "update_bytes",
    "wire_bytes",
]

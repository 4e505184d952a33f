"""Updates in the safetensors layout, checked against the model spec before aggregation."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from protocol.tensors import ModelSpec, UpdateFormatError, decode_tensors, encode_tensors, flatten, unflatten

TENSORS = {
    "layer.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "layer.bias": np.array([0.5, -1.0], np.float32),
}
SPEC = ModelSpec.of(TENSORS)


def test_compatible_with_the_safetensors_library_both_ways() -> None:
    ours = encode_tensors(TENSORS, {"weight": "12"})
    loaded = safetensors_load(ours)
    assert all(np.array_equal(loaded[k], v) for k, v in TENSORS.items())
    theirs = safetensors_save(TENSORS, metadata={"weight": "3"})
    decoded, metadata = decode_tensors(theirs, SPEC)
    assert metadata == {"weight": "3"} and all(np.array_equal(decoded[k], v) for k, v in TENSORS.items())


def test_flatten_round_trip() -> None:
    vector = flatten(TENSORS, SPEC)
    assert vector.dtype == np.float32 and vector.size == SPEC.parameter_count == 8
    assert all(np.array_equal(unflatten(vector, SPEC)[k], v) for k, v in TENSORS.items())


def _raw(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: {"layer.weight": t["layer.weight"]}, "missing"),
        (lambda t: {**t, "extra": np.zeros(1, np.float32)}, "unexpected"),
        (lambda t: {**t, "layer.bias": np.zeros(3, np.float32)}, "model spec says"),
        (lambda t: {**t, "layer.bias": np.array([np.nan, 1], np.float32)}, "non-finite"),
        (lambda t: {**t, "layer.bias": np.array([np.inf, 1], np.float32)}, "non-finite"),
    ],
)
def test_spec_mismatches_are_refused(mutate, message: str) -> None:  # noqa: ANN001
    with pytest.raises(UpdateFormatError, match=message):
        decode_tensors(encode_tensors(mutate(dict(TENSORS))), SPEC)


def test_malformed_layouts() -> None:
    weight = TENSORS["layer.weight"].tobytes()
    bias = TENSORS["layer.bias"].tobytes()
    good = {
        "layer.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "layer.bias": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]},
    }
    assert decode_tensors(_raw(good, weight + bias), SPEC)
    cases = [
        (
            dict(good, **{"layer.bias": {"dtype": "F32", "shape": [2], "data_offsets": [20, 28]}}),
            weight + bias,
            "overlap",
        ),
        (good, weight + bias + b"\0" * 4, "data bytes"),
        (
            dict(good, **{"layer.bias": {"dtype": "F64", "shape": [2], "data_offsets": [24, 40]}}),
            weight + bias * 2,
            "not supported",
        ),
        (dict(good, **{"layer.bias": {"dtype": "F32", "shape": [2]}}), weight + bias, "malformed"),
    ]
    for header, body, message in cases:
        with pytest.raises(UpdateFormatError, match=message):
            decode_tensors(_raw(header, body), SPEC)
    with pytest.raises(UpdateFormatError, match="header of"):
        decode_tensors(struct.pack("<Q", 10**9) + b"{}", SPEC)
    with pytest.raises(UpdateFormatError, match="truncated"):
        decode_tensors(struct.pack("<Q", 100) + b"{}", SPEC)
    with pytest.raises(UpdateFormatError, match="not JSON"):
        decode_tensors(struct.pack("<Q", 2) + b"{x", SPEC)
    with pytest.raises(UpdateFormatError, match="shorter"):
        decode_tensors(b"\x01", SPEC)


def test_spec_bounds_and_json() -> None:
    assert SPEC.max_update_bytes < 2 * 1024 * 1024
    assert ModelSpec.from_json(SPEC.to_json()) == SPEC
    with pytest.raises(UpdateFormatError):
        ModelSpec.from_json("[{")

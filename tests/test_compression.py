"""Compressed updates (protocol/compression.py): exact round trips where the format is exact,
the stated error bound everywhere else, bfloat16 rounding as torch does it, error feedback that
keeps the total error to one round's, and a decoder that refuses every malformed update."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocol.compression import (
    BFLOAT16,
    FLOAT16,
    FLOAT32,
    INT8,
    INT8_BLOCK,
    MODES,
    CompressionError,
    ErrorFeedback,
    decode_update,
    encode_update,
    error_bound,
    roundtrip,
    update_bytes,
    wire_bytes,
)
from protocol.tensors import ModelSpec, UpdateFormatError

FINITE = st.floats(-1e4, 1e4, allow_nan=False, width=32)
ARRAYS = hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=700), elements=FINITE)
MODEL = {"w": np.zeros((30, 20), np.float32), "b": np.zeros(3, np.float32)}
SPEC = ModelSpec.of(MODEL)


def update(seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(v.shape) * scale).astype(np.float32) for k, v in MODEL.items()}


def joined(parts: list) -> bytes:
    return b"".join(bytes(memoryview(p).cast("B")) for p in parts)


# --- the codecs --------------------------------------------------------------------------------


def test_exact_round_trips() -> None:
    halves = (np.arange(-2048, 2048, dtype=np.float32) / 8).astype(np.float32)  # exact in float16
    np.testing.assert_array_equal(roundtrip(halves, FLOAT16), halves)
    bf = (np.arange(-256, 256, dtype=np.float32) * 2.0**-5).astype(np.float32)  # 8 significant bits
    np.testing.assert_array_equal(roundtrip(bf, BFLOAT16), bf)
    ints = np.tile(np.arange(-127, 128, dtype=np.float32), 3)  # each block's max is 127: scale 1
    ints[::INT8_BLOCK] = 127
    np.testing.assert_array_equal(roundtrip(ints, INT8), ints)
    x = update()["w"]
    np.testing.assert_array_equal(roundtrip(x, FLOAT32), x)
    np.testing.assert_array_equal(roundtrip(np.zeros(1000, np.float32), INT8), 0)


@settings(max_examples=60, deadline=None)
@given(ARRAYS, st.sampled_from(sorted(MODES)))
def test_every_value_is_within_the_stated_bound(values: np.ndarray, mode: str) -> None:
    got = roundtrip(values, mode)
    assert got.dtype == np.float32 and got.shape == values.shape
    slack = np.abs(values) * 2.0**-20 + 1e-30  # float32 arithmetic of the scale itself
    assert (np.abs(got.astype(np.float64) - values) <= error_bound(values, mode) + slack).all()


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 500), elements=st.floats(allow_nan=False, allow_infinity=False, width=32)))
def test_bfloat16_rounds_as_torch_does(values: np.ndarray) -> None:
    import torch  # the test extra installs it

    want = torch.from_numpy(values.copy()).to(torch.bfloat16).to(torch.float32).numpy()
    got = roundtrip(values, BFLOAT16)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[finite], want[finite])


def test_float16_refuses_values_beyond_its_range_and_nothing_non_finite_is_compressed() -> None:
    with pytest.raises(CompressionError, match="float16's range"):
        roundtrip(np.array([1e5], np.float32), FLOAT16)
    for mode in (FLOAT16, BFLOAT16, INT8):
        with pytest.raises(CompressionError, match="non-finite"):
            roundtrip(np.array([1.0, np.nan], np.float32), mode)
    with pytest.raises(CompressionError, match="not one of"):
        roundtrip(np.ones(3, np.float32), "int4")


# --- updates on the wire -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(MODES))
def test_an_update_decodes_to_what_the_site_meant(mode: str) -> None:
    sent = update(1)
    parts = encode_update(sent, {"weight": "12.0"}, mode)
    tensors, metadata = decode_update(joined(parts), SPEC, mode)
    assert list(tensors) == ["w", "b"] and metadata["weight"] == "12.0"
    for name, array in sent.items():
        assert tensors[name].dtype == np.float32
        np.testing.assert_array_equal(tensors[name], roundtrip(array, mode))
    data_bytes = wire_bytes(SPEC, mode)
    assert data_bytes < update_bytes(parts) <= data_bytes + 1024
    if mode != FLOAT32:
        assert update_bytes(parts) < update_bytes(encode_update(sent, {"weight": "12.0"}, FLOAT32))


def test_wire_bytes_per_mode() -> None:
    spec = ModelSpec.of({"x": np.zeros(1_000_000, np.float32)})
    assert wire_bytes(spec, FLOAT32) == 4_000_000
    assert wire_bytes(spec, FLOAT16) == wire_bytes(spec, BFLOAT16) == 2_000_000
    assert wire_bytes(spec, INT8) == 1_000_000 + 4 * 3907


def _rewrite(data: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + length :]


def test_a_malformed_update_is_refused_with_a_reason() -> None:
    good = joined(encode_update(update(2), {"weight": "1"}, INT8))
    decode_update(good, SPEC, INT8)
    cases = {
        "compressed as 'int8', the task asks for 'float16'": (good, FLOAT16),
        "the task asks for 'int8'": (joined(encode_update(update(2), {"weight": "1"}, FLOAT16)), INT8),
        "block": (_rewrite(good, lambda h: h["__metadata__"].update(block="128")), INT8),
        "expected I8": (_rewrite(good, lambda h: h["w"].update(dtype="U8")), INT8),
        "missing": (_rewrite(good, lambda h: h.pop("b::scales")), INT8),
        "data bytes": (good + b"\0", INT8),
        "overlap": (_rewrite(good, lambda h: h["b"].update(data_offsets=[0, 3])), INT8),
    }
    for reason, (data, mode) in cases.items():
        with pytest.raises(UpdateFormatError, match=reason):
            decode_update(data, SPEC, mode)
    # a -128 or a non-finite scale: refused, never averaged
    length = int.from_bytes(good[:8], "little")
    header = json.loads(good[8 : 8 + length])
    body = bytearray(good[8 + length :])
    body[header["w"]["data_offsets"][0]] = 0x80
    with pytest.raises(UpdateFormatError, match="-128"):
        decode_update(good[: 8 + length] + bytes(body), SPEC, INT8)
    body = bytearray(good[8 + length :])
    begin = header["w::scales"]["data_offsets"][0]
    body[begin : begin + 4] = np.array([np.inf], "<f4").tobytes()
    with pytest.raises(UpdateFormatError, match="scales"):
        decode_update(good[: 8 + length] + bytes(body), SPEC, INT8)
    overflow = bytearray(good[8 + length :])
    overflow[begin : begin + 4] = np.array([3e38], "<f4").tobytes()
    with pytest.raises(UpdateFormatError, match="non-finite"):
        decode_update(good[: 8 + length] + bytes(overflow), SPEC, INT8)


# --- error feedback ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [FLOAT16, BFLOAT16, INT8])
def test_error_feedback_keeps_the_total_error_to_one_rounds(mode: str) -> None:
    """Over many rounds, what the aggregator read adds up to what the site meant, within one
    round's compression error (the residual), instead of a sum of every round's error."""
    feedback, plain = ErrorFeedback(), []
    meant = np.zeros(SPEC.parameter_count, np.float64)
    read = np.zeros_like(meant)
    for round_number in range(50):
        step = update(round_number, scale=1e-3)
        step["w"][0, 0] = 1.0  # a large value in the block: int8 loses the small ones
        meant += np.concatenate([v.reshape(-1) for v in step.values()])
        sent = feedback.apply(step, mode)
        read += np.concatenate([v.reshape(-1) for v in sent.values()])
        plain.append(np.concatenate([roundtrip(v, mode).reshape(-1) - v.reshape(-1) for v in step.values()]))
    residual = np.concatenate([v.reshape(-1) for v in feedback.residual.values()])
    np.testing.assert_allclose(meant - read, residual, atol=1e-5)
    with_feedback = np.abs(meant - read).max()
    without = np.abs(np.sum(plain, axis=0)).max()
    assert with_feedback <= without
    if mode == INT8:
        assert with_feedback < 0.2 * without

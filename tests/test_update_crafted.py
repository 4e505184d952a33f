"""Crafted safetensors headers (from a hostile site, or a hostile aggregator's model) are refused
with an UpdateFormatError and a one-line reason: never another exception, never an allocation
sized by what the header claims. Named regressions for each crafted case, then a bounded
hypothesis fuzz over decode_tensors."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.tensors import (
    MAX_HEADER_BYTES,
    MAX_RANK,
    ModelSpec,
    TensorSpec,
    UpdateFormatError,
    decode_tensors,
    encode_tensors,
)

TENSORS = {
    "layer.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "layer.bias": np.array([0.5, -1.0], np.float32),
}
SPEC = ModelSpec.of(TENSORS)
GOOD = encode_tensors(TENSORS)
WEIGHT = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
BIAS = {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]}
BODY = TENSORS["layer.weight"].tobytes() + TENSORS["layer.bias"].tobytes()


def framed(header: bytes | str, body: bytes = BODY, length: int | None = None) -> bytes:
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def entries(**overrides: Any) -> str:
    return json.dumps({"layer.weight": WEIGHT, "layer.bias": BIAS, **overrides})


def refused(data: bytes, spec: ModelSpec | None = SPEC) -> str:
    with pytest.raises(UpdateFormatError) as caught:
        decode_tensors(data, spec)
    message = str(caught.value)
    assert message and "\n" not in message and len(message) < 400, message
    return message


def test_the_framing_helper_builds_a_valid_update() -> None:
    decoded, _ = decode_tensors(framed(entries()), SPEC)
    assert all(np.array_equal(decoded[k], v) for k, v in TENSORS.items())


# ---- JSON structure --------------------------------------------------------------------------------


def test_deeply_nested_json_is_refused_without_recursion_error() -> None:
    for opener in ("[", '{"a":'):
        header = '{"x":' + opener * 200_000
        assert len(header) < MAX_HEADER_BYTES
        assert "nested too deeply" in refused(framed(header, b""), None)
        assert "nested too deeply" in refused(framed(header, b""))


def test_duplicate_keys_are_refused() -> None:
    weight, bias = json.dumps(WEIGHT), json.dumps(BIAS)
    header = f'{{"layer.weight": {weight}, "layer.bias": {bias}, "layer.bias": {bias}}}'
    assert "duplicate key 'layer.bias'" in refused(framed(header))
    inner = (
        '{"layer.weight": {"dtype": "F32", "dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, '
        f'"layer.bias": {bias}}}'
    )
    assert "duplicate key 'dtype'" in refused(framed(inner))
    assert "duplicate key '__metadata__'" in refused(framed('{"__metadata__": {}, "__metadata__": {}}', b""), None)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_refused(constant: str) -> None:
    header = entries().replace('"data_offsets": [24, 32]', f'"data_offsets": [24, {constant}]')
    assert "is not JSON" in refused(framed(header))


def test_fractions_and_exponents_are_refused() -> None:
    assert "non-integer number 24.0" in refused(framed(entries().replace("[24, 32]", "[24.0, 32]")))
    assert "non-integer number 1e400" in refused(framed(entries().replace("[24, 32]", "[24, 1e400]")))  # infinity


def test_huge_integers_are_refused_while_parsing() -> None:
    assert "integer of 4000 digits" in refused(framed(entries().replace("[24, 32]", "[24, " + "9" * 4000 + "]")))


def test_header_must_be_utf8_json() -> None:
    utf16 = entries().encode("utf-16")  # json.loads(bytes) would have guessed UTF-16
    assert "not UTF-8" in refused(framed(utf16))
    assert "not JSON" in refused(framed("\ufeff" + entries()))
    assert "not a JSON object" in refused(framed("[]", b""), None)


# ---- offsets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bias", "message"),
    [
        ({**BIAS, "data_offsets": [24, 2**64]}, "do not fit its shape"),
        ({**BIAS, "data_offsets": [2**64 - 8, 2**64]}, "leave a gap"),
        ({**BIAS, "data_offsets": [10**19, 10**19 + 8]}, "leave a gap"),
        ({**BIAS, "data_offsets": [-8, 0]}, "Expected `int` >= 0"),
        ({**BIAS, "data_offsets": [32, 24]}, "do not fit its shape"),
        ({**BIAS, "data_offsets": [20, 28]}, "overlap another tensor"),
        ({**BIAS, "data_offsets": [0, 8]}, "overlap another tensor"),
        ({**BIAS, "data_offsets": [28, 36]}, "leave a gap of 4 bytes"),
        ({**BIAS, "data_offsets": [24, 32, 40]}, "malformed entry"),
        ({**BIAS, "data_offsets": [24]}, "malformed entry"),
        ({**BIAS, "data_offsets": ["24", "32"]}, "malformed entry"),
        ({**BIAS, "data_offsets": [True, 32]}, "malformed entry"),
    ],
)
def test_crafted_offsets_are_refused(bias: dict, message: str) -> None:
    assert message in refused(framed(entries(**{"layer.bias": bias})))


def test_data_past_or_short_of_the_offsets_is_refused() -> None:
    assert "carries 36 data bytes, its header describes 32" in refused(framed(entries(), BODY + b"\0" * 4))
    assert "carries 28 data bytes" in refused(framed(entries(), BODY[:-4]))


def test_header_length_past_the_data_is_refused() -> None:
    raw = entries().encode()
    assert "truncated inside its safetensors header" in refused(framed(raw, b"", length=len(raw) + 1))
    assert "truncated" in refused(struct.pack("<Q", MAX_HEADER_BYTES) + b"{}")
    assert "over the 1048576-byte limit" in refused(struct.pack("<Q", 2**64 - 1) + b"{}")
    assert "shorter than the 8-byte" in refused(b"\xff" * 7)


# ---- shapes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "offsets", "message"),
    [
        ([2**32, 2**32], [24, 24], "shape of more than"),  # int64 product wraps to 0
        ([2**62, 4], [24, 24], "shape of more than"),
        ([0, 2**62], [24, 24], "shape of more than"),  # empty, but numpy cannot index it
        ([2**20, 2**20], [24, 24 + 4 * 2**40], "its header describes 4398046511128"),  # checked, never allocated
        ([-2], [24, 32], "Expected `int` >= 0"),
        ([1.5], [24, 32], "non-integer number 1.5"),
        ([True, 2], [24, 32], "malformed entry"),
        (["2"], [24, 32], "malformed entry"),
        ([1] * (MAX_RANK + 1), [24, 28], "malformed entry"),
        ([1] * 65, [24, 28], "malformed entry"),
        (2, [24, 32], "malformed entry"),
    ],
)
def test_crafted_shapes_are_refused(shape: Any, offsets: list[int], message: str) -> None:
    header = entries(**{"layer.bias": {"dtype": "F32", "shape": shape, "data_offsets": offsets}})
    assert message in refused(framed(header), None)
    refused(framed(header))


def test_crafted_entries_are_refused() -> None:
    assert "dtype 'F64' is not supported" in refused(framed(entries(**{"layer.bias": {**BIAS, "dtype": "F64"}})))
    assert "malformed entry" in refused(framed(entries(**{"layer.bias": {**BIAS, "dtype": ["F32"]}})))  # unhashable
    assert "malformed entry" in refused(framed(entries(**{"layer.bias": {**BIAS, "extra": 1}})))
    assert "malformed entry" in refused(framed(entries(**{"layer.bias": [BIAS]})))
    assert "malformed entry" in refused(framed(entries(**{"layer.bias": "F32"})))
    assert "malformed entry" in refused(framed(entries(**{"layer.bias": None})))


def test_many_tensors_are_refused_and_names_are_cut_in_messages() -> None:
    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(5000)})
    assert "more than 4096" in refused(framed(header, b""), None)
    long_name = "n" * 100_000
    message = refused(
        framed(entries(**{long_name: {"dtype": "F32", "shape": [1], "data_offsets": [32, 36]}}), BODY + b"\0" * 4)
    )
    assert "unexpected ['nnnn" in message and len(message) < 400


# ---- metadata --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata", [{"weight": 12}, {"weight": None}, {"weight": ["1"]}, [], "x", 5, [["weight", "1"]]]
)
def test_metadata_must_map_strings_to_strings(metadata: Any) -> None:
    assert "__metadata__ must map strings to strings" in refused(framed(entries(__metadata__=metadata)))


def test_null_or_empty_metadata_is_none() -> None:
    for metadata in (None, {}):
        assert decode_tensors(framed(entries(__metadata__=metadata)), SPEC)[1] == {}


# ---- bounds: nothing allocated from what the header claims -------------------------------------------


def test_an_update_larger_than_the_spec_allows_is_refused_before_parsing() -> None:
    data = framed(entries(), BODY + b"\0" * (SPEC.max_update_bytes))
    started = time.perf_counter()
    assert "larger than the model spec allows" in refused(data)
    assert time.perf_counter() - started < 0.05


def test_claimed_sizes_do_not_allocate() -> None:
    header = entries(**{"layer.bias": {"dtype": "F32", "shape": [2**20, 2**19], "data_offsets": [24, 24 + 2**41]}})
    tracemalloc.start()
    try:
        refused(framed(header), None)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_valid_decodes_are_views_without_copies() -> None:
    data = bytearray(GOOD)
    decoded, _ = decode_tensors(data, SPEC)
    assert all(not array.flags.owndata for array in decoded.values())


def test_model_spec_from_json_is_typed_and_bounded() -> None:
    assert ModelSpec.from_json(SPEC.to_json()) == SPEC
    for text in (
        '[{"name": "w", "dtype": "F32", "shape": [true]}]',
        '[{"name": 1, "dtype": "F32", "shape": [1]}]',
        '[{"name": "w", "dtype": "F32", "shape": [-1]}]',
        '[{"name": "w", "dtype": "F32", "shape": [1], "x": 1}]',
        '[{"name": "w", "dtype": "F32", "shape": [4294967296, 4294967296]}]',
        '{"name": "w"}',
        "[" * 100_000,
        '[{"name": "w", "dtype": "F64", "shape": [1]}]',
        "[]",
        '[{"name": "w", "dtype": "F32", "shape": [1.5]}]',
    ):
        with pytest.raises(UpdateFormatError):
            ModelSpec.from_json(text)
    with pytest.raises(UpdateFormatError, match="more than"):
        ModelSpec((TensorSpec("w", "F32", (2**32, 2**32)),))
    assert TensorSpec("w", "F32", (2**31, 2**31)).size == 2**62  # exact, no int64 wrap-around


# ---- fuzz ------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["F32", "F64", 0, 8, 24, 32, 2**32, 2**62])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["dtype", "shape", "data_offsets", "x"]) | st.text(max_size=4), children, max_size=4
        )
    ),
    max_leaves=12,
)
dimensions = st.sampled_from([0, 1, 2, 3, 6, 2**32, 2**62]) | st.integers(-1, 2**64) | scalars
offsets = st.sampled_from([0, 8, 24, 32]) | st.integers(-1, 2**65) | scalars
entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F32", "F32", "F16"]) | json_values,
        "shape": st.lists(dimensions, max_size=4) | json_values,
        "data_offsets": st.lists(offsets, min_size=2, max_size=2) | st.lists(offsets, max_size=3) | json_values,
    },
    optional={"x": json_values},
)
metadata = st.dictionaries(st.text(max_size=4), st.text(max_size=4) | scalars, max_size=3) | json_values
headers = st.dictionaries(
    st.sampled_from(["layer.weight", "layer.bias", "other"]) | st.text(max_size=6), entry | json_values, max_size=5
).flatmap(lambda h: st.just(h) | metadata.map(lambda m: {**h, "__metadata__": m}))


def check(data: bytes) -> None:
    """Only a valid decode or an UpdateFormatError with a one-line reason, with or without a spec."""
    for spec in (SPEC, None):
        try:
            tensors, metadata = decode_tensors(data, spec)
        except UpdateFormatError as exc:
            assert str(exc) and "\n" not in str(exc)
            continue
        assert all(isinstance(v, str) for v in metadata.values())
        assert sum(a.nbytes for a in tensors.values()) <= len(data)
        if spec is not None:
            assert list(tensors) == [t.name for t in spec.tensors]
            assert all(
                a.shape == t.shape and np.isfinite(a).all() for a, t in zip(tensors.values(), spec.tensors, strict=True)
            )


@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_random_bytes(data: bytes) -> None:
    check(data)
    check(struct.pack("<Q", len(data)) + data)


@FUZZ
@given(headers, st.binary(max_size=48), st.integers(-3, 3), st.booleans())
def test_fuzz_crafted_headers(header: dict, body: bytes, length_error: int, with_body: bool) -> None:
    raw = json.dumps(header).encode()
    check(framed(raw, (BODY if with_body else b"") + body[: len(body) % 5], length=max(0, len(raw) + length_error)))


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=6), st.integers(0, len(GOOD) + 8)
)
def test_fuzz_mutated_valid_update(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(GOOD)
    for position, value in flips:
        data[position] = value
    check(bytes(data[:cut]))
    check(bytes(data))

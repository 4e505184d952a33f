"""The evidence bundle wire format: round trip, detection, bounded strict decoding."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime

import cbor2
import pytest

from attestation.binding import BoundKeys
from attestation.bundle_abi import (
    MAGIC,
    MAX_BUNDLE_BYTES,
    EvidenceBundle,
    GpuPart,
    encode_bundle,
    looks_like_bundle,
    parse_bundle,
)
from attestation.errors import EvidenceFormatError, EvidenceTooLargeError
from attestation.platforms import registry

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def bundle(**changes: object) -> EvidenceBundle:
    base = EvidenceBundle(
        platform="tdx",
        evidence=b"\x04\x00\x02\x00\x81" + bytes(40),
        keys=BoundKeys(bytes(range(32)), bytes(range(32, 64))),
        nonce=bytes(32),
        created=CREATED,
        certificates=(b"cert-1", b"cert-2"),
        collateral={"qe-identity.json": b"{}"},
        gpu=GpuPart(b"gpu-evidence", b"-----BEGIN CERTIFICATE-----"),
    )
    return replace(base, **changes)


def raw_object(**changes: object) -> dict:
    obj = bundle().to_cbor_object()
    obj.update(changes)
    return obj


def encode_raw(obj: object) -> bytes:
    return MAGIC + cbor2.dumps(obj, canonical=True)


def test_round_trip_is_exact() -> None:
    original = bundle()
    data = encode_bundle(original)
    assert data.startswith(MAGIC) and looks_like_bundle(data)
    assert parse_bundle(data) == original
    assert encode_bundle(parse_bundle(data)) == data
    without_gpu = bundle(gpu=None, collateral={}, certificates=())
    assert parse_bundle(encode_bundle(without_gpu)) == without_gpu


def test_raw_evidence_is_never_taken_for_a_bundle(vectors) -> None:  # noqa: ANN001
    for path in [vectors / "tdx/spr-quote-v4.dat", vectors / "tdx/quote-v5.dat"]:
        data = path.read_bytes()
        assert not looks_like_bundle(data)
        assert registry.detect(data).name == "tdx"
    with pytest.raises(EvidenceFormatError, match="self-describe tag"):
        parse_bundle(b"\x04\x00\x02\x00" + bytes(100))


def test_oversized_input_is_refused_before_decoding() -> None:
    with pytest.raises(EvidenceTooLargeError):
        parse_bundle(MAGIC + b"\xff" * MAX_BUNDLE_BYTES)
    with pytest.raises(EvidenceTooLargeError):
        encode_bundle(bundle(evidence=bytes(MAX_BUNDLE_BYTES)))


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "truncated"),
        (b"\xa1\x61", "longer than the input"),
        (b"\xa1", "truncated"),
        (b"\xbf\xff", "indefinite"),
        (b"\x5f\x41\x00\xff", "indefinite"),
        (b"\xc1\x00", "tags"),
        (b"\x20", "negative"),
        (b"\xf9\x00\x00", "floats"),
        (b"\xf6", "floats and simple values"),
        (b"\xa1\x01\x00", "keys must be text"),
        (b"\xa2\x61a\x00\x61a\x01", "duplicate"),
        (b"\x5a\xff\xff\xff\xff", "longer than the input"),
        (b"\x9a\xff\xff\xff\xff", "entries"),
        (b"\x81\x81\x81\x81\x81\x81\x00", "deeper"),
        (b"\xa0\x00", "trailing"),
    ],
)
def test_malformed_cbor_is_a_typed_error(body: bytes, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        parse_bundle(MAGIC + body)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "something-else"}, "format"),
        ({"version": 2}, "version"),
        ({"version": True}, "version"),
        ({"platform": "nvidia-gpu"}, "platform"),
        ({"evidence": "text"}, "evidence: expected a byte string"),
        ({"nonce": bytes(8)}, "nonce"),
        ({"keys": {"x25519": bytes(32)}}, "keys: missing"),
        ({"keys": {"x25519": bytes(31), "ed25519": bytes(32)}}, "keys.x25519: expected 32 bytes"),
        ({"created": "yesterday"}, "created"),
        ({"certificates": [b"x"] * 9}, "certificates"),
        ({"certificates": ["pem"]}, r"certificates\[0\]"),
        ({"collateral": {"../etc/passwd": b""}}, "plain file name"),
        ({"collateral": {"a.json": "text"}}, "collateral"),
        ({"gpu": {"evidence": b""}}, "gpu: missing"),
        ({"gpu": {"evidence": b"", "certificates": b"", "extra": b""}}, "gpu: unknown"),
        ({"surprise": 1}, "unknown field"),
    ],
)
def test_fields_are_strictly_typed(changes: dict, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        parse_bundle(encode_raw(raw_object(**changes)))


def test_missing_fields_are_named() -> None:
    obj = raw_object()
    del obj["nonce"], obj["created"]
    with pytest.raises(EvidenceFormatError, match=r"missing field.*created, nonce"):
        parse_bundle(encode_raw(obj))


def test_random_garbage_never_escapes_as_another_exception() -> None:
    data = encode_bundle(bundle())
    rng = __import__("random").Random(7)
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(MAGIC), len(mutated))] = rng.randrange(256)
        cut = rng.randrange(len(MAGIC), len(mutated) + 1)
        for candidate in (bytes(mutated), bytes(mutated[:cut])):
            try:
                parse_bundle(candidate)
            except EvidenceFormatError:
                pass


def test_parse_rejects_non_bytes() -> None:
    with pytest.raises(EvidenceFormatError):
        parse_bundle("text")  # type: ignore[arg-type]
    assert not looks_like_bundle(os.urandom(2))

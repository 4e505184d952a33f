"""The evidence bundle: a versioned, self-describing CBOR container (no cryptography here).

Wire format, version 1: the CBOR self-describe tag (bytes ``d9 d9 f7``, RFC 8949 §3.4.6)
followed by one canonical CBOR map with text keys:

==================  ========  =============================================================
key                 type      content
==================  ========  =============================================================
``format``          text      ``"attestfl-evidence-bundle"``
``version``         uint      ``1``
``platform``        text      the CPU evidence's platform: a registered platform that binds
                              report_data (:func:`cpu_platforms`: ``sev-snp``, ``tdx``, and
                              any third-party CPU platform)
``evidence``        bytes     the raw evidence (an SNP attestation report, a TDX quote, ...)
``certificates``    array     certificates given beside the evidence, each DER or PEM bytes
                              (SNP: VCEK or VLEK, ASK, ARK from the certificate table)
``collateral``      map       file name -> bytes, in the names the platform documents (TDX:
                              those of a collateral directory; SEV-SNP: ``amd-crl.der``, the
                              AMD CRL); empty when none was collected
``keys``            map       ``{"x25519": 32 bytes, "ed25519": 32 bytes}``: the enclave's
                              public keys bound in report_data
``nonce``           bytes     the verifier's nonce (16 to 64 bytes)
``created``         uint      creation time, seconds since the Unix epoch (UTC), at most
                              253402300799 (9999-12-31T23:59:59Z)
``gpu``             map       optional: ``{"evidence": bytes, "certificates": bytes}``,
                              evidence of :data:`GPU_PLATFORM` (NVIDIA SPDM evidence) and
                              its PEM chain (leaf first)
==================  ========  =============================================================

Decoding is bounded before cbor2 sees the bytes: the input is at most
:data:`MAX_BUNDLE_BYTES`; a scanner walks the CBOR items and admits only definite-length
unsigned integers, byte and text strings, arrays and maps (text keys, no duplicates),
``true``/``false``, at most :data:`MAX_DEPTH` levels deep and :data:`MAX_ITEMS` entries
per container; no tags but the leading self-describe tag, no floats, no trailing bytes.
Every field is then checked for its exact type and size. Everything malformed raises
:class:`~attestation.errors.EvidenceFormatError` naming the field.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import cbor2

from .binding import BoundKeys, check_nonce
from .errors import MAX_EVIDENCE_BYTES, EvidenceFormatError, EvidenceTooLargeError
from .platforms import nvidia, registry

#: The CBOR self-describe tag 55799: the first three bytes of every bundle.
MAGIC = b"\xd9\xd9\xf7"
FORMAT_NAME = "attestfl-evidence-bundle"
BUNDLE_VERSION = 1
#: The platform of a bundle's ``gpu`` part (fixed by version 1 of the format).
GPU_PLATFORM = nvidia.NAME
#: The same limit as for raw evidence.
MAX_BUNDLE_BYTES = MAX_EVIDENCE_BYTES
MAX_DEPTH = 4
MAX_ITEMS = 32
MAX_CERTIFICATES = 8
MAX_COLLATERAL_FILES = 16
MAX_FILE_NAME = 64
#: The last second a ``created`` time may name: 9999-12-31T23:59:59Z (Python's datetime ends there).
MAX_CREATED = 253402300799

_REQUIRED_KEYS = frozenset(
    {"format", "version", "platform", "evidence", "certificates", "collateral", "keys", "nonce", "created"}
)
_OPTIONAL_KEYS = frozenset({"gpu"})


def cpu_platforms() -> tuple[str, ...]:
    """The platforms a bundle's CPU evidence may be: every registered platform that binds report_data."""
    return tuple(p.name for p in registry.platforms() if p.binds_report_data)


def _check_platform(platform: object) -> str:
    if not isinstance(platform, str) or platform not in cpu_platforms():
        raise EvidenceFormatError(f"bundle platform: {platform!r} is not one of {', '.join(cpu_platforms())}")
    return platform


@dataclass(frozen=True)
class GpuPart:
    """NVIDIA GPU evidence carried in a bundle: SPDM request + response and its PEM chain."""

    evidence: bytes
    certificates: bytes


@dataclass(frozen=True)
class EvidenceBundle:
    """One bundle, decoded. See the module docstring for the wire format."""

    platform: str
    evidence: bytes
    keys: BoundKeys
    nonce: bytes
    created: datetime
    certificates: tuple[bytes, ...] = ()
    collateral: Mapping[str, bytes] = field(default_factory=dict)
    gpu: GpuPart | None = None
    version: int = BUNDLE_VERSION

    def __post_init__(self) -> None:
        _check_platform(self.platform)
        if self.version != BUNDLE_VERSION:
            raise EvidenceFormatError(
                f"bundle version: {self.version} is not supported (this verifier reads version {BUNDLE_VERSION})"
            )
        check_nonce(self.nonce)
        if self.created.tzinfo is None:
            raise EvidenceFormatError("bundle created: the time must be timezone-aware")
        if len(self.certificates) > MAX_CERTIFICATES:
            raise EvidenceFormatError(f"bundle certificates: at most {MAX_CERTIFICATES} certificates")
        if len(self.collateral) > MAX_COLLATERAL_FILES:
            raise EvidenceFormatError(f"bundle collateral: at most {MAX_COLLATERAL_FILES} files")

    def to_cbor_object(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": self.version,
            "platform": self.platform,
            "evidence": bytes(self.evidence),
            "certificates": [bytes(c) for c in self.certificates],
            "collateral": {name: bytes(data) for name, data in self.collateral.items()},
            "keys": {"x25519": self.keys.x25519, "ed25519": self.keys.ed25519},
            "nonce": bytes(self.nonce),
            "created": int(self.created.timestamp()),
        }
        if self.gpu is not None:
            value["gpu"] = {"evidence": bytes(self.gpu.evidence), "certificates": bytes(self.gpu.certificates)}
        return value


def encode_bundle(bundle: EvidenceBundle) -> bytes:
    """The wire bytes of ``bundle`` (canonical CBOR behind the self-describe tag)."""
    data = MAGIC + cbor2.dumps(bundle.to_cbor_object(), canonical=True)
    if len(data) > MAX_BUNDLE_BYTES:
        raise EvidenceTooLargeError(f"the bundle would be {len(data)} bytes, over the {MAX_BUNDLE_BYTES}-byte limit")
    return data


def looks_like_bundle(data: bytes) -> bool:
    """True when ``data`` starts with the CBOR self-describe tag (no raw evidence does)."""
    return bytes(data[: len(MAGIC)]) == MAGIC


# --- bounded scan -----------------------------------------------------------------------


class _Scanner:
    """Walks CBOR items, admitting only the subset the bundle format uses."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _fail(self, message: str) -> EvidenceFormatError:
        return EvidenceFormatError(f"bundle: malformed CBOR at offset {self.pos}: {message}")

    def _head(self) -> tuple[int, int]:
        if self.pos >= len(self.data):
            raise self._fail("truncated")
        initial = self.data[self.pos]
        self.pos += 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info
        sizes = {24: 1, 25: 2, 26: 4, 27: 8}
        if info not in sizes:
            raise self._fail("indefinite lengths and reserved encodings are not allowed")
        size = sizes[info]
        if self.pos + size > len(self.data):
            raise self._fail("truncated")
        value = int.from_bytes(self.data[self.pos : self.pos + size], "big")
        self.pos += size
        return major, value

    def item(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self._fail(f"nested deeper than {MAX_DEPTH} levels")
        start = self.pos
        major, value = self._head()
        if major == 0:
            return
        if major in (2, 3):
            if value > len(self.data) - self.pos:
                raise self._fail(f"string of {value} bytes is longer than the input")
            self.pos += value
            return
        if major in (4, 5):
            if value > MAX_ITEMS:
                raise self._fail(f"container of {value} entries (at most {MAX_ITEMS})")
            keys: set[bytes] = set()
            for _ in range(value):
                if major == 5:
                    key_start = self.pos
                    key_major, _ = self._head()
                    self.pos = key_start
                    if key_major != 3:
                        raise self._fail("map keys must be text strings")
                    self.item(depth + 1)
                    key = self.data[key_start : self.pos]
                    if key in keys:
                        raise self._fail("duplicate map key")
                    keys.add(key)
                self.item(depth + 1)
            return
        if major == 7 and value in (20, 21) and self.data[start] in (0xF4, 0xF5):
            return
        kinds = {1: "negative integers", 6: "tags", 7: "floats and simple values other than true/false"}
        raise self._fail(f"{kinds.get(major, 'this item type')} are not allowed")


def _scan(data: bytes) -> None:
    scanner = _Scanner(data)
    scanner.item(0)
    if scanner.pos != len(data):
        raise EvidenceFormatError(f"bundle: {len(data) - scanner.pos} trailing bytes after the CBOR map")


# --- typed fields -----------------------------------------------------------------------


def _bytes(value: Any, name: str, size: int | None = None) -> bytes:
    if not isinstance(value, bytes):
        raise EvidenceFormatError(f"bundle {name}: expected a byte string, got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise EvidenceFormatError(f"bundle {name}: expected {size} bytes, got {len(value)}")
    return value


def _map(value: Any, name: str, required: frozenset[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EvidenceFormatError(f"bundle {name}: expected a map, got {type(value).__name__}")
    missing = sorted(required - set(value))
    if missing:
        raise EvidenceFormatError(f"bundle {name}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(value) - required - optional)
    if unknown:
        raise EvidenceFormatError(f"bundle {name}: unknown field(s) {', '.join(unknown)}")
    return value


def parse_bundle(data: bytes) -> EvidenceBundle:
    """Decode bundle bytes; :class:`EvidenceFormatError` (or ``EvidenceTooLargeError``) when malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EvidenceFormatError(f"bundle: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_BUNDLE_BYTES:
        raise EvidenceTooLargeError(
            f"bundle is {len(data)} bytes; nothing larger than {MAX_BUNDLE_BYTES} bytes is accepted"
        )
    data = bytes(data)
    if not looks_like_bundle(data):
        raise EvidenceFormatError("bundle: does not start with the CBOR self-describe tag d9d9f7")
    body = data[len(MAGIC) :]
    _scan(body)
    try:
        decoded = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, struct.error) as exc:
        raise EvidenceFormatError(f"bundle: not decodable CBOR: {exc}") from exc
    top = _map(decoded, "", _REQUIRED_KEYS, _OPTIONAL_KEYS)
    if top["format"] != FORMAT_NAME:
        raise EvidenceFormatError(f"bundle format: expected {FORMAT_NAME!r}, got {top['format']!r}")
    version = top["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version != BUNDLE_VERSION:
        raise EvidenceFormatError(
            f"bundle version: {version!r} is not supported (this verifier reads version {BUNDLE_VERSION})"
        )
    platform = _check_platform(top["platform"])
    certificates = top["certificates"]
    if not isinstance(certificates, list) or len(certificates) > MAX_CERTIFICATES:
        raise EvidenceFormatError(f"bundle certificates: expected an array of at most {MAX_CERTIFICATES} byte strings")
    collateral = top["collateral"]
    if not isinstance(collateral, dict) or len(collateral) > MAX_COLLATERAL_FILES:
        raise EvidenceFormatError(f"bundle collateral: expected a map of at most {MAX_COLLATERAL_FILES} files")
    for name in collateral:
        if (
            not name
            or len(name) > MAX_FILE_NAME
            or not all(c.isalnum() or c in "-_." for c in name)
            or name.startswith(".")
        ):
            raise EvidenceFormatError(f"bundle collateral: {name!r} is not a plain file name")
    keys = _map(top["keys"], "keys", frozenset({"x25519", "ed25519"}))
    created = top["created"]
    if not isinstance(created, int) or isinstance(created, bool) or not 0 <= created <= MAX_CREATED:
        raise EvidenceFormatError(
            f"bundle created: expected seconds since the epoch up to {MAX_CREATED} (year 9999), got {created!r}"
        )
    gpu = None
    if "gpu" in top:
        gpu_map = _map(top["gpu"], "gpu", frozenset({"evidence", "certificates"}))
        gpu = GpuPart(_bytes(gpu_map["evidence"], "gpu.evidence"), _bytes(gpu_map["certificates"], "gpu.certificates"))
    return EvidenceBundle(
        platform=platform,
        evidence=_bytes(top["evidence"], "evidence"),
        keys=BoundKeys(_bytes(keys["x25519"], "keys.x25519", 32), _bytes(keys["ed25519"], "keys.ed25519", 32)),
        nonce=_bytes(top["nonce"], "nonce"),
        created=datetime.fromtimestamp(created, UTC),
        certificates=tuple(_bytes(c, f"certificates[{i}]") for i, c in enumerate(certificates)),
        collateral={name: _bytes(value, f"collateral[{name!r}]") for name, value in collateral.items()},
        gpu=gpu,
        version=version,
    )

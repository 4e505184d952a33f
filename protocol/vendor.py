"""What a vendor, the aggregator and the sites share for vendor evaluation jobs.

A vendor's model travels as an *artefact*: the safetensors bytes encrypted with libsodium's
secretstream (XChaCha20-Poly1305, 1 MiB chunks, the last one tagged final) under a random
32-byte content key, and that key in a sealed box (X25519 + XSalsa20-Poly1305, anonymous
sender) to one recipient's attested X25519 key. The vendor seals to the aggregator's key
(after appraising the aggregator's evidence); the aggregator opens it inside its TEE, checks
the model's digest against the vendor's signed manifest, re-encrypts it under a fresh content
key and seals that key to each evaluating site's attested session key. Plaintext exists only
in enclave memory.

The manifest (:class:`VendorManifest`) names the model's SHA-256 and a model-definition entry
point ``module:function`` pinned by the SHA-256 of the module's source file; the vendor signs
it with its Ed25519 signing key, bound to the aggregator's attested keys
(:func:`submission_message`). The vendor policy (:class:`VendorPolicy`, ``[task.vendors]``)
says which vendor keys may submit, which sites evaluate, which metrics go to whom and the
smallest site whose metrics are released (small-cell suppression).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from nacl.bindings import crypto_secretstream as ss
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from attestation.errors import EXIT_REFUSED, AttestflError
from protocol.config import parse_duration

#: Plaintext bytes per secretstream chunk.
ARTEFACT_CHUNK = 1 << 20
#: The largest vendor model the protocol describes (the task's vendor policy sets the effective
#: limit, ``max_model_bytes``): models travel in streams of ARTEFACT_CHUNK chunks (VendorUpload,
#: VendorFetch), never in one message.
MAX_VENDOR_MODEL_BYTES = 1 << 36
MAX_VENDOR_CHUNKS = MAX_VENDOR_MODEL_BYTES // ARTEFACT_CHUNK + 1
#: The largest model the one-message ``VendorSubmit`` carries (kept for small models).
MAX_INLINE_MODEL_BYTES = 3 << 20
#: The largest ciphertext chunk of an artefact (a chunk of ARTEFACT_CHUNK plaintext bytes and its tag).
MAX_ARTEFACT_CHUNK_BYTES = ARTEFACT_CHUNK + ss.crypto_secretstream_xchacha20poly1305_ABYTES
#: Metrics a site computes for a vendor model (fedsite/evaluation.py); the policy releases a subset.
VENDOR_METRICS = ("accuracy", "auroc", "loss", "ece")
#: Bootstrap replicates a site sends per metric (the report's confidence intervals).
MAX_REPLICATES = 1000
#: A vendor report request older (or further in the future) than this is refused.
REPORT_REQUEST_SKEW_MS = 5 * 60 * 1000
CONTENT_KEY_BYTES = ss.crypto_secretstream_xchacha20poly1305_KEYBYTES
SUBMISSION_LABEL = b"attestfl vendor submission v1\x00"
REPORT_REQUEST_LABEL = b"attestfl vendor report request v1\x00"
REPORT_RESPONSE_LABEL = b"attestfl vendor report v1\x00"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,199}:[A-Za-z_][A-Za-z0-9_]{0,99}$")


class VendorError(AttestflError, ValueError):
    """A vendor submission, artefact, manifest or policy is unusable; the message says why."""

    exit_code = EXIT_REFUSED


def valid_name(value: object) -> bool:
    """A vendor or model name: 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)."""
    return isinstance(value, str) and _NAME.match(value) is not None


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# --- the manifest -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VendorManifest:
    """What the vendor signs about its model."""

    vendor: str
    model: str
    model_sha256: bytes
    model_bytes: int
    entry_point: str
    entry_sha256: bytes

    def to_bytes(self) -> bytes:
        return _canonical(
            {
                "entry_point": self.entry_point,
                "entry_sha256": self.entry_sha256.hex(),
                "model": self.model,
                "model_bytes": self.model_bytes,
                "model_sha256": self.model_sha256.hex(),
                "vendor": self.vendor,
            }
        )

    @property
    def job_id(self) -> str:
        """The evaluation job's id: the first 16 bytes of the manifest's SHA-256, hex."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[:32]

    @classmethod
    def from_bytes(cls, data: bytes) -> VendorManifest:
        if len(data) > 4096:
            raise VendorError("the manifest is over 4096 bytes")
        try:
            body = json.loads(data)
            manifest = cls(
                vendor=body["vendor"],
                model=body["model"],
                model_sha256=bytes.fromhex(body["model_sha256"]),
                model_bytes=body["model_bytes"],
                entry_point=body["entry_point"],
                entry_sha256=bytes.fromhex(body["entry_sha256"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise VendorError("the manifest is not the JSON object a vendor signs") from None
        manifest.check()
        if manifest.to_bytes() != bytes(data):
            raise VendorError("the manifest is not in canonical form (sorted keys, no spaces)")
        return manifest

    def check(self) -> None:
        problems = []
        if not valid_name(self.vendor):
            problems.append("vendor is not 1-64 letters, digits, '.', '_' or '-'")
        if not valid_name(self.model):
            problems.append("model is not 1-64 letters, digits, '.', '_' or '-'")
        if len(self.model_sha256) != 32 or len(self.entry_sha256) != 32:
            problems.append("model_sha256 and entry_sha256 are 32-byte digests")
        if not isinstance(self.model_bytes, int) or not 0 < self.model_bytes <= MAX_VENDOR_MODEL_BYTES:
            problems.append(f"model_bytes is not 1..{MAX_VENDOR_MODEL_BYTES}")
        if not isinstance(self.entry_point, str) or _ENTRY.match(self.entry_point) is None:
            problems.append("entry_point is not 'module:function'")
        if problems:
            raise VendorError("unusable manifest: " + "; ".join(problems))


def submission_message(
    manifest: bytes, *, aggregator_x25519: bytes, aggregator_ed25519: bytes, sealed_key: bytes, header: bytes
) -> bytes:
    """The bytes a vendor signs when it submits: its manifest, bound to the attested aggregator's
    keys and to this artefact's sealed key and stream header (a submission cannot be moved to
    another aggregator or spliced with another ciphertext)."""
    return SUBMISSION_LABEL + _canonical(
        {
            "aggregator_ed25519": aggregator_ed25519.hex(),
            "aggregator_x25519": aggregator_x25519.hex(),
            "header": header.hex(),
            "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
            "sealed_key_sha256": hashlib.sha256(sealed_key).hexdigest(),
        }
    )


def report_request_message(
    *, vendor: str, job_id: str, vendor_x25519: bytes, issued_unix_ms: int, aggregator_ed25519: bytes
) -> bytes:
    """The bytes a vendor signs to ask for its own report, sealed to ``vendor_x25519``."""
    return REPORT_REQUEST_LABEL + _canonical(
        {
            "aggregator_ed25519": aggregator_ed25519.hex(),
            "issued_unix_ms": issued_unix_ms,
            "job": job_id,
            "vendor": vendor,
            "vendor_x25519": vendor_x25519.hex(),
        }
    )


def report_response_message(*, job_id: str, vendor: str, sealed_report: bytes) -> bytes:
    """The bytes the aggregator's enclave key signs over a vendor's sealed report."""
    return REPORT_RESPONSE_LABEL + _canonical(
        {"job": job_id, "sealed_report_sha256": hashlib.sha256(sealed_report).hexdigest(), "vendor": vendor}
    )


# --- artefacts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedArtefact:
    """A secretstream ciphertext: its header and its chunks (the last one tagged final)."""

    header: bytes
    chunks: tuple[bytes, ...]

    @property
    def digest(self) -> bytes:
        hasher = hashlib.sha256(self.header)
        for chunk in self.chunks:
            hasher.update(chunk)
        return hasher.digest()


def new_content_key() -> bytes:
    return os.urandom(CONTENT_KEY_BYTES)


def encrypt_artefact(data: bytes | bytearray, key: bytes, *, chunk: int = ARTEFACT_CHUNK) -> SealedArtefact:
    """``data`` under ``key`` with secretstream (XChaCha20-Poly1305)."""
    state = ss.crypto_secretstream_xchacha20poly1305_state()
    header = ss.crypto_secretstream_xchacha20poly1305_init_push(state, key)
    view = memoryview(data)
    pieces = [view[i : i + chunk] for i in range(0, len(view), chunk)] or [view[:0]]
    chunks = []
    for index, piece in enumerate(pieces):
        final = index == len(pieces) - 1
        tag = (
            ss.crypto_secretstream_xchacha20poly1305_TAG_FINAL
            if final
            else ss.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
        )
        chunks.append(ss.crypto_secretstream_xchacha20poly1305_push(state, bytes(piece), None, tag))
    return SealedArtefact(header, tuple(chunks))


def chunk_count(model_bytes: int, chunk: int = ARTEFACT_CHUNK) -> int:
    """How many secretstream chunks carry ``model_bytes`` plaintext bytes."""
    return max(1, -(-model_bytes // chunk))


class ArtefactSealer:
    """Encrypt an artefact chunk by chunk (a model of any size never needs to be whole in memory):
    ``header`` first, then ``push(piece, final=...)`` for each plaintext piece in order."""

    def __init__(self, key: bytes) -> None:
        self._state = ss.crypto_secretstream_xchacha20poly1305_state()
        self.header = ss.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        self.finished = False

    def push(self, piece: bytes, *, final: bool) -> bytes:
        if self.finished:
            raise VendorError("the artefact was already finished")
        self.finished = final
        tag = (
            ss.crypto_secretstream_xchacha20poly1305_TAG_FINAL
            if final
            else ss.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
        )
        return ss.crypto_secretstream_xchacha20poly1305_push(self._state, bytes(piece), None, tag)


class ArtefactOpener:
    """Authenticate and decrypt an artefact chunk by chunk: each chunk in order (secretstream's
    nonce advances per chunk, so a reordered, repeated or foreign chunk does not authenticate),
    the last one tagged final and nothing after it (:meth:`finish` refuses a truncated stream),
    at most ``max_bytes`` plaintext bytes in all."""

    def __init__(self, header: bytes, key: bytes, *, max_bytes: int) -> None:
        if len(header) != ss.crypto_secretstream_xchacha20poly1305_HEADERBYTES:
            raise VendorError("the artefact's stream header is not 24 bytes")
        self._state = ss.crypto_secretstream_xchacha20poly1305_state()
        try:
            ss.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key)
        except (CryptoError, ValueError):
            raise VendorError("the artefact's stream header does not open under the content key") from None
        self.max_bytes = max_bytes
        self.index = 0
        self.received = 0
        self.final = False

    def open(self, chunk: bytes, index: int | None = None) -> bytes:
        """The plaintext of the next chunk (``index``, when the transport numbers chunks, must be the next one)."""
        if self.final:
            raise VendorError("the artefact has chunks after its final one")
        if index is not None and index != self.index:
            raise VendorError(f"artefact chunk {index} arrived where chunk {self.index} belongs (reordered or lost)")
        if len(chunk) > MAX_ARTEFACT_CHUNK_BYTES:
            raise VendorError(f"artefact chunk {self.index} is over {MAX_ARTEFACT_CHUNK_BYTES} bytes")
        try:
            piece, tag = ss.crypto_secretstream_xchacha20poly1305_pull(self._state, bytes(chunk), None)
        except (CryptoError, ValueError):
            raise VendorError(
                f"artefact chunk {self.index} is not authentic (tampered, reordered or another key)"
            ) from None
        self.received += len(piece)
        if self.received > self.max_bytes:
            raise VendorError(f"the artefact is over {self.max_bytes} bytes")
        self.final = tag == ss.crypto_secretstream_xchacha20poly1305_TAG_FINAL
        self.index += 1
        return bytes(piece)

    def finish(self) -> None:
        """Refuse a stream that ended before its final chunk."""
        if not self.final:
            raise VendorError("the artefact is truncated (the stream ended before its final chunk)")


def decrypt_artefact(artefact: SealedArtefact, key: bytes, *, max_bytes: int = MAX_INLINE_MODEL_BYTES) -> bytearray:
    """The plaintext (in memory only): every chunk authentic, in order, the last one final and
    no chunk after it; at most ``max_bytes``."""
    if not 0 < len(artefact.chunks) <= MAX_VENDOR_CHUNKS:
        raise VendorError(f"the artefact has {len(artefact.chunks)} chunks (1..{MAX_VENDOR_CHUNKS})")
    opener = ArtefactOpener(artefact.header, key, max_bytes=max_bytes)
    out = bytearray()
    for chunk in artefact.chunks:
        if opener.final:
            raise VendorError("the artefact is truncated or has chunks after its final one")
        out += opener.open(chunk)
    if not opener.final:
        raise VendorError("the artefact is truncated or has chunks after its final one")
    return out


def seal_key(key: bytes, recipient_x25519: bytes) -> bytes:
    """A content key in a sealed box to ``recipient_x25519`` (anonymous sender)."""
    try:
        return bytes(SealedBox(PublicKey(bytes(recipient_x25519))).encrypt(bytes(key)))
    except (CryptoError, ValueError, TypeError):
        raise VendorError("the recipient's X25519 key is unusable") from None


def open_sealed_key(sealed: bytes, private: PrivateKey) -> bytes:
    """Open a sealed box with a nacl private key (the vendor's own report key)."""
    try:
        return bytes(SealedBox(private).decrypt(bytes(sealed)))
    except (CryptoError, ValueError, TypeError):
        raise VendorError("the sealed box does not open under this key") from None


def entry_point_digest(entry_point: str) -> bytes:
    """The SHA-256 of the source file of ``module`` in ``module:function`` (as installed here)."""
    if _ENTRY.match(entry_point) is None:
        raise VendorError(f"entry point {entry_point[:80]!r} is not 'module:function'")
    module = entry_point.split(":", 1)[0]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None or not os.path.isfile(spec.origin):
        raise VendorError(f"the model-definition module {module!r} is not installed here")
    with open(spec.origin, "rb") as handle:
        return hashlib.sha256(handle.read()).digest()


# --- the policy ---------------------------------------------------------------------------------


def _read_vendor_keys(raw_keys: Any, problems: list[str]) -> dict[str, bytes]:
    """``[task.vendors] keys``: vendor name -> Ed25519 public key; adds to ``problems``."""
    keys: dict[str, bytes] = {}
    if not isinstance(raw_keys, dict) or not raw_keys:
        problems.append("keys: expected a table of vendor name = Ed25519 public key (64 hex digits)")
        return keys
    for name, value in raw_keys.items():
        try:
            key = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            key = b""
        if not valid_name(name) or len(key) != 32:
            problems.append(f"keys.{str(name)[:64]}: expected a vendor name = 64 hex digits")
        else:
            keys[name] = key
    return keys


def _read_vendor_limits(table: dict[str, Any], problems: list[str]) -> tuple[dict[str, int], dict[str, float | None]]:
    """The size limits (bytes) and durations (seconds) of ``[task.vendors]``; adds to ``problems``."""
    sizes: dict[str, int] = {}
    for size_name, size_default in (
        ("max_model_bytes", 1 << 30),
        ("memory_per_vendor", 2 << 30),
        ("memory_total", 4 << 30),
    ):
        size = table.get(size_name, size_default)
        if type(size) is not int or not 1 <= size <= MAX_VENDOR_MODEL_BYTES:
            problems.append(f"{size_name}: expected a number of bytes from 1 to {MAX_VENDOR_MODEL_BYTES}")
            size = size_default
        sizes[size_name] = size
    durations: dict[str, float | None] = {}
    for name, fallback in (("upload_timeout", 600.0), ("report_deadline", None)):
        raw = table.get(name)
        if raw is None:
            durations[name] = fallback
            continue
        try:
            durations[name] = parse_duration(raw, "task.vendors", name, error=VendorError)
        except VendorError as exc:
            problems.append(str(exc).removeprefix("[task.vendors] "))
            durations[name] = fallback
    return sizes, durations


@dataclass(frozen=True)
class VendorPolicy:
    """``[task.vendors]``::

    [task.vendors]
    sites = ["site-a", "site-b", "site-c"]   # which admitted sites evaluate vendor models
    min_examples = 20                         # a site's metrics are released only from this many examples
    network_metrics = ["accuracy", "auroc", "loss", "ece"]   # to the hospital network's report
    vendor_metrics = ["accuracy", "auroc"]    # to each vendor (its own row only)
    vendor_per_site = false                   # vendors see pooled metrics only (true: per site too)
    bootstrap = 200                           # replicates per metric for the confidence intervals
    report_dir = "vendor-reports"             # the network's report (JSON + HTML)
    max_model_bytes = 1073741824              # the largest vendor model accepted (streamed in 1 MiB chunks)
    memory_per_vendor = 2147483648            # bytes one vendor's uploads and stored models may hold in memory
    memory_total = 4294967296                 # bytes all vendors' uploads and stored models may hold in memory
    upload_timeout = "10m"                    # an upload must finish within this
    report_deadline = "30m"                   # after a job's submission: report from the sites that reported
    [task.vendors.keys]                       # vendors allowed to submit: name = Ed25519 public key (hex)
    acme = "9f0c..."
    """

    keys: dict[str, bytes]
    sites: tuple[str, ...]
    min_examples: int = 20
    network_metrics: tuple[str, ...] = VENDOR_METRICS
    vendor_metrics: tuple[str, ...] = ("accuracy", "auroc")
    vendor_per_site: bool = False
    bootstrap: int = 200
    report_dir: str = "vendor-reports"
    max_model_bytes: int = 1 << 30
    memory_per_vendor: int = 2 << 30
    memory_total: int = 4 << 30
    upload_timeout: float = 600.0
    report_deadline: float | None = None

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> VendorPolicy:
        allowed = {
            "keys",
            "sites",
            "min_examples",
            "network_metrics",
            "vendor_metrics",
            "vendor_per_site",
            "bootstrap",
            "report_dir",
            "max_model_bytes",
            "memory_per_vendor",
            "memory_total",
            "upload_timeout",
            "report_deadline",
        }
        problems = []
        unknown = sorted(set(table) - allowed)
        if unknown:
            problems.append(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        keys = _read_vendor_keys(table.get("keys", {}), problems)
        sites = table.get("sites", [])
        if not isinstance(sites, list) or not sites or not all(isinstance(s, str) and s for s in sites):
            problems.append("sites: expected a non-empty list of site ids")
            sites = []
        min_examples = table.get("min_examples", 20)
        if type(min_examples) is not int or not 1 <= min_examples <= 10**9:
            problems.append("min_examples: expected an integer >= 1")
            min_examples = 20
        metric_lists = {}
        for name, default in (("network_metrics", VENDOR_METRICS), ("vendor_metrics", ("accuracy", "auroc"))):
            value = table.get(name, list(default))
            if not isinstance(value, list) or not all(v in VENDOR_METRICS for v in value):
                problems.append(f"{name}: expected a list drawn from {', '.join(VENDOR_METRICS)}")
                value = list(default)
            metric_lists[name] = tuple(value)
        per_site = table.get("vendor_per_site", False)
        if not isinstance(per_site, bool):
            problems.append("vendor_per_site: expected true or false")
            per_site = False
        bootstrap = table.get("bootstrap", 200)
        if type(bootstrap) is not int or not 0 <= bootstrap <= MAX_REPLICATES:
            problems.append(f"bootstrap: expected an integer from 0 to {MAX_REPLICATES}")
            bootstrap = 200
        report_dir = table.get("report_dir", "vendor-reports")
        if not isinstance(report_dir, str) or not report_dir:
            problems.append("report_dir: expected a path")
            report_dir = "vendor-reports"
        sizes, durations = _read_vendor_limits(table, problems)
        if problems:
            raise VendorError("[task.vendors] " + "; ".join(problems))
        return cls(
            keys=keys,
            sites=tuple(sites),
            min_examples=min_examples,
            network_metrics=metric_lists["network_metrics"],
            vendor_metrics=metric_lists["vendor_metrics"],
            vendor_per_site=per_site,
            bootstrap=bootstrap,
            report_dir=report_dir,
            max_model_bytes=sizes["max_model_bytes"],
            memory_per_vendor=sizes["memory_per_vendor"],
            memory_total=sizes["memory_total"],
            upload_timeout=durations["upload_timeout"] or 600.0,
            report_deadline=durations["report_deadline"],
        )

    def describe(self) -> dict[str, Any]:
        """The policy as the audit log's task record carries it."""
        return {
            "keys": {name: key.hex() for name, key in sorted(self.keys.items())},
            "sites": list(self.sites),
            "min_examples": self.min_examples,
            "network_metrics": list(self.network_metrics),
            "vendor_metrics": list(self.vendor_metrics),
            "vendor_per_site": self.vendor_per_site,
            "bootstrap": self.bootstrap,
            "max_model_bytes": self.max_model_bytes,
            "report_deadline": self.report_deadline,
        }


def percentile_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The percentile bootstrap interval of ``values`` (None without finite values)."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return None
    tail = (1.0 - level) / 2.0

    def at(q: float) -> float:
        position = q * (len(finite) - 1)
        low = math.floor(position)
        high = min(low + 1, len(finite) - 1)
        return finite[low] + (finite[high] - finite[low]) * (position - low)

    return at(tail), at(1.0 - tail)


__all__ = [
    "ARTEFACT_CHUNK",
    "MAX_ARTEFACT_CHUNK_BYTES",
    "MAX_INLINE_MODEL_BYTES",
    "MAX_REPLICATES",
    "MAX_VENDOR_MODEL_BYTES",
    "VENDOR_METRICS",
    "ArtefactOpener",
    "ArtefactSealer",
    "SealedArtefact",
    "VendorError",
    "VendorManifest",
    "VendorPolicy",
    "chunk_count",
    "decrypt_artefact",
    "encrypt_artefact",
    "entry_point_digest",
    "new_content_key",
    "open_sealed_key",
    "percentile_interval",
    "report_request_message",
    "report_response_message",
    "seal_key",
    "submission_message",
    "valid_name",
]

"""The formulas both ends of the attestfl protocol compute: one definition each.

A site and the aggregator must agree, byte for byte, on what evidence binds, what the
identity key signs, how a call proves possession of the session keys, what a stream is
sealed for and what a receipt says. They live here, beside the limits both ends enforce, so
that neither party imports the other's code.

Admission
    ``admission_nonce(site_id, challenge)``: the nonce of the site's evidence bundle;
    ``identity_transcript(...)``: what the site's long-lived identity key signs (the
    challenge, the site id, its evidence digest, its session keys, and the aggregator's keys
    and evidence digest): a signature made for one handshake is useless in any other.

Authenticated calls
    Every call after admission carries metadata ``attestfl-session`` (the session id, hex)
    and ``attestfl-call`` (a counter the site increments per call). The request and the
    response are :func:`seal_message` ciphertexts (AES-256-GCM) under the session's message
    keys, with the method, the session and the counter as associated data and the counter as
    nonce: a copied credential or session id is useless without the keys, a replayed call is
    refused by its counter, and a response (task, receipt, metrics acknowledgement) cannot be
    forged, moved to another call or replayed.
"""

from __future__ import annotations

import hashlib
import json
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation.errors import MAX_EVIDENCE_BYTES
from protocol.streams import MAX_CHUNK_BYTES, SessionKeys, StreamError

ADMISSION_NONCE_LABEL = b"attestfl/v1/site-admission\x00"
APP_ATTEST_LABEL = b"attestfl/v1/app-attest-client-data\x00"
IDENTITY_LABEL = b"attestfl/v1/site-identity-transcript\x00"
RECEIPT_LABEL = b"attestfl/v1/update-receipt\x00"
MESSAGE_LABEL = b"attestfl/v1/sealed-message\x00"

#: Limits both ends enforce.
MAX_SITE_ID = 128
MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + 64 * 1024
MAX_SEALED_MESSAGE_BYTES = 64 * 1024
MAX_METRICS = 64
MAX_METRIC_NAME = 64
MAX_IDENTITY_CERTIFICATE_BYTES = 16 * 1024

#: Metadata of authenticated calls.
SESSION_HEADER = "attestfl-session"
CALL_HEADER = "attestfl-call"
#: The methods whose requests and responses are sealed (their names are in the associated data).
SEALED_METHODS = (
    "GetTask",
    "DownloadModel",
    "UploadUpdate",
    "ReportMetrics",
    "VendorJobs",
    "VendorReportMetrics",
    "VendorFetch",
    "PublishCard",
    "ListCards",
)


class ProtocolError(StreamError):
    """A protocol message failed a check (authentication, shape or binding); no part of it is used."""


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def valid_site_id(site_id: str) -> bool:
    return (
        isinstance(site_id, str)
        and 0 < len(site_id) <= MAX_SITE_ID
        and all(ch.isascii() and (ch.isalnum() or ch in "-_.") for ch in site_id)
    )


def admission_nonce(site_id: str, challenge: bytes) -> bytes:
    """The nonce a site's evidence bundle must carry: SHA-256(label, site id, challenge)."""
    return hashlib.sha256(ADMISSION_NONCE_LABEL + _length_prefixed(site_id.encode(), challenge)).digest()


def app_attest_client_data(site_id: str, challenge: bytes, x25519: bytes, ed25519: bytes) -> bytes:
    """The client data (hashed into App Attest's nonce) binding site id, challenge and keys."""
    return hashlib.sha256(APP_ATTEST_LABEL + _length_prefixed(site_id.encode(), challenge, x25519, ed25519)).digest()


def identity_transcript(
    *,
    site_id: str,
    challenge: bytes,
    evidence_sha256: bytes,
    site_x25519: bytes,
    site_ed25519: bytes,
    aggregator_x25519: bytes,
    aggregator_ed25519: bytes,
    aggregator_evidence_sha256: bytes,
) -> bytes:
    """The bytes a site's identity key signs at admission (length-prefixed, labelled)."""
    return IDENTITY_LABEL + _length_prefixed(
        site_id.encode(),
        bytes(challenge),
        bytes(evidence_sha256),
        bytes(site_x25519),
        bytes(site_ed25519),
        bytes(aggregator_x25519),
        bytes(aggregator_ed25519),
        bytes(aggregator_evidence_sha256),
    )


# --- streams and receipts -----------------------------------------------------------------------


def upload_context(round_number: int, attempt: int, site_id: str, call: int) -> bytes:
    """What an update stream is sealed for: round, attempt, site and the call it travels in."""
    return f"update;round={round_number};attempt={attempt};site={site_id};call={call}".encode()


def download_context(round_number: int, site_id: str, call: int) -> bytes:
    """What a model stream is sealed for."""
    return f"model;round={round_number};site={site_id};call={call}".encode()


def parse_upload_context(context: bytes) -> tuple[int, int, str, int]:
    """(round, attempt, site, call) of an update stream's context; :class:`ProtocolError` if malformed."""
    try:
        kind, *parts = context.decode("ascii").split(";")
        fields = dict(part.split("=", 1) for part in parts)
        if kind != "update" or set(fields) != {"round", "attempt", "site", "call"}:
            raise ValueError("fields")
        numbers = [int(fields[name]) for name in ("round", "attempt", "call")]
        if any(n < 0 or n >= 2**63 for n in numbers) or not valid_site_id(fields["site"]):
            raise ValueError("range")
        return numbers[0], numbers[1], fields["site"], numbers[2]
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("the stream context is not update;round=<n>;attempt=<n>;site=<id>;call=<n>") from None


def receipt_message(
    *,
    round_number: int,
    attempt: int,
    site_id: str,
    update_sha256: bytes,
    weight: float,
    accepted_unix_ms: int,
    session_id: bytes,
    call: int,
) -> bytes:
    """The bytes the enclave signs for an update receipt (a site and an auditor re-check them):
    the round and attempt, the site, the update's digest and weight, and the call it answers."""
    body = {
        "accepted_unix_ms": accepted_unix_ms,
        "attempt": attempt,
        "call": call,
        "round": round_number,
        "session": bytes(session_id).hex(),
        "site": site_id,
        "update_sha256": bytes(update_sha256).hex(),
        "weight": weight,
    }
    return RECEIPT_LABEL + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# --- sealed messages ----------------------------------------------------------------------------


def _message_aad(session_id: bytes, method: str, call: int, response: bool) -> bytes:
    return MESSAGE_LABEL + _length_prefixed(
        bytes(session_id), method.encode(), struct.pack(">QB", call, 1 if response else 0)
    )


def _message_nonce(call: int) -> bytes:
    return struct.pack(">IQ", 0, call)


def seal_message(keys: SessionKeys, *, method: str, call: int, response: bool, plaintext: bytes) -> bytes:
    """A request (site -> aggregator key) or response (aggregator -> site key) of call ``call``.

    Each (key, counter) pair seals at most one message: the site never reuses a counter and
    the aggregator answers a counter at most once (it refuses replays before answering)."""
    if method not in SEALED_METHODS or not 0 <= call < 2**64:
        raise ProtocolError(f"cannot seal a {method} message for call {call}")
    key = keys.aggregator_to_site_messages if response else keys.site_to_aggregator_messages
    return AESGCM(key).encrypt(
        _message_nonce(call), bytes(plaintext), _message_aad(keys.session_id, method, call, response)
    )


def open_message(keys: SessionKeys, *, method: str, call: int, response: bool, ciphertext: bytes) -> bytes:
    """The plaintext of :func:`seal_message`; :class:`ProtocolError` unless it authenticates."""
    if len(ciphertext) > MAX_SEALED_MESSAGE_BYTES:
        raise ProtocolError(f"a sealed {method} message is over {MAX_SEALED_MESSAGE_BYTES} bytes")
    key = keys.aggregator_to_site_messages if response else keys.site_to_aggregator_messages
    try:
        return AESGCM(key).decrypt(
            _message_nonce(call), bytes(ciphertext), _message_aad(keys.session_id, method, call, response)
        )
    except (InvalidTag, ValueError):
        what = "response" if response else "request"
        raise ProtocolError(
            f"the {method} {what} failed authentication: not sealed under this session's keys for call {call} "
            "(forged, replayed or moved from another call)"
        ) from None


#: What an aggregator that stopped on a fault (its audit log could not be written) answers every
#: call with (UNAVAILABLE): a site stops there instead of resuming a transfer into it.
STOPPED_ON_FAULT = "the aggregator stopped on a fault; retry after it restarts"

__all__ = [
    "CALL_HEADER",
    "MAX_EVIDENCE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_METRICS",
    "MAX_METRIC_NAME",
    "MAX_SITE_ID",
    "SESSION_HEADER",
    "STOPPED_ON_FAULT",
    "ProtocolError",
    "admission_nonce",
    "app_attest_client_data",
    "download_context",
    "identity_transcript",
    "open_message",
    "parse_upload_context",
    "receipt_message",
    "seal_message",
    "upload_context",
    "valid_site_id",
]

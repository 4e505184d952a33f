"""The binding of evidence to the enclave's keys and to the verifier's nonce.

Inside the TEE the enclave creates an X25519 key (encryption to the enclave) and an
Ed25519 key (its signatures on results and log heads). Its hardware evidence carries

    report_data = SHA-512( REPORT_DATA_LABEL
                           || x25519_public (32 bytes)
                           || ed25519_public (32 bytes)
                           || len(nonce) (1 byte) || nonce )

so the evidence says "this TEE holds these two keys, and produced this for that nonce".
GPU evidence collected in the same session is requested with the SPDM nonce

    gpu_nonce = SHA-256( GPU_NONCE_LABEL || report_data )        (32 bytes)

so the GPU's signed report names the same keys and nonce: it cannot be replayed, nor
moved next to another VM's CPU evidence. Both formulas are fixed by version 1 of the
bundle format (:mod:`attestation.bundle_abi`).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from .errors import EvidenceFormatError
from .findings import Reason

REPORT_DATA_LABEL = b"attestfl/v1/enclave-report-data\x00"
GPU_NONCE_LABEL = b"attestfl/v1/gpu-nonce\x00"
X25519_PUBLIC_SIZE = 32
ED25519_PUBLIC_SIZE = 32
REPORT_DATA_SIZE = 64
GPU_NONCE_SIZE = 32
MIN_NONCE_SIZE = 16
MAX_NONCE_SIZE = 64


@dataclass(frozen=True)
class BoundKeys:
    """The enclave's public keys as the evidence binds them (raw encodings)."""

    x25519: bytes
    ed25519: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.x25519, bytes) or len(self.x25519) != X25519_PUBLIC_SIZE:
            raise EvidenceFormatError(f"X25519 public key must be {X25519_PUBLIC_SIZE} bytes")
        if not isinstance(self.ed25519, bytes) or len(self.ed25519) != ED25519_PUBLIC_SIZE:
            raise EvidenceFormatError(f"Ed25519 public key must be {ED25519_PUBLIC_SIZE} bytes")


def check_nonce(nonce: bytes) -> bytes:
    """The nonce as bytes, or :class:`EvidenceFormatError` when its length is out of range."""
    if not isinstance(nonce, (bytes, bytearray)) or not MIN_NONCE_SIZE <= len(nonce) <= MAX_NONCE_SIZE:
        got = len(nonce) if isinstance(nonce, (bytes, bytearray)) else type(nonce).__name__
        raise EvidenceFormatError(f"the verifier nonce must be {MIN_NONCE_SIZE} to {MAX_NONCE_SIZE} bytes, got {got}")
    return bytes(nonce)


def report_data_for(keys: BoundKeys, nonce: bytes) -> bytes:
    """The 64-byte report_data binding ``keys`` and ``nonce`` (formula in the module docstring)."""
    nonce = check_nonce(nonce)
    return hashlib.sha512(REPORT_DATA_LABEL + keys.x25519 + keys.ed25519 + bytes([len(nonce)]) + nonce).digest()


def gpu_nonce_for(report_data: bytes) -> bytes:
    """The 32-byte SPDM request nonce for GPU evidence bound to the CPU evidence's ``report_data``."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise EvidenceFormatError(f"report_data must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
    return hashlib.sha256(GPU_NONCE_LABEL + bytes(report_data)).digest()


def binding_reasons(evidence_report_data: bytes, keys: BoundKeys, nonce: bytes) -> list[Reason]:
    """[binding.report_data]: the evidence's report_data is the binding of ``keys`` and ``nonce``."""
    expected = report_data_for(keys, nonce)
    if hmac.compare_digest(evidence_report_data, expected):
        return []
    return [
        Reason(
            "binding.report_data",
            "the evidence's report_data is not SHA-512 over the binding label, the bundle's X25519 and Ed25519 "
            "public keys and the nonce: the evidence was made for other keys or another nonce",
        )
    ]


def gpu_binding_reasons(gpu_request_nonce: bytes, cpu_report_data: bytes) -> list[Reason]:
    """[binding.gpu_nonce]: the GPU evidence was requested with the nonce derived from the CPU binding."""
    if hmac.compare_digest(gpu_request_nonce, gpu_nonce_for(cpu_report_data)):
        return []
    return [
        Reason(
            "binding.gpu_nonce",
            "the GPU evidence's request nonce is not SHA-256(GPU binding label || report_data): it was not "
            "collected for this CPU evidence, these keys and this nonce",
        )
    ]

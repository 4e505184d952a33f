"""Authenticity of NVIDIA GPU evidence: signature, certificate chain, FWID, nonce.

Checks, each reported as a :class:`~attestation.findings.Reason` when it fails (all of
them, never only the first):

``gpu.signature``
    ECDSA P-384 / SHA-384 over request || response-without-signature (raw r || s), with
    the public key of the attestation leaf: the *first* certificate of the chain NVML
    returns (``GH100 A01 GSP FMC LF`` on Hopper); the chain runs leaf first, root last.
``gpu.chain.signature`` / ``gpu.chain.ca`` / ``gpu.chain.validity``
    every certificate signed by the next, issuers are CAs, every validity window
    contains the verification time (:func:`attestation.verify.chain.verify_chain`).
``gpu.chain.root``
    the chain ends at a root trusted by :func:`attestation.trust.trust_root`: the NVIDIA
    Device Identity CA shipped in the package (exact DER match), or a root marked simulated
    whose SHA-256 fingerprint the policy lists in ``trusted_simulated_roots`` (with a warning).
    A chain without the root but ending at a certificate issued by the shipped root's name is
    completed with the shipped root.
``gpu.chain.missing``
    no certificate chain was given.
``gpu.fwid``
    the FWID NVIDIA certifies in the leaf (extension 2.23.133.5.4.1, a DICE
    CompositeDeviceID, see :func:`attestation.platforms.nvidia.abi.parse_fwid_extension`) equals the
    FWID field of the signed opaque data; both must be present.
``gpu.nonce``
    the request nonce equals the verifier's expected nonce, when one is given. Without
    one, freshness is not checked and a warning says so.

Bytes after the response's signature (outside the signed region, see
:mod:`attestation.platforms.nvidia.abi`) are ignored with a warning.

Which measurements, versions and settings are acceptable is policy, in
:mod:`attestation.platforms.nvidia.validate`.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec

from ...abi.x509 import Certificate
from ...errors import CertificateFormatError, EvidenceFormatError, PolicyError
from ...findings import Reason
from ...trust import trust_root
from ...verify.chain import ChainLink, load_public_key, raw_ecdsa_is_valid, verify_chain
from .abi import (
    FWID_EXTENSION_OID,
    NONCE_SIZE,
    SIGNATURE_SIZE,
    CertificateFwid,
    GpuEvidence,
    parse_fwid_extension,
)
from .roots import NVIDIA_ROOTS, nvidia_device_identity_root

#: No NVIDIA attestation chain is longer (Hopper: 5 certificates, root included).
MAX_CHAIN_LENGTH = 8

#: NVIDIA chip names in certificate subjects ("GH100 A01 GSP FMC LF", "NVIDIA GH100 Identity").
_CHIP = re.compile(r"\b(G[A-Z]\d{3})\b")
#: Chip name prefix -> GPU architecture.
_ARCHITECTURES = {"GH": "Hopper", "GB": "Blackwell"}
UNKNOWN_ARCH = "unknown"


@dataclass(frozen=True)
class GpuVerification:
    """What the authenticity checks established, and every check that failed."""

    evidence: GpuEvidence
    chain: tuple[Certificate, ...]
    arch: str
    #: The chip the chain names ("GH100"), or None.
    chip: str | None
    certificate_fwid: CertificateFwid | None
    #: The chain ends at a simulated root (trusted or not).
    simulated: bool
    root_fingerprint: str | None
    reasons: tuple[Reason, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def authentic(self) -> bool:
        return not self.reasons


def chip_of(chain: Sequence[Certificate]) -> str | None:
    """The NVIDIA chip the chain's device certificates name ("GH100"), leaf first."""
    for cert in chain:
        match = _CHIP.search(cert.subject)
        if match:
            return match.group(1)
    return None


def architecture_of(chain: Sequence[Certificate]) -> str:
    """The GPU architecture named by the chain's device certificates ("GH100 ..." -> Hopper).

    Taken from the certificate subjects, which the chain check authenticates; the SPDM
    evidence itself names no architecture.
    """
    chip = chip_of(chain)
    return _ARCHITECTURES.get(chip[:2], UNKNOWN_ARCH) if chip else UNKNOWN_ARCH


def _complete_chain(chain: Sequence[Certificate]) -> tuple[Certificate, ...]:
    """Append the shipped NVIDIA root when the chain stops just below it."""
    root = nvidia_device_identity_root()
    last = chain[-1]
    if last.issuer_der != last.subject_der and last.issuer_der == root.subject_der:
        return tuple(chain) + (root,)
    return tuple(chain)


def _role(index: int, length: int) -> str:
    if index == 0:
        return "GPU attestation leaf"
    if index == length - 1:
        return "GPU root"
    return f"GPU intermediate {index}"


def _signature_reasons(evidence: GpuEvidence, leaf: Certificate) -> list[Reason]:
    try:
        key = load_public_key(leaf)
    except CertificateFormatError as exc:
        return [Reason("gpu.signature", f"attestation leaf key is unusable: {exc}")]
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        return [Reason("gpu.signature", f"attestation leaf {leaf.subject!r} does not hold an ECDSA P-384 key")]
    signature = evidence.signature
    if len(signature) != SIGNATURE_SIZE:  # guaranteed by the parser; kept as a guard
        return [Reason("gpu.signature", f"signature is {len(signature)} bytes, not {SIGNATURE_SIZE}")]
    r = int.from_bytes(signature[:48], "big")
    s = int.from_bytes(signature[48:], "big")
    if not raw_ecdsa_is_valid(key, r, s, "sha384", evidence.signed_bytes):
        return [
            Reason(
                "gpu.signature",
                f"the evidence is not signed by the attestation leaf {leaf.subject!r} "
                "(ECDSA P-384/SHA-384 over request and response)",
            )
        ]
    return []


def signature_is_valid(evidence: GpuEvidence, leaf: Certificate) -> bool:
    """Only the ECDSA check of the evidence against ``leaf`` (no chain, no FWID, no nonce)."""
    return not _signature_reasons(evidence, leaf)


def _fwid_reasons(evidence: GpuEvidence, leaf: Certificate) -> tuple[list[Reason], CertificateFwid | None]:
    reasons: list[Reason] = []
    report_fwid = evidence.response.opaque.fwid
    extension = leaf.extension_value(FWID_EXTENSION_OID)
    certified: CertificateFwid | None = None
    if extension is None:
        reasons.append(
            Reason("gpu.fwid", f"attestation leaf {leaf.subject!r} has no FWID extension ({FWID_EXTENSION_OID})")
        )
    else:
        try:
            certified = parse_fwid_extension(extension)
        except EvidenceFormatError as exc:
            reasons.append(Reason("gpu.fwid", f"attestation leaf FWID extension is malformed: {exc}"))
    if report_fwid is None:
        reasons.append(Reason("gpu.fwid", "the evidence's opaque data carries no FWID field (type 20)"))
    if certified is not None and report_fwid is not None and not hmac.compare_digest(certified.digest, report_fwid):
        reasons.append(
            Reason(
                "gpu.fwid",
                f"FWID in the evidence ({report_fwid.hex()}) differs from "
                f"the FWID certified in the attestation leaf ({certified.digest.hex()})",
            )
        )
    return reasons, certified


def check_expected_nonce(expected_nonce: bytes | None) -> None:
    if expected_nonce is not None and (
        not isinstance(expected_nonce, (bytes, bytearray)) or len(expected_nonce) != NONCE_SIZE
    ):
        size = len(expected_nonce) if isinstance(expected_nonce, (bytes, bytearray)) else type(expected_nonce).__name__
        raise PolicyError(f"expected GPU nonce must be {NONCE_SIZE} bytes, got {size}")


@dataclass(frozen=True)
class _ChainCheck:
    """What the certificate chain says of the evidence: its signature, the chain to a trusted
    root, and the FWID the leaf certifies."""

    reasons: list[Reason]
    warnings: list[str]
    chain: tuple[Certificate, ...] = ()
    simulated: bool = False
    root_fingerprint: str | None = None
    certified: CertificateFwid | None = None


def _check_chain(
    evidence: GpuEvidence, chain: Sequence[Certificate], *, at: datetime, trusted_simulated_roots: frozenset[str]
) -> _ChainCheck:
    if not chain:
        return _ChainCheck(
            [
                Reason("gpu.chain.missing", "no GPU attestation certificate chain was given"),
                Reason(
                    "gpu.signature", "the evidence signature cannot be checked without the attestation leaf certificate"
                ),
                Reason("gpu.fwid", "the FWID cannot be checked without the attestation leaf certificate"),
            ],
            [],
        )
    reasons: list[Reason] = []
    warnings: list[str] = []
    full_chain = _complete_chain(chain)
    leaf, root = full_chain[0], full_chain[-1]
    reasons.extend(_signature_reasons(evidence, leaf))
    links = [ChainLink(cert, _role(i, len(full_chain))) for i, cert in enumerate(full_chain)]
    if len(full_chain) == 1:
        reasons.append(
            Reason("gpu.chain.root", "the chain is a single certificate; the attestation leaf must chain to a root")
        )
    reasons.extend(verify_chain(links, at=at, check_prefix="gpu.chain"))
    trust = trust_root(root, trusted_simulated_roots, vendor=NVIDIA_ROOTS, what="the GPU certificate chain")
    if trust.reason is not None:
        reasons.append(Reason("gpu.chain.root", trust.reason))
    if trust.warning is not None:
        warnings.append(trust.warning)
    if root.issuer_der != root.subject_der:
        reasons.append(Reason("gpu.chain.root", f"the last certificate {root.subject!r} is not a self-signed root"))
    fwid_reasons, certified = _fwid_reasons(evidence, leaf)
    reasons.extend(fwid_reasons)
    return _ChainCheck(reasons, warnings, full_chain, trust.simulated, root.fingerprint_sha256, certified)


def verify_gpu_evidence(
    evidence: GpuEvidence,
    chain: Sequence[Certificate],
    *,
    expected_nonce: bytes | None,
    at: datetime,
    trusted_simulated_roots: frozenset[str] = frozenset(),
) -> GpuVerification:
    """Run every authenticity check; never raises on bad evidence, only on bad arguments.

    ``chain`` is the attestation certificate chain, leaf first (as NVML returns it).
    ``expected_nonce`` is the 32-byte nonce the verifier put in the request, or None.
    """
    check_expected_nonce(expected_nonce)
    if at.tzinfo is None:
        raise PolicyError("verification time must be timezone-aware (UTC)")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise CertificateFormatError(
            f"GPU certificate chain has {len(chain)} certificates; at most {MAX_CHAIN_LENGTH} are accepted"
        )
    reasons: list[Reason] = []
    warnings: list[str] = []
    if evidence.trailing:
        warnings.append(
            f"the GPU evidence has {len(evidence.trailing)} bytes after the response's signature; "
            "no signature covers them and they were ignored"
        )
    checked = _check_chain(evidence, chain, at=at, trusted_simulated_roots=trusted_simulated_roots)
    reasons += checked.reasons
    warnings += checked.warnings
    full_chain = checked.chain

    if expected_nonce is None:
        warnings.append("no expected GPU nonce was given: the freshness of the GPU evidence was not checked")
    elif not hmac.compare_digest(bytes(expected_nonce), evidence.nonce):
        reasons.append(
            Reason(
                "gpu.nonce",
                f"request nonce {evidence.nonce.hex()} is not the expected nonce {bytes(expected_nonce).hex()}",
            )
        )

    return GpuVerification(
        evidence=evidence,
        chain=full_chain,
        arch=architecture_of(full_chain),
        chip=chip_of(full_chain),
        certificate_fwid=checked.certified,
        simulated=checked.simulated,
        root_fingerprint=checked.root_fingerprint,
        reasons=tuple(reasons),
        warnings=tuple(warnings),
    )

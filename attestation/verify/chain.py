"""Signatures, certificate chains, validity windows and CRLs.

Every primitive is from ``cryptography``. Certificates arrive already decoded
by :mod:`attestation.abi.x509`. Chain checks never raise on a bad chain: they
return :class:`~attestation.findings.Reason` values, so that a rejection lists
every failed check.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..abi.x509 import Certificate, RevocationList, SignatureAlgorithm
from ..errors import CertificateFormatError
from ..findings import Reason

_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def load_public_key(cert: Certificate) -> PublicKey:
    """The certificate's subject public key as a ``cryptography`` key object."""
    try:
        key = serialization.load_der_public_key(cert.public_key_der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateFormatError(f"certificate {cert.subject!r} has an unusable public key: {exc}") from exc
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise CertificateFormatError(f"certificate {cert.subject!r} has an unsupported key type")
    return key


def signature_is_valid(key: PublicKey, algorithm: SignatureAlgorithm, signature: bytes, signed: bytes) -> bool:
    """Check an X.509-style signature (DER ECDSA, RSA-PSS, PKCS#1 v1.5, Ed25519)."""
    try:
        if algorithm.scheme == "ed25519":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                return False
            key.verify(signature, signed)
            return True
        hash_cls = _HASHES[algorithm.hash_name or ""]
        if algorithm.scheme == "ecdsa":
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            key.verify(signature, signed, ec.ECDSA(hash_cls()))
            return True
        if not isinstance(key, rsa.RSAPublicKey):
            return False
        if algorithm.scheme == "rsassa_pss":
            mgf_hash = _HASHES[algorithm.pss_mgf_hash_name or ""]
            pad = padding.PSS(mgf=padding.MGF1(mgf_hash()), salt_length=algorithm.pss_salt_length or 0)
            key.verify(signature, signed, pad, hash_cls())
            return True
        if algorithm.scheme == "rsassa_pkcs1v15":
            key.verify(signature, signed, padding.PKCS1v15(), hash_cls())
            return True
    except (InvalidSignature, ValueError, KeyError, OverflowError, TypeError):
        # a parameter the backend cannot use (e.g. an absurd PSS salt) is not a valid signature
        return False
    return False


def raw_ecdsa_is_valid(key: ec.EllipticCurvePublicKey, r: int, s: int, hash_name: str, signed: bytes) -> bool:
    """Check an ECDSA signature given as integers r, s (vendor reports store them raw)."""
    if r <= 0 or s <= 0:
        return False
    try:
        key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(_HASHES[hash_name]()))
        return True
    except (InvalidSignature, ValueError, OverflowError):
        return False


def certificate_signed_by(child: Certificate, issuer: Certificate) -> bool:
    """True when ``issuer``'s key signed ``child`` and the names chain."""
    if child.issuer_der != issuer.subject_der:
        return False
    return signature_is_valid(load_public_key(issuer), child.signature_algorithm, child.signature, child.tbs_der)


def validity_reasons(cert: Certificate, at: datetime, check: str, role: str) -> list[Reason]:
    if at < cert.not_before:
        return [Reason(check, f"{role} certificate {cert.subject!r} is not valid before {cert.not_before.isoformat()} (verification time {at.isoformat()})")]
    if at > cert.not_after:
        return [Reason(check, f"{role} certificate {cert.subject!r} expired at {cert.not_after.isoformat()} (verification time {at.isoformat()})")]
    return []


@dataclass(frozen=True)
class ChainLink:
    """A certificate of a chain and the role it plays ("VCEK", "ASK", "ARK", "PCK leaf", ...)."""

    cert: Certificate
    role: str


def verify_chain(
    links: Sequence[ChainLink],
    *,
    at: datetime,
    check_prefix: str,
    require_ca: bool = True,
) -> list[Reason]:
    """Verify an ordered chain, leaf first and self-signed root last.

    Checks each signature (the root's over itself), name chaining, CA flags of
    issuers and every validity window. Which root is *trusted* is the caller's
    decision; this only proves the chain is internally sound.
    """
    reasons: list[Reason] = []
    for index, link in enumerate(links):
        issuer = links[index + 1] if index + 1 < len(links) else link
        if not certificate_signed_by(link.cert, issuer.cert):
            if issuer is link:
                reasons.append(Reason(f"{check_prefix}.signature", f"{link.role} certificate is not validly self-signed"))
            else:
                reasons.append(Reason(f"{check_prefix}.signature", f"{link.role} certificate is not signed by the {issuer.role} certificate"))
        if require_ca and issuer is not link and not issuer.cert.is_ca:
            reasons.append(Reason(f"{check_prefix}.ca", f"{issuer.role} certificate is not a CA but issued the {link.role} certificate"))
        reasons.extend(validity_reasons(link.cert, at, f"{check_prefix}.validity", link.role))
    return reasons


def crl_reasons(
    crl: RevocationList,
    issuer: Certificate,
    *,
    at: datetime,
    check_prefix: str,
    name: str,
    require_current: bool = True,
) -> list[Reason]:
    """Check a CRL's signature by ``issuer`` and its update window."""
    reasons: list[Reason] = []
    if crl.issuer_der != issuer.subject_der or not signature_is_valid(
        load_public_key(issuer), crl.signature_algorithm, crl.signature, crl.tbs_der
    ):
        reasons.append(Reason(f"{check_prefix}.signature", f"{name} is not signed by {issuer.subject!r}"))
    if require_current:
        if at < crl.this_update:
            reasons.append(Reason(f"{check_prefix}.validity", f"{name} is not valid before {crl.this_update.isoformat()}"))
        elif crl.next_update is not None and at > crl.next_update:
            reasons.append(Reason(f"{check_prefix}.validity", f"{name} expired at {crl.next_update.isoformat()} (verification time {at.isoformat()})"))
    return reasons


def revoked_reasons(crl: RevocationList, certs: Sequence[ChainLink], check: str) -> list[Reason]:
    """Reasons for every certificate of ``certs`` issued by the CRL's issuer and listed in it."""
    return [
        Reason(check, f"{link.role} certificate (serial {link.cert.serial_number:#x}) is revoked")
        for link in certs
        if link.cert.issuer_der == crl.issuer_der and link.cert.serial_number in crl.revoked_serials
    ]

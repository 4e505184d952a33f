"""Signatures, certificate chains, validity windows and CRLs.

Every primitive is from ``cryptography``. Certificates arrive already decoded
by :mod:`attestation.abi.x509`. Chain checks never raise on a bad chain: they
return :class:`~attestation.findings.Reason` values, so that a rejection lists
every failed check.

Signatures of certificates, CRLs and collateral documents are checked once per distinct
input: :data:`SIGNATURE_MEMO` keeps each verdict under the SHA-256 of (public key,
algorithm, signature, signed bytes). A verdict is a pure function of those bytes, so a memo
hit is exactly as good as checking again; what depends on time (validity windows, CRL
updates, collateral freshness) is checked on every appraisal. Signatures over evidence
itself (an SNP report, a TDX quote and its QE report, GPU evidence) are never memoised.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..abi.x509 import Certificate, RevocationList, SignatureAlgorithm
from ..errors import CertificateFormatError
from ..findings import Reason

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class SignatureMemo:
    """A bounded, thread-safe memo of signature verdicts keyed by a digest of everything the
    verdict depends on (least recently used entries go first)."""

    def __init__(self, max_entries: int = 8192) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, bool] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*parts: bytes | str) -> bytes:
        digest = hashlib.sha256()
        for part in parts:
            raw = part.encode() if isinstance(part, str) else bytes(part)
            digest.update(len(raw).to_bytes(8, "big"))
            digest.update(raw)
        return digest.digest()

    def verdict(self, key: bytes, check: Callable[[], bool]) -> bool:
        """The memoised verdict for ``key``, computing it with ``check`` on a miss."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        result = bool(check())
        with self._lock:
            self._entries[key] = result
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return result

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


#: The process-wide memo of certificate, CRL and collateral signature verdicts.
SIGNATURE_MEMO = SignatureMemo()


def _algorithm_id(algorithm: SignatureAlgorithm) -> str:
    return f"{algorithm.scheme}/{algorithm.hash_name}/{algorithm.pss_salt_length}/{algorithm.pss_mgf_hash_name}"


def x509_signature_is_valid(
    issuer: Certificate, algorithm: SignatureAlgorithm, signature: bytes, signed: bytes
) -> bool:
    """:func:`signature_is_valid` with ``issuer``'s key, memoised in :data:`SIGNATURE_MEMO`."""
    key = SIGNATURE_MEMO.key("x509", issuer.public_key_der, _algorithm_id(algorithm), signature, signed)

    def check() -> bool:
        try:
            public_key = load_public_key(issuer)
        except CertificateFormatError:
            return False
        return signature_is_valid(public_key, algorithm, signature, signed)

    return SIGNATURE_MEMO.verdict(key, check)


def memoised_raw_ecdsa_is_valid(signer: Certificate, signature: bytes, hash_name: str, signed: bytes) -> bool:
    """An ECDSA signature given raw (r || s, big-endian halves) by ``signer``'s key over
    ``signed``, memoised (for collateral documents, never for evidence)."""
    key = SIGNATURE_MEMO.key("raw-ecdsa", signer.public_key_der, hash_name, signature, signed)

    def check() -> bool:
        try:
            public_key = load_public_key(signer)
        except CertificateFormatError:
            return False
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or len(signature) % 2:
            return False
        half = len(signature) // 2
        if half != (public_key.curve.key_size + 7) // 8:
            return False
        r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        return raw_ecdsa_is_valid(public_key, r, s, hash_name, signed)

    return SIGNATURE_MEMO.verdict(key, check)


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
    """True when ``issuer``'s key signed ``child`` and the names chain (memoised)."""
    if child.issuer_der != issuer.subject_der:
        return False
    return x509_signature_is_valid(issuer, child.signature_algorithm, child.signature, child.tbs_der)


def validity_reasons(cert: Certificate, at: datetime, check: str, role: str) -> list[Reason]:
    if at < cert.not_before:
        return [
            Reason(
                check,
                f"{role} certificate {cert.subject!r} is not valid before {cert.not_before.isoformat()} "
                f"(verification time {at.isoformat()})",
            )
        ]
    if at > cert.not_after:
        return [
            Reason(
                check,
                f"{role} certificate {cert.subject!r} expired at {cert.not_after.isoformat()} "
                f"(verification time {at.isoformat()})",
            )
        ]
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
                reasons.append(
                    Reason(f"{check_prefix}.signature", f"{link.role} certificate is not validly self-signed")
                )
            else:
                reasons.append(
                    Reason(
                        f"{check_prefix}.signature",
                        f"{link.role} certificate is not signed by the {issuer.role} certificate",
                    )
                )
        if require_ca and issuer is not link and not issuer.cert.is_ca:
            reasons.append(
                Reason(
                    f"{check_prefix}.ca",
                    f"{issuer.role} certificate is not a CA but issued the {link.role} certificate",
                )
            )
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
    if crl.issuer_der != issuer.subject_der or not x509_signature_is_valid(
        issuer, crl.signature_algorithm, crl.signature, crl.tbs_der
    ):
        reasons.append(Reason(f"{check_prefix}.signature", f"{name} is not signed by {issuer.subject!r}"))
    if require_current:
        if at < crl.this_update:
            reasons.append(
                Reason(f"{check_prefix}.validity", f"{name} is not valid before {crl.this_update.isoformat()}")
            )
        elif crl.next_update is not None and at > crl.next_update:
            reasons.append(
                Reason(
                    f"{check_prefix}.validity",
                    f"{name} expired at {crl.next_update.isoformat()} (verification time {at.isoformat()})",
                )
            )
    return reasons


def revoked_reasons(crl: RevocationList, certs: Sequence[ChainLink], check: str) -> list[Reason]:
    """Reasons for every certificate of ``certs`` the CRL lists: issued by the CRL's issuer,
    or, in an indirect CRL, by the issuer an entry names (:meth:`RevocationList.revokes`)."""
    return [
        Reason(check, f"{link.role} certificate (serial {link.cert.serial_number:#x}) is revoked")
        for link in certs
        if crl.revokes(link.cert)
    ]

"""DER certificates and CRLs as typed structures (no cryptography here).

Certificates are decoded with ``asn1crypto`` rather than ``cryptography.x509``:
AMD VCEK certificates carry serial number 0, which ``cryptography`` loads only
through a deprecated path that a future release removes. Decoding every
certificate the same way keeps one code path for all vendors; the signature
checks themselves are in :mod:`attestation.verify.chain`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from types import MappingProxyType

from asn1crypto import core, pem
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509

from ..errors import CertificateFormatError
from ..timeutil import as_utc

#: Refuse certificate input larger than this before decoding it.
MAX_CERT_INPUT_BYTES = 64 * 1024
#: RSA-PSS salt lengths above this are refused at decoding (a salt is at most the key's size
#: in bytes minus the hash size minus 2: 2 KiB keys would be 16384-bit RSA).
MAX_PSS_SALT_LENGTH = 1024


@dataclass(frozen=True)
class SignatureAlgorithm:
    """How a certificate or CRL was signed, decoded from its AlgorithmIdentifier."""

    scheme: str  # "rsassa_pss", "rsassa_pkcs1v15", "ecdsa", "ed25519"
    hash_name: str | None  # "sha256", "sha384", "sha512" or None (ed25519)
    pss_salt_length: int | None = None
    pss_mgf_hash_name: str | None = None


@dataclass(frozen=True)
class Certificate:
    """One X.509 certificate; ``der`` is exactly the bytes it was decoded from."""

    der: bytes
    tbs_der: bytes
    serial_number: int
    subject: str
    issuer: str
    subject_der: bytes
    issuer_der: bytes
    not_before: datetime
    not_after: datetime
    signature_algorithm: SignatureAlgorithm
    signature: bytes
    public_key_der: bytes  # SubjectPublicKeyInfo, DER
    #: extension OID (dotted) -> (critical, DER of extnValue's content)
    extensions: Mapping[str, tuple[bool, bytes]] = field(repr=False)
    is_ca: bool = False

    @cached_property
    def fingerprint_sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()

    def extension_value(self, oid: str) -> bytes | None:
        entry = self.extensions.get(oid)
        return None if entry is None else entry[1]

    def __hash__(self) -> int:
        return hash(self.der)


@dataclass(frozen=True)
class RevocationList:
    """One X.509 CRL.

    ``revoked`` holds (issuer name DER, serial number) of every entry: the CRL's issuer, or,
    in an indirect CRL (RFC 5280 §5.2.5, IssuingDistributionPoint ``indirectCRL``), the
    name its entries' certificateIssuer extension gives (§5.3.3; an entry without one has the
    issuer of the entry before it). ``revoked_serials`` are the serials of the entries whose
    issuer is the CRL's issuer."""

    der: bytes
    tbs_der: bytes
    issuer: str
    issuer_der: bytes
    this_update: datetime
    next_update: datetime | None
    signature_algorithm: SignatureAlgorithm
    signature: bytes
    revoked_serials: frozenset[int]
    revoked: frozenset[tuple[bytes, int]] = frozenset()
    indirect: bool = False

    def revokes(self, cert: Certificate) -> bool:
        """True when this CRL lists ``cert`` (its issuer's name and its serial number)."""
        return (cert.issuer_der, cert.serial_number) in self.revoked


_HASH_BY_OID = {
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}


def _signature_algorithm(algo: asn1_x509.SignedDigestAlgorithm) -> SignatureAlgorithm:
    try:
        name = algo.signature_algo
    except ValueError as exc:
        raise CertificateFormatError(f"unsupported signature algorithm {algo['algorithm'].dotted}") from exc
    if name == "rsassa_pss":
        params = algo["parameters"]
        hash_oid = params["hash_algorithm"]["algorithm"].dotted
        mask = params["mask_gen_algorithm"]
        if mask["algorithm"].dotted != "1.2.840.113549.1.1.8":  # id-mgf1
            raise CertificateFormatError(f"unsupported RSA-PSS mask generation function {mask['algorithm'].dotted}")
        mgf_hash_oid = mask["parameters"]["algorithm"].dotted
        hash_name = _HASH_BY_OID.get(hash_oid)
        mgf_hash = _HASH_BY_OID.get(mgf_hash_oid)
        if hash_name is None or mgf_hash is None:
            raise CertificateFormatError(f"unsupported RSA-PSS hash {hash_oid}")
        salt_length = params["salt_length"].native
        if not isinstance(salt_length, int) or not 0 <= salt_length <= MAX_PSS_SALT_LENGTH:
            raise CertificateFormatError(
                f"RSA-PSS salt length {salt_length!r} is out of range (0 to {MAX_PSS_SALT_LENGTH})"
            )
        if params["trailer_field"].native not in (1, "trailer_field_bc"):
            raise CertificateFormatError(f"unsupported RSA-PSS trailer field {params['trailer_field'].native!r}")
        return SignatureAlgorithm("rsassa_pss", hash_name, salt_length, mgf_hash)
    if name == "ed25519":
        return SignatureAlgorithm("ed25519", None)
    if name in ("rsassa_pkcs1v15", "ecdsa"):
        hash_name = algo.hash_algo
        if hash_name not in ("sha256", "sha384", "sha512"):
            raise CertificateFormatError(f"unsupported signature hash {hash_name}")
        return SignatureAlgorithm(name, hash_name)
    raise CertificateFormatError(f"unsupported signature algorithm {name}")


def _aware(value: object) -> datetime:
    """A certificate or CRL time as an aware UTC datetime; asn1crypto gives year 0 (which
    Python's datetime cannot hold) as another type, refused here."""
    if not isinstance(value, datetime):
        raise CertificateFormatError(f"time {value} is outside the years 1 to 9999")
    return as_utc(value)


def parse_certificate(data: bytes) -> Certificate:
    """Decode one certificate from DER or PEM bytes."""
    if len(data) > MAX_CERT_INPUT_BYTES:
        raise CertificateFormatError(
            f"certificate input is {len(data)} bytes, over the {MAX_CERT_INPUT_BYTES}-byte limit"
        )
    if pem.detect(data):
        certs = parse_certificates(data)
        if len(certs) != 1:
            raise CertificateFormatError(f"expected one certificate, found {len(certs)}")
        return certs[0]
    return _decode_der_certificate(bytes(data))


@lru_cache(maxsize=512)
def _decode_der_certificate(der: bytes) -> Certificate:
    """Decode one DER certificate. A pure function of the bytes, so results are kept (the same
    VCEK, PCK chain or vendor root arrives with every appraisal); malformed input raises
    every time. The result is immutable (its extensions are a read-only mapping)."""
    try:
        cert = asn1_x509.Certificate.load(der, strict=True)
        tbs = cert["tbs_certificate"]
        tbs_der = tbs.dump()
        extensions: dict[str, tuple[bool, bytes]] = {}
        is_ca = False
        for ext in tbs["extensions"]:
            oid = ext["extn_id"].dotted
            if oid in extensions:
                raise CertificateFormatError(f"duplicate extension {oid}")
            extensions[oid] = (bool(ext["critical"].native), ext["extn_value"].contents)
            if oid == "2.5.29.19":
                is_ca = bool(ext["extn_value"].parsed["ca"].native)
        validity = tbs["validity"]
        result = Certificate(
            der=der,
            tbs_der=tbs_der,
            serial_number=int(tbs["serial_number"].native),
            subject=tbs["subject"].human_friendly,
            issuer=tbs["issuer"].human_friendly,
            subject_der=tbs["subject"].dump(),
            issuer_der=tbs["issuer"].dump(),
            not_before=_aware(validity["not_before"].native),
            not_after=_aware(validity["not_after"].native),
            signature_algorithm=_signature_algorithm(cert["signature_algorithm"]),
            signature=cert["signature_value"].native,
            public_key_der=tbs["subject_public_key_info"].dump(),
            extensions=MappingProxyType(extensions),
            is_ca=is_ca,
        )
    except CertificateFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise CertificateFormatError(f"not a DER X.509 certificate: {exc}") from exc
    if der.find(result.tbs_der) < 0:
        raise CertificateFormatError("certificate is not in canonical DER")
    return result


def parse_certificates(data: bytes) -> list[Certificate]:
    """Decode every certificate of a PEM bundle, or a single DER certificate."""
    if len(data) > MAX_CERT_INPUT_BYTES:
        raise CertificateFormatError(
            f"certificate input is {len(data)} bytes, over the {MAX_CERT_INPUT_BYTES}-byte limit"
        )
    if not pem.detect(data):
        return [_decode_der_certificate(bytes(data))]
    certs = []
    try:
        blocks = list(pem.unarmor(bytes(data), multiple=True))
    except ValueError as exc:
        raise CertificateFormatError(f"malformed PEM: {exc}") from exc
    for kind, _headers, der in blocks:
        if kind != "CERTIFICATE":
            raise CertificateFormatError(f"unexpected PEM block {kind!r} where a certificate was expected")
        certs.append(_decode_der_certificate(der))
    if not certs:
        raise CertificateFormatError("no certificate found")
    return certs


def parse_crl(data: bytes) -> RevocationList:
    """Decode a CRL from DER or PEM."""
    if len(data) > 4 * MAX_CERT_INPUT_BYTES:
        raise CertificateFormatError(f"CRL input is {len(data)} bytes, over the limit")
    der = bytes(data)
    if pem.detect(der):
        try:
            kind, _headers, der = pem.unarmor(der)
        except ValueError as exc:
            raise CertificateFormatError(f"malformed PEM: {exc}") from exc
        if kind != "X509 CRL":
            raise CertificateFormatError(f"unexpected PEM block {kind!r} where a CRL was expected")
    try:
        crl = asn1_crl.CertificateList.load(der, strict=True)
        tbs = crl["tbs_cert_list"]
        issuer_der = tbs["issuer"].dump()
        distribution_point = crl.issuing_distribution_point_value
        indirect = bool(distribution_point is not None and distribution_point["indirect_crl"].native)
        entries: set[tuple[bytes, int]] = set()
        entry_issuer = issuer_der
        for entry in tbs["revoked_certificates"]:
            names = entry.certificate_issuer_value
            if names is not None:
                if not indirect:
                    raise CertificateFormatError("a CRL entry names a certificate issuer, but the CRL is not indirect")
                directory = [name.chosen.untag().dump() for name in names if name.name == "directory_name"]
                if len(directory) != 1:
                    raise CertificateFormatError("a CRL entry's certificate issuer is not one directory name")
                entry_issuer = directory[0]
            entries.add((entry_issuer, int(entry["user_certificate"].native)))
        next_update = tbs["next_update"].native
        return RevocationList(
            der=der,
            tbs_der=tbs.dump(),
            issuer=tbs["issuer"].human_friendly,
            issuer_der=issuer_der,
            this_update=_aware(tbs["this_update"].native),
            next_update=None if next_update is None else _aware(next_update),
            signature_algorithm=_signature_algorithm(crl["signature_algorithm"]),
            signature=crl["signature"].native,
            revoked_serials=frozenset(serial for name, serial in entries if name == issuer_der),
            revoked=frozenset(entries),
            indirect=indirect,
        )
    except CertificateFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise CertificateFormatError(f"not a DER X.509 CRL: {exc}") from exc


def decode_der_integer(value: bytes) -> int:
    """Decode a DER INTEGER (as used by the AMD VCEK TCB extensions)."""
    try:
        return int(core.Integer.load(value, strict=True).native)
    except (ValueError, TypeError) as exc:
        raise CertificateFormatError(f"not a DER INTEGER: {exc}") from exc


def pem_encode_certificates(certs: Iterable[Certificate]) -> bytes:
    return b"".join(pem.armor("CERTIFICATE", c.der) for c in certs)

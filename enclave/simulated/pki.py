"""Simulated vendor PKIs, persisted in a directory: the software TEE's root of trust.

Two hierarchies that mirror the real ones certificate for certificate, so that the
verifier walks exactly the code paths it walks for hardware evidence:

- AMD style: ARK (RSA-4096, self-signed) -> ASK (RSA-4096) -> VCEK (ECDSA P-384), every
  RSA signature RSA-PSS/SHA-384 as AMD's; the VCEK carries AMD's extensions
  (1.3.6.1.4.1.3704.1.2 product name, .1.3.x TCB SPLs, .1.4 hwID).
- Intel style: root CA -> PCK Platform CA -> PCK leaf (ECDSA P-256), the leaf carrying the
  SGX extension (1.2.840.113741.1.13.1: PPID, TCB SVNs, PCE-ID, FMSPC, SGX type); a
  TCB-signing certificate for TCB info and QE identity; CRLs for the root and PCK CAs.

Every certificate's subject carries :data:`attestation.trust.SIMULATED_ORGANIZATION`, so a
verifier can say "simulated" in its reason. A verifier accepts this evidence only when
its policy lists the root's fingerprint in ``trusted_simulated_roots``.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from attestation.platforms.snp import NAME as SNP
from attestation.platforms.tdx import NAME as TDX
from attestation.trust import SIMULATED_ORGANIZATION

from . import SimulatedTeeError, create_once, load_issued, read_pki_file, save_issued

AMD_OID = "1.3.6.1.4.1.3704.1"
SGX_OID = "1.2.840.113741.1.13.1"
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
VALIDITY = dt.timedelta(days=3650)

#: The simulated SNP platform's TCB (Milan layout): what the VCEK certifies and reports carry.
SIM_SNP_TCB = {"bootloader": 4, "tee": 0, "snp": 22, "microcode": 213}
SIM_SNP_PRODUCT = "Milan-B0"
#: The simulated TDX platform.
SIM_SGX_TCB_COMPONENTS = (7, 7, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
SIM_PCESVN = 13
SIM_PCEID = bytes.fromhex("0000")
SIM_FMSPC = bytes.fromhex("00a06f0000ff")


#: The kind of private key an :class:`Issued` holds (RSA for AMD's ARK and ASK, EC otherwise).
K = TypeVar("K", rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)


@dataclass(frozen=True)
class Issued(Generic[K]):
    """A certificate and the private key of its subject."""

    cert: x509.Certificate
    key: K

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class AmdPki:
    ark: Issued[rsa.RSAPrivateKey]
    ask: Issued[rsa.RSAPrivateKey]
    vcek: Issued[ec.EllipticCurvePrivateKey]
    chip_id: bytes  # 64 bytes, the VCEK's hwID


@dataclass(frozen=True)
class IntelPki:
    root: Issued[ec.EllipticCurvePrivateKey]
    pck_ca: Issued[ec.EllipticCurvePrivateKey]
    pck_leaf: Issued[ec.EllipticCurvePrivateKey]
    tcb_signer: Issued[ec.EllipticCurvePrivateKey]
    root_crl: x509.CertificateRevocationList
    pck_crl: x509.CertificateRevocationList
    ppid: bytes


@dataclass(frozen=True)
class SimulatedPki:
    directory: Path
    amd: AmdPki
    intel: IntelPki

    def trusted_root_fingerprints(self) -> dict[str, str]:
        """SHA-256 fingerprints a policy lists in ``trusted_simulated_roots`` to trust this TEE."""
        import hashlib

        return {
            SNP: hashlib.sha256(self.amd.ark.der).hexdigest(),
            TDX: hashlib.sha256(self.intel.root.der).hexdigest(),
        }


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATED_ORGANIZATION),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "ZZ"),
        ]
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key, now: dt.datetime, ca: bool) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    usage = dict(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
    return builder.add_extension(x509.KeyUsage(**usage), critical=True)


def _sign(
    builder: x509.CertificateBuilder, issuer_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    if isinstance(issuer_key, rsa.RSAPrivateKey):
        return builder.sign(issuer_key, hashes.SHA384(), rsa_padding=PSS)
    hash_cls = hashes.SHA384() if issuer_key.curve.key_size >= 384 else hashes.SHA256()
    return builder.sign(issuer_key, hash_cls)


def _der_int(value: int) -> bytes:
    return core.Integer(value).dump()


def vcek_extensions(tcb: dict[str, int], chip_id: bytes, product: str) -> list[x509.UnrecognizedExtension]:
    """AMD's VCEK extensions: product name (IA5String), TCB SPLs (DER INTEGERs), hwID (the raw 64 bytes)."""
    values = [
        (f"{AMD_OID}.1", core.IA5String("1").dump()),  # structVersion
        (f"{AMD_OID}.2", core.IA5String(product).dump()),
        (f"{AMD_OID}.3.1", _der_int(tcb["bootloader"])),
        (f"{AMD_OID}.3.2", _der_int(tcb["tee"])),
        (f"{AMD_OID}.3.3", _der_int(tcb["snp"])),
        (f"{AMD_OID}.3.8", _der_int(tcb["microcode"])),
        (f"{AMD_OID}.4", chip_id),  # raw 64 bytes, as in AMD's VCEKs
    ]
    if "fmc" in tcb:
        values.insert(6, (f"{AMD_OID}.3.9", _der_int(tcb["fmc"])))
    return [x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value) for oid, value in values]


class _SgxEntry(core.Sequence):
    _fields: ClassVar[list[tuple[str, Any]]] = [("id", core.ObjectIdentifier), ("value", core.Any)]


class _SgxEntries(core.SequenceOf):
    _child_spec = _SgxEntry


class _SgxType(core.Enumerated):
    _map: ClassVar[dict[int, str]] = {0: "standard", 1: "scalable", 2: "scalable_with_integrity"}


def sgx_extension(
    ppid: bytes, components: tuple[int, ...], pcesvn: int, pceid: bytes, fmspc: bytes
) -> x509.UnrecognizedExtension:
    """Intel's SGX PCK certificate extension, per the Intel SGX PCK Certificate and CRL spec."""
    tcb = [_SgxEntry({"id": f"{SGX_OID}.2.{i + 1}", "value": core.Integer(svn)}) for i, svn in enumerate(components)]
    tcb.append(_SgxEntry({"id": f"{SGX_OID}.2.17", "value": core.Integer(pcesvn)}))
    tcb.append(_SgxEntry({"id": f"{SGX_OID}.2.18", "value": core.OctetString(bytes(components))}))
    entries = _SgxEntries(
        [
            _SgxEntry({"id": f"{SGX_OID}.1", "value": core.OctetString(ppid)}),
            _SgxEntry({"id": f"{SGX_OID}.2", "value": _SgxEntries(tcb)}),
            _SgxEntry({"id": f"{SGX_OID}.3", "value": core.OctetString(pceid)}),
            _SgxEntry({"id": f"{SGX_OID}.4", "value": core.OctetString(fmspc)}),
            _SgxEntry({"id": f"{SGX_OID}.5", "value": _SgxType("standard")}),
        ]
    )
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), entries.dump())


def _crl(issuer: Issued[ec.EllipticCurvePrivateKey], now: dt.datetime) -> x509.CertificateRevocationList:
    # Like Intel's: a CRL number and the issuer's key identifier (RFC 5280 section 5.2; strict
    # verifiers such as webpki refuse a CRL without them).
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - dt.timedelta(days=1))
        .next_update(now + VALIDITY)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    )
    return builder.sign(issuer.key, hashes.SHA256())


def _create_amd(now: dt.datetime) -> AmdPki:
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    ark_name = _name("ARK-Milan (simulated)")
    ark = Issued(_sign(_builder(ark_name, ark_name, ark_key.public_key(), now, True), ark_key), ark_key)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    ask_name = _name("SEV-Milan (simulated)")
    ask = Issued(_sign(_builder(ask_name, ark_name, ask_key.public_key(), now, True), ark_key), ask_key)
    chip_id = secrets.token_bytes(64)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    builder = _builder(_name("SEV-VCEK (simulated)"), ask_name, vcek_key.public_key(), now, False)
    for ext in vcek_extensions(SIM_SNP_TCB, chip_id, SIM_SNP_PRODUCT):
        builder = builder.add_extension(ext, critical=False)
    vcek = Issued(_sign(builder, ask_key), vcek_key)
    return AmdPki(ark, ask, vcek, chip_id)


def _create_intel(now: dt.datetime) -> IntelPki:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = _name("Intel SGX Root CA (simulated)")
    root = Issued(_sign(_builder(root_name, root_name, root_key.public_key(), now, True), root_key), root_key)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Intel SGX PCK Platform CA (simulated)")
    pck_ca = Issued(_sign(_builder(ca_name, root_name, ca_key.public_key(), now, True), root_key), ca_key)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ppid = secrets.token_bytes(16)
    builder = _builder(_name("Intel SGX PCK Certificate (simulated)"), ca_name, leaf_key.public_key(), now, False)
    builder = builder.add_extension(
        sgx_extension(ppid, SIM_SGX_TCB_COMPONENTS, SIM_PCESVN, SIM_PCEID, SIM_FMSPC), critical=False
    )
    pck_leaf = Issued(_sign(builder, ca_key), leaf_key)
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = Issued(
        _sign(
            _builder(_name("Intel SGX TCB Signing (simulated)"), root_name, signer_key.public_key(), now, False),
            root_key,
        ),
        signer_key,
    )
    return IntelPki(root, pck_ca, pck_leaf, signer, _crl(root, now), _crl(pck_ca, now), ppid)


_FILES = {
    "amd": ("ark", "ask", "vcek"),
    "intel": ("root", "pck_ca", "pck_leaf", "tcb_signer"),
}


def _load_rsa(directory: Path, name: str) -> Issued[rsa.RSAPrivateKey]:
    cert, key = load_issued(directory, name)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SimulatedTeeError(f"{directory / name}.key.pem is not an RSA private key")
    return Issued(cert, key)


def _load_ec(directory: Path, name: str) -> Issued[ec.EllipticCurvePrivateKey]:
    cert, key = load_issued(directory, name)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SimulatedTeeError(f"{directory / name}.key.pem is not an EC private key")
    return Issued(cert, key)


_MARKER = "simulated-tee.txt"


def _populate(directory: Path) -> None:
    """Write a new pair of simulated AMD and Intel PKIs into ``directory``."""
    now = dt.datetime.now(dt.UTC)
    amd, intel = _create_amd(now), _create_intel(now)
    for sub in _FILES:
        (directory / sub).mkdir(exist_ok=True)
    for name in _FILES["amd"]:
        issued = getattr(amd, name)
        save_issued(directory / "amd", name, issued.pem, issued.key)
    (directory / "amd" / "chip-id.bin").write_bytes(amd.chip_id)
    for name in _FILES["intel"]:
        issued = getattr(intel, name)
        save_issued(directory / "intel", name, issued.pem, issued.key)
    (directory / "intel" / "ppid.bin").write_bytes(intel.ppid)
    (directory / "intel" / "root-ca-crl.der").write_bytes(intel.root_crl.public_bytes(serialization.Encoding.DER))
    (directory / "intel" / "pck-crl.der").write_bytes(intel.pck_crl.public_bytes(serialization.Encoding.DER))
    (directory / _MARKER).write_text(
        "attestfl simulated TEE root of trust. Software only: proves nothing about hardware.\n"
    )


def load_or_create(directory: str | Path) -> SimulatedPki:
    """Load the simulated PKIs from ``directory``, creating them on first use (safe when several
    processes start at once on a fresh directory)."""
    directory = Path(directory)
    try:
        create_once(directory, _MARKER, _populate)
        amd_dir, intel_dir = directory / "amd", directory / "intel"
        amd = AmdPki(
            _load_rsa(amd_dir, "ark"),
            _load_rsa(amd_dir, "ask"),
            _load_ec(amd_dir, "vcek"),
            read_pki_file(amd_dir / "chip-id.bin"),
        )
        intel = IntelPki(
            _load_ec(intel_dir, "root"),
            _load_ec(intel_dir, "pck_ca"),
            _load_ec(intel_dir, "pck_leaf"),
            _load_ec(intel_dir, "tcb_signer"),
            x509.load_der_x509_crl(read_pki_file(intel_dir / "root-ca-crl.der")),
            x509.load_der_x509_crl(read_pki_file(intel_dir / "pck-crl.der")),
            read_pki_file(intel_dir / "ppid.bin"),
        )
    except (OSError, ValueError, SimulatedTeeError) as exc:
        raise SimulatedTeeError(f"simulated TEE directory {directory} is unusable: {exc}") from exc
    return SimulatedPki(directory, amd, intel)

"""A simulated NVIDIA confidential-computing GPU: its PKI and its SPDM evidence.

It proves nothing about hardware. It emits evidence in exactly the format a Hopper GPU
returns through NVML (:mod:`attestation.platforms.nvidia.abi`): the SPDM 1.1 GET_MEASUREMENTS
request carrying the caller's 32-byte nonce, then the MEASUREMENTS response with 64
measurement blocks, NVIDIA's opaque fields and an ECDSA P-384/SHA-384 signature by the
attestation leaf. The certificate chain mirrors NVIDIA's, certificate for certificate::

    NVIDIA Device Identity CA (simulated)            root, self-signed
      NVIDIA GH100 Identity (simulated)              architecture CA
        NVIDIA GH100 Provisioner ICA 1 (simulated)   provisioner CA
          GH100 A01 GSP BROM (simulated)             the DICE DeviceID, a CA
            GH100 A01 GSP FMC LF (simulated)         attestation leaf, with the FWID extension
                                                     2.23.133.5.4.1 (DICE CompositeDeviceID)

Every subject carries :data:`attestation.trust.SIMULATED_ORGANIZATION`; a verifier accepts
this evidence only when its policy lists :attr:`SimulatedGpuPki.root_fingerprint` in
``trusted_simulated_roots``. Keys are ECDSA P-384, as NVIDIA's; private keys are written
with mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestation.platforms.nvidia.abi import (
    FWID_EXTENSION_OID,
    FWID_SIZE,
    NONCE_SIZE,
    STATUS_DISABLED,
    STATUS_ENABLED,
    MeasurementBlock,
    MeasurementRequest,
    MeasurementsResponse,
    OpaqueFieldType,
    encode_fwid_extension,
    encode_text,
    encode_vbios_version,
    opaque_fields,
    parse_gpu_evidence,
)
from attestation.trust import SIMULATED_ORGANIZATION

from . import SimulatedTeeError, create_once, load_issued, read_pki_file, save_issued

VALIDITY = dt.timedelta(days=3650)
MEASUREMENT_BLOCKS = 64
SIM_DRIVER_VERSION = "550.90.07"
SIM_VBIOS_VERSION = "96.00.9f.00.01"
#: Indices that carry a (simulated) firmware digest; the others are zero, as unused Hopper blocks are.
SIM_ACTIVE_INDICES = (2, 3, 4, 5, 6, 7, 8, 10, 12, 22, 23, 26, 27, 28) + tuple(range(30, 42))

#: Role name -> (subject common name, is CA); ordered root first.
_ROLES = (
    ("root", "NVIDIA Device Identity CA (simulated)", True),
    ("identity", "NVIDIA GH100 Identity (simulated)", True),
    ("provisioner", "NVIDIA GH100 Provisioner ICA 1 (simulated)", True),
    ("brom", "GH100 A01 GSP BROM (simulated)", True),
    ("leaf", "GH100 A01 GSP FMC LF (simulated)", False),
)


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and the P-384 private key of its subject."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class SimulatedGpuPki:
    """The simulated NVIDIA device-identity PKI of one simulated GPU."""

    directory: Path
    root: IssuedCertificate
    identity: IssuedCertificate
    provisioner: IssuedCertificate
    brom: IssuedCertificate
    leaf: IssuedCertificate
    #: The firmware ID the leaf certifies (SHA-384 sized).
    fwid: bytes

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 of the root's DER: the value a policy lists in ``trusted_simulated_roots``."""
        return hashlib.sha256(self.root.der).hexdigest()

    def chain_pem(self, leaf: IssuedCertificate | None = None) -> bytes:
        """The chain as NVML returns it: attestation leaf first, root last."""
        leaf = leaf or self.leaf
        return b"".join(c.pem for c in (leaf, self.brom, self.provisioner, self.identity, self.root))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATED_ORGANIZATION),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "ZZ"),
        ]
    )


def _issue(
    common_name: str,
    ca: bool,
    issuer: IssuedCertificate | None,
    now: dt.datetime,
    extra: Sequence[x509.ExtensionType] = (),
) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP384R1())
    subject = _name(common_name)
    issuer_name = subject if issuer is None else issuer.cert.subject
    signing_key = key if issuer is None else issuer.key
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
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.KeyUsage(**usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    for extension in extra:
        builder = builder.add_extension(extension, critical=False)
    return IssuedCertificate(builder.sign(signing_key, hashes.SHA384()), key)


def _fwid_extension(brom: IssuedCertificate, fwid: bytes) -> x509.UnrecognizedExtension:
    device_id = brom.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(FWID_EXTENSION_OID), encode_fwid_extension(device_id, fwid))


def issue_attestation_leaf(pki: SimulatedGpuPki, *, fwid: bytes, now: dt.datetime | None = None) -> IssuedCertificate:
    """A new attestation leaf under the simulated BROM certifying ``fwid`` (not persisted)."""
    if len(fwid) != FWID_SIZE:
        raise SimulatedTeeError(f"FWID must be {FWID_SIZE} bytes, got {len(fwid)}")
    now = now or dt.datetime.now(dt.UTC)
    return _issue(_ROLES[-1][1], False, pki.brom, now, [_fwid_extension(pki.brom, fwid)])


def _load(directory: Path, role: str) -> IssuedCertificate:
    cert, key = load_issued(directory, role)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SimulatedTeeError(f"{directory / role}.key.pem is not an EC private key")
    return IssuedCertificate(cert, key)


_MARKER = "simulated-gpu.txt"


def _populate(directory: Path) -> None:
    """Write a new simulated GPU PKI (and its firmware id) into ``directory``."""
    now = dt.datetime.now(dt.UTC)
    fwid = hashlib.sha384(b"attestfl simulated GPU firmware " + os.urandom(16)).digest()
    issued: dict[str, IssuedCertificate] = {}
    parent: IssuedCertificate | None = None
    for role, common_name, ca in _ROLES:
        extra = [_fwid_extension(issued["brom"], fwid)] if role == "leaf" else []
        issued[role] = _issue(common_name, ca, parent, now, extra)
        parent = issued[role]
    for role, value in issued.items():
        save_issued(directory, role, value.pem, value.key)
    (directory / "fwid.bin").write_bytes(fwid)
    (directory / _MARKER).write_text(
        "attestfl simulated NVIDIA GPU root of trust. Software only: proves nothing about hardware.\n"
    )


def load_or_create_gpu_pki(directory: str | Path) -> SimulatedGpuPki:
    """Load the simulated GPU PKI from ``directory``, creating it on first use (safe when several
    processes start at once on a fresh directory)."""
    directory = Path(directory)
    try:
        create_once(directory, _MARKER, _populate)
        loaded = {role: _load(directory, role) for role, _, _ in _ROLES}
        fwid = read_pki_file(directory / "fwid.bin")
    except (OSError, ValueError, SimulatedTeeError) as exc:
        raise SimulatedTeeError(f"simulated GPU directory {directory} is unusable: {exc}") from exc
    if len(fwid) != FWID_SIZE:
        raise SimulatedTeeError(f"{directory / 'fwid.bin'} does not hold a {FWID_SIZE}-byte FWID")
    return SimulatedGpuPki(directory, fwid=fwid, **loaded)


def simulated_measurements() -> dict[int, bytes]:
    """The simulated GPU's 64 measurement values (deterministic; zero where Hopper reports zero)."""
    return {
        index: hashlib.sha384(f"attestfl simulated GPU measurement {index}".encode()).digest()
        if index in SIM_ACTIVE_INDICES
        else bytes(48)
        for index in range(1, MEASUREMENT_BLOCKS + 1)
    }


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA384())))
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def simulated_gpu_evidence(
    nonce: bytes,
    pki: SimulatedGpuPki | str | Path,
    *,
    measurements: Mapping[int, bytes] | None = None,
    driver_version: str = SIM_DRIVER_VERSION,
    vbios_version: str = SIM_VBIOS_VERSION,
    protected_pcie: bool = False,
    report_fwid: bytes | None = None,
    leaf: IssuedCertificate | None = None,
) -> tuple[bytes, bytes]:
    """(evidence bytes, certificate chain PEM) for a GET_MEASUREMENTS request carrying ``nonce``.

    ``pki``: a :class:`SimulatedGpuPki` or the directory holding one (created on first use).
    ``measurements``: SPDM index -> 48-byte value, replacing :func:`simulated_measurements`.
    ``report_fwid``: the FWID written in the opaque data (default: the one the leaf certifies).
    ``leaf``: sign with another attestation leaf (see :func:`issue_attestation_leaf`).
    """
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_SIZE:
        raise SimulatedTeeError(f"the GPU request nonce must be {NONCE_SIZE} bytes")
    if not isinstance(pki, SimulatedGpuPki):
        pki = load_or_create_gpu_pki(pki)
    signer = leaf or pki.leaf
    values = simulated_measurements() if measurements is None else dict(measurements)
    for index, value in values.items():
        if not 1 <= index <= 255 or len(value) != 48:
            raise SimulatedTeeError(f"measurement {index}: indices are 1..255 and values 48 bytes")
    fwid = pki.fwid if report_fwid is None else report_fwid
    if len(fwid) != FWID_SIZE:
        raise SimulatedTeeError(f"FWID must be {FWID_SIZE} bytes")
    counts = b"".join(
        (1 if any(values.get(i, b"")) else 0).to_bytes(4, "little") for i in range(1, MEASUREMENT_BLOCKS + 1)
    )
    status = STATUS_ENABLED if protected_pcie else STATUS_DISABLED
    opaque = opaque_fields(
        [
            (OpaqueFieldType.VBIOS_VERSION, encode_vbios_version(vbios_version)),
            (OpaqueFieldType.BOARD_ID, bytes.fromhex("b1030000")),
            (OpaqueFieldType.CHIP_SKU, encode_text("882", 9)),
            (OpaqueFieldType.CHIP_SKU_MOD, encode_text("0", 5)),
            (OpaqueFieldType.PROJECT, encode_text("1010", 5)),
            (OpaqueFieldType.PROJECT_SKU, encode_text("0200", 5)),
            (OpaqueFieldType.PROJECT_SKU_MOD, bytes(2)),
            (OpaqueFieldType.DRIVER_VERSION, encode_text(driver_version)),
            (OpaqueFieldType.GPU_INFO, bytes.fromhex("8001000000000000")),
            (OpaqueFieldType.MSRSCNT, counts),
            (OpaqueFieldType.CPRINFO, bytes.fromhex("00c00100")),
            (OpaqueFieldType.NVDEC0_STATUS, bytes([STATUS_DISABLED])),
            (OpaqueFieldType.FWID, fwid),
            (OpaqueFieldType.PROTECTED_PCIE_STATUS, bytes([status])),
        ]
    )
    request = MeasurementRequest.for_nonce(bytes(nonce))
    unsigned = MeasurementsResponse(
        version=request.version,
        param1=0,
        param2=request.slot_id,
        blocks=tuple(MeasurementBlock(index, 0x01, values[index]) for index in sorted(values)),
        responder_nonce=os.urandom(NONCE_SIZE),
        opaque=opaque,
        signature=bytes(96),
    )
    signed_part = request.to_bytes() + unsigned.unsigned_bytes()
    evidence = signed_part + _raw_signature(signer.key, signed_part)
    parse_gpu_evidence(evidence)  # the emitted bytes must parse as hardware evidence does
    return evidence, pki.chain_pem(signer)

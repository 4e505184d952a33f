"""A toy platform, written against the public API alone: the worked example of
``docs/extending.md`` ("Add a platform"), registered by the tests through the ``attestfl.platforms``
entry point of a distribution they write (``tests/test_platform_plugin.py``).

Evidence format (all integers big-endian)::

    magic        16 bytes   b"ATTESTFL-TOY-01\\0"
    measurement  32 bytes   the launch measurement
    report_data  64 bytes   chosen by the attester (an evidence bundle's binding)
    flags         1 byte    bit 0: debug
    cert_len      2 bytes   length of the signing certificate
    certificate   cert_len  DER X.509 certificate of the Ed25519 signing key, issued by the
                            toy vendor's root
    signature    64 bytes   Ed25519, by the certificate's key, over every byte before it

Checks: ``toy.format`` (never: unusable bytes raise), ``toy.signature``, ``toy.chain.*``
(the certificate is signed by the root, both valid now), ``toy.chain.root`` (the one trust
rule, :func:`attestation.trust.trust_root`: no root is shipped, so only a simulated root the
policy lists is trusted), and the ``[toy]`` policy section: ``toy.policy.allow_debug``,
``toy.policy.report_data``, ``toy.policy.measurement``.

The producing side (:func:`make_evidence`, :class:`ToyVendor`) lives here too, so a test can
make evidence; nothing in it is imported by attestfl.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from attestation.abi.x509 import Certificate, parse_certificate
from attestation.collateral import CollateralStore
from attestation.errors import CertificateFormatError, EvidenceFormatError
from attestation.findings import Appraisal, Reason
from attestation.platforms.base import (
    AppraisalPolicy,
    EvidenceInputs,
    MeasurementPin,
    neutral_claims,
)
from attestation.trust import SIMULATED_ORGANIZATION, VendorRoots, trust_root
from attestation.validate.fields import read_hex_set, reject_unknown_keys
from attestation.verify.chain import ChainLink, verify_chain

NAME = "toy"
MAGIC = b"ATTESTFL-TOY-01\0"
_HEAD = struct.Struct(">16s32s64sBH")
SIGNATURE_SIZE = 64
FLAG_DEBUG = 0x01


# --- abi ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyEvidence:
    measurement: bytes
    report_data: bytes
    debug: bool
    certificate: bytes
    signature: bytes
    signed: bytes


def looks_like_toy_evidence(data: bytes) -> bool:
    return bytes(data[: len(MAGIC)]) == MAGIC


def parse_evidence(data: bytes) -> ToyEvidence:
    data = bytes(data)
    if not looks_like_toy_evidence(data) or len(data) < _HEAD.size + SIGNATURE_SIZE:
        raise EvidenceFormatError(f"not toy evidence ({len(data)} bytes)")
    _magic, measurement, report_data, flags, cert_len = _HEAD.unpack_from(data)
    end = _HEAD.size + cert_len
    if len(data) != end + SIGNATURE_SIZE:
        raise EvidenceFormatError(
            f"toy evidence: {len(data)} bytes, expected {end + SIGNATURE_SIZE} for a {cert_len}-byte certificate"
        )
    if flags & ~FLAG_DEBUG:
        raise EvidenceFormatError(f"toy evidence: unknown flags {flags:#x}")
    return ToyEvidence(
        measurement, report_data, bool(flags & FLAG_DEBUG), data[_HEAD.size : end], data[end:], data[:end]
    )


# --- the producing side (tests only) ----------------------------------------------------


def make_evidence(
    signing_key: ed25519.Ed25519PrivateKey,
    certificate_der: bytes,
    *,
    measurement: bytes,
    report_data: bytes,
    debug: bool = False,
) -> bytes:
    head = (
        _HEAD.pack(MAGIC, measurement, report_data, FLAG_DEBUG if debug else 0, len(certificate_der)) + certificate_der
    )
    return head + signing_key.sign(head)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATED_ORGANIZATION),
        ]
    )


@dataclass(frozen=True)
class ToyVendor:
    """The toy vendor: a (simulated) root and one device key it certified, kept in a directory
    so that a test and the processes it starts share them."""

    root_der: bytes
    device_key: ed25519.Ed25519PrivateKey
    device_der: bytes

    @property
    def root_fingerprint(self) -> str:
        return hashlib.sha256(self.root_der).hexdigest()

    def evidence(self, *, measurement: bytes, report_data: bytes, debug: bool = False) -> bytes:
        return make_evidence(
            self.device_key, self.device_der, measurement=measurement, report_data=report_data, debug=debug
        )

    @classmethod
    def load_or_create(cls, directory: Path) -> ToyVendor:
        files = [directory / n for n in ("root.der", "device.der", "device.key")]
        if not all(p.exists() for p in files):
            directory.mkdir(parents=True, exist_ok=True)
            now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
            root_key, device_key = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()

            def issue(subject: str, key: ed25519.Ed25519PublicKey, ca: bool) -> x509.Certificate:
                builder = (
                    x509.CertificateBuilder()
                    .subject_name(_name(subject))
                    .issuer_name(_name("toy root"))
                    .public_key(key)
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now)
                    .not_valid_after(now + dt.timedelta(days=3650))
                    .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                )
                return builder.sign(root_key, None)

            files[0].write_bytes(
                issue("toy root", root_key.public_key(), True).public_bytes(serialization.Encoding.DER)
            )
            files[1].write_bytes(
                issue("toy device", device_key.public_key(), False).public_bytes(serialization.Encoding.DER)
            )
            files[2].write_bytes(
                device_key.private_bytes(
                    serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                )
            )
        return cls(
            files[0].read_bytes(),
            ed25519.Ed25519PrivateKey.from_private_bytes(files[2].read_bytes()),
            files[1].read_bytes(),
        )


# --- trust roots: none shipped ------------------------------------------------------------


def _no_shipped_roots() -> tuple[Certificate, ...]:
    return ()


TOY_ROOTS = VendorRoots("toy", "a toy vendor root (none is shipped)", _no_shipped_roots)


# --- validate: the [toy] section ----------------------------------------------------------


@dataclass(frozen=True)
class ToyPolicy:
    """The ``[toy]`` section: ``measurement``, the launch measurements accepted (32 bytes each)."""

    measurement: frozenset[bytes] = frozenset()

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> Self:
        reject_unknown_keys(table, tuple(f.name for f in fields(cls)), NAME)
        return cls(measurement=read_hex_set(table, "measurement", NAME, 32))


def validate(evidence: ToyEvidence, policy: AppraisalPolicy) -> Iterator[Reason]:
    section = policy.section(NAME, ToyPolicy)
    if evidence.debug and not policy.allow_debug:
        yield Reason("toy.policy.allow_debug", "the toy guest runs with debug on and the policy forbids debug")
    if policy.report_data is not None and evidence.report_data != policy.report_data:
        yield Reason(
            "toy.policy.report_data", f"report_data {evidence.report_data.hex()} differs from the required one"
        )
    if section.measurement and evidence.measurement not in section.measurement:
        yield Reason(
            "toy.policy.measurement", f"measurement {evidence.measurement.hex()} is not among the allowed values"
        )


# --- verify ---------------------------------------------------------------------------------


def verify(
    evidence: ToyEvidence, root: Certificate | None, policy: AppraisalPolicy, at: datetime
) -> tuple[list[Reason], list[str], bool]:
    """(reasons, warnings, simulated): the signature by the certificate's key, the certificate's
    chain to the root, and the one trust rule on the root."""
    reasons: list[Reason] = []
    warnings: list[str] = []
    try:
        leaf = parse_certificate(evidence.certificate)
    except CertificateFormatError as exc:
        return [Reason("toy.chain", f"the signing certificate does not decode: {exc}")], warnings, False
    key = serialization.load_der_public_key(leaf.public_key_der)
    try:
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise InvalidSignature
        key.verify(evidence.signature, evidence.signed)
    except InvalidSignature:
        reasons.append(Reason("toy.signature", "the evidence is not signed by its certificate's Ed25519 key"))
    if root is None:
        reasons.append(Reason("toy.chain.root", "no root certificate was given for the toy signing certificate"))
        return reasons, warnings, False
    reasons += verify_chain(
        [ChainLink(leaf, "toy device"), ChainLink(root, "toy root")], at=at, check_prefix="toy.chain"
    )
    trust = trust_root(root, policy, vendor=TOY_ROOTS, what="the toy certificate chain")
    if trust.reason is not None:
        reasons.append(Reason("toy.chain.root", trust.reason))
    if trust.warning is not None:
        warnings.append(trust.warning)
    return reasons, warnings, trust.simulated


# --- the platform ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyPlatform:
    name: str = NAME
    description: str = "toy evidence (magic ATTESTFL-TOY-01)"
    roots: VendorRoots = TOY_ROOTS
    binds_report_data: bool = True
    policy_key: str = NAME
    policy_attribute: str | None = "toy"
    policy_section: type[ToyPolicy] = ToyPolicy
    measurement_pin: MeasurementPin | None = MeasurementPin("measurement", "[toy] measurement")

    def detect(self, data: bytes) -> bool:
        return looks_like_toy_evidence(data)

    def report_data(self, evidence: bytes) -> bytes:
        return parse_evidence(evidence).report_data

    def appraise(
        self,
        evidence: bytes,
        *,
        policy: AppraisalPolicy,
        at: datetime,
        inputs: EvidenceInputs,
        collateral: CollateralStore | None,
    ) -> Appraisal:
        parsed = parse_evidence(evidence)
        roots = [parse_certificate(c) for c in inputs.certificates]
        root = next((c for c in roots if c.is_ca), None)
        reasons, warnings, simulated = verify(parsed, root, policy, at)
        reasons += validate(parsed, policy)
        claims = neutral_claims(
            NAME,
            measurement=parsed.measurement,
            debug=parsed.debug,
            simulated=simulated,
            tcb_status=None,
            signing_key="toy-device-key",
        )
        claims["report_data"] = parsed.report_data.hex()
        return Appraisal(NAME, claims, tuple(reasons), tuple(warnings))


PLATFORM = ToyPlatform()

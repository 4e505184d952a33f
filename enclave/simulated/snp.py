"""Simulated AMD SEV-SNP: byte-exact attestation reports (version 3) signed by the
simulated VCEK.

The report has the layout of :mod:`attestation.platforms.snp.abi` (1184 bytes, little-endian), the
ECDSA P-384/SHA-384 signature over bytes 0x000..0x29F in AMD's encoding (r and s
little-endian, 72 bytes each). Its reported, current, committed and launch TCB are
:data:`~enclave.simulated.pki.SIM_SNP_TCB` (what the simulated VCEK certifies), its
CHIP_ID is the VCEK's hwID, CPUID family/model say Milan, the signing key field says VCEK.
The certificate table the simulated host hands out (the ``auxblob``) holds the VCEK, ASK
and ARK.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attestation.platforms.snp.abi import (
    POLICY_DEBUG,
    POLICY_RESERVED_MBO,
    POLICY_SMT,
    SIGNED_SIZE,
    TcbVersion,
    build_cert_table,
    encode_report,
    flags_word,
    new_report,
    with_signature,
)

from . import SimulatedTeeError
from .pki import PSS, SIM_SNP_TCB, SimulatedPki

#: Milan: CPUID family 0x19, model 0x01.
SIM_CPUID_FAMILY = 0x19
SIM_CPUID_MODEL = 0x01
SIM_CPUID_STEPPING = 0x01
SIM_FIRMWARE = (1, 55, 21)  # major, minor, build
SIM_PLATFORM_INFO = 0x3  # SMT enabled, TSME enabled
#: The name of the simulated AMD CRL in a bundle's collateral map.
AMD_CRL_FILE = "amd-crl.der"
CRL_LIFETIME = dt.timedelta(days=30)


def simulated_amd_crl(
    pki: SimulatedPki,
    issued: dt.datetime | None = None,
    *,
    revoked: Sequence[x509.Certificate] = (),
    lifetime: dt.timedelta = CRL_LIFETIME,
) -> bytes:
    """An AMD-style CRL (DER) from the simulated ARK, RSA-PSS/SHA-384 as AMD's, issued at
    ``issued`` (default now), next update ``lifetime`` later.

    ``revoked``: certificates of the simulated AMD PKI to list: the ASK (issued by the ARK)
    directly; a VCEK (issued by the ASK) as an entry naming the ASK as its certificate
    issuer, which makes the CRL indirect (RFC 5280 §5.2.5, §5.3.3)."""
    # Published an hour ago, as a vendor's collateral is: a verifier whose clock is a little
    # behind the simulated TEE's still finds it valid.
    issued = issued or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    ark, ask = pki.amd.ark.cert, pki.amd.ask.cert
    by_ark = [c for c in revoked if c.issuer == ark.subject]
    by_ask = [c for c in revoked if c.issuer == ask.subject]
    strangers = [c for c in revoked if c.issuer not in (ark.subject, ask.subject)]
    if strangers:
        raise SimulatedTeeError(f"{strangers[0].subject.rfc4514_string()} was not issued by the simulated ARK or ASK")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ark.subject)
        .last_update(issued)
        .next_update(issued + lifetime)
    )
    when = issued - dt.timedelta(minutes=1)
    for cert in by_ark:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(when).build()
        )
    for cert in by_ask:  # after the ARK's own entries: an entry without the extension inherits the one before
        entry = x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(when)
        entry = entry.add_extension(x509.CertificateIssuer([x509.DirectoryName(ask.subject)]), critical=True)
        builder = builder.add_revoked_certificate(entry.build())
    if by_ask:
        builder = builder.add_extension(
            x509.IssuingDistributionPoint(
                full_name=None,
                relative_name=None,
                only_contains_user_certs=False,
                only_contains_ca_certs=False,
                only_some_reasons=None,
                indirect_crl=True,
                only_contains_attribute_certs=False,
            ),
            critical=True,
        )
    return builder.sign(pki.amd.ark.key, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class GuestOptions:
    """What the simulated guest reports beside report_data; defaults are a production guest."""

    measurement: bytes
    debug: bool = False
    host_data: bytes = bytes(32)
    vmpl: int = 0
    guest_svn: int = 0
    tcb: dict | None = None  # override reported/current/committed/launch TCB (bootloader, tee, snp, microcode)

    def __post_init__(self) -> None:
        if len(self.measurement) != 48 or len(self.host_data) != 32:
            raise SimulatedTeeError("measurement must be 48 bytes and host_data 32 bytes")
        if not 0 <= self.vmpl <= 3:
            raise SimulatedTeeError("vmpl must be 0..3")


class SimulatedSnpFirmware:
    """The simulated AMD secure processor of one simulated platform: it signs reports with
    the simulated VCEK. One guest launch per instance (a fixed REPORT_ID)."""

    def __init__(self, pki: SimulatedPki) -> None:
        self._pki = pki
        self.report_id = os.urandom(32)
        self.cert_table = build_cert_table({"vcek": pki.amd.vcek.der, "ask": pki.amd.ask.der, "ark": pki.amd.ark.der})

    @property
    def certificates(self) -> tuple[bytes, ...]:
        """VCEK, ASK, ARK (DER), in certificate table order."""
        amd = self._pki.amd
        return (amd.vcek.der, amd.ask.der, amd.ark.der)

    def report(self, report_data: bytes, options: GuestOptions) -> bytes:
        if len(report_data) != 64:
            raise SimulatedTeeError(f"report_data must be 64 bytes, got {len(report_data)}")
        spl = options.tcb or SIM_SNP_TCB
        tcb = TcbVersion(spl["bootloader"], spl["tee"], spl["snp"], spl["microcode"]).to_bytes("milan")
        major, minor, build = SIM_FIRMWARE
        policy = POLICY_RESERVED_MBO | POLICY_SMT | (POLICY_DEBUG if options.debug else 0)
        report = new_report(
            version=3,
            guest_svn=options.guest_svn,
            policy=policy,
            vmpl=options.vmpl,
            current_tcb_raw=tcb,
            platform_info=SIM_PLATFORM_INFO,
            flags=flags_word(signing_key="vcek"),
            report_data=bytes(report_data),
            measurement=options.measurement,
            host_data=options.host_data,
            report_id=self.report_id,
            report_id_ma=b"\xff" * 32,
            reported_tcb_raw=tcb,
            cpuid_fam_id=SIM_CPUID_FAMILY,
            cpuid_mod_id=SIM_CPUID_MODEL,
            cpuid_step=SIM_CPUID_STEPPING,
            chip_id=self._pki.amd.chip_id,
            committed_tcb_raw=tcb,
            current_major=major,
            current_minor=minor,
            current_build=build,
            committed_major=major,
            committed_minor=minor,
            committed_build=build,
            launch_tcb_raw=tcb,
        )
        unsigned = encode_report(report)
        r, s = decode_dss_signature(self._pki.amd.vcek.key.sign(unsigned[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
        return with_signature(unsigned, r, s)

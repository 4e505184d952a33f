"""Certificates decode without deprecated paths; chains and CRLs verify on vendor material."""

from __future__ import annotations

import pytest

from attestation.abi.x509 import parse_certificate, parse_certificates, parse_crl
from attestation.errors import CertificateFormatError
from attestation.platforms.snp.roots import amd_root_chains
from attestation.platforms.tdx.roots import intel_sgx_root_ca
from attestation.timeutil import parse_time
from attestation.verify.chain import ChainLink, crl_reasons, verify_chain


def _milan_chain():
    return next(c for c in amd_root_chains() if c.product == "milan" and c.signing_key == "vcek")


def test_zero_serial_vcek_decodes_and_chains_to_milan(vectors):
    vcek = parse_certificate((vectors / "sev-snp/milan-report-v2.vcek.der").read_bytes())
    assert vcek.serial_number == 0
    chain = _milan_chain()
    links = [ChainLink(vcek, "VCEK"), ChainLink(chain.intermediate, "ASK"), ChainLink(chain.root, "ARK")]
    assert verify_chain(links, at=parse_time("2024-01-01T00:00:00Z"), check_prefix="t") == []


def test_vcek_against_genoa_chain_is_rejected(vectors):
    vcek = parse_certificate((vectors / "sev-snp/milan-report-v2.vcek.der").read_bytes())
    genoa = next(c for c in amd_root_chains() if c.product == "genoa" and c.signing_key == "vcek")
    reasons = verify_chain(
        [ChainLink(vcek, "VCEK"), ChainLink(genoa.intermediate, "ASK"), ChainLink(genoa.root, "ARK")],
        at=parse_time("2024-01-01T00:00:00Z"),
        check_prefix="t",
    )
    assert [r.message for r in reasons] == ["VCEK certificate is not signed by the ASK certificate"]


def test_expired_certificate_is_named(vectors):
    vcek = parse_certificate((vectors / "sev-snp/milan-report-v2.vcek.der").read_bytes())
    chain = _milan_chain()
    reasons = verify_chain(
        [ChainLink(vcek, "VCEK"), ChainLink(chain.intermediate, "ASK"), ChainLink(chain.root, "ARK")],
        at=parse_time("2030-01-01T00:00:00Z"),
        check_prefix="t",
    )
    assert len(reasons) == 1 and "VCEK certificate" in reasons[0].message and "expired" in reasons[0].message


def test_pck_crl_signed_by_platform_ca(vectors):
    crl = parse_crl((vectors / "tdx/collateral/pck-platform-crl.der").read_bytes())
    issuer, root = parse_certificates((vectors / "tdx/collateral/pck-crl-issuer-chain.pem").read_bytes())
    assert root.der == intel_sgx_root_ca().der
    assert crl_reasons(crl, issuer, at=parse_time("2023-07-01T00:00:00Z"), check_prefix="t", name="PCK CRL") == []
    later = crl_reasons(crl, issuer, at=parse_time("2024-07-01T00:00:00Z"), check_prefix="t", name="PCK CRL")
    assert [r.check for r in later] == ["t.validity"]
    assert crl_reasons(crl, root, at=parse_time("2023-07-01T00:00:00Z"), check_prefix="t", name="PCK CRL")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x30\x03\x02\x01", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
)
def test_garbage_certificates_raise_typed_error(data):
    with pytest.raises(CertificateFormatError):
        parse_certificate(data)


def test_oversized_certificate_input_refused_before_parsing():
    with pytest.raises(CertificateFormatError, match="limit"):
        parse_certificate(b"\x30" * (65 * 1024))

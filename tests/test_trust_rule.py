"""One trust rule for chain roots (attestation.trust.trust_root), the same on SEV-SNP, TDX and
NVIDIA GPUs: a shipped vendor root, or a root marked simulated *and* listed in the policy
(always with the same warning); an unlisted simulated root and a listed fingerprint of a
certificate that is not marked simulated are refused, under each platform's stable check id."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from attestation.abi.x509 import parse_certificate
from attestation.findings import Appraisal
from attestation.platforms.nvidia.appraise import appraise_gpu
from attestation.platforms.nvidia.roots import NVIDIA_ROOTS
from attestation.platforms.snp.appraise import appraise_snp
from attestation.platforms.snp.roots import AMD_ROOTS, amd_root_chains
from attestation.platforms.tdx.appraise import appraise_tdx
from attestation.platforms.tdx.roots import INTEL_ROOTS
from attestation.policy import Policy
from attestation.trust import SIMULATED_ORGANIZATION, trust_root
from enclave.simulated.gpu import IssuedCertificate, SimulatedGpuPki, load_or_create_gpu_pki, simulated_gpu_evidence
from enclave.simulated.pki import PSS, Issued, SimulatedPki, load_or_create
from enclave.simulated.snp import GuestOptions, SimulatedSnpFirmware
from enclave.simulated.tdx import SimulatedTdxQuoter, TdOptions
from enclave_fixtures import MEASUREMENT, NONCE_A, shared_simulated_dir

ROOT_CHECK = {"sev-snp": "snp.chain.root", "tdx": "tdx.pck.root", "nvidia-gpu": "gpu.chain.root"}
NOT_SIMULATED = "Not Simulated Vendor Ltd"


def _renamed(name: x509.Name) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(attr.oid, NOT_SIMULATED if attr.value == SIMULATED_ORGANIZATION else attr.value)
            for attr in name
        ]
    )


def reissue_without_simulated_mark(chain: list[Any]) -> list[Any]:
    """The same keys and extensions, root first, with names that no longer say "simulated"."""
    out: list[Any] = []
    for index, issued in enumerate(chain):
        cert: x509.Certificate = issued.cert
        issuer = out[index - 1] if index else None
        builder = (
            x509.CertificateBuilder()
            .subject_name(_renamed(cert.subject))
            .issuer_name(_renamed(cert.issuer))
            .public_key(cert.public_key())
            .serial_number(cert.serial_number)
            .not_valid_before(cert.not_valid_before_utc)
            .not_valid_after(cert.not_valid_after_utc)
        )
        for extension in cert.extensions:
            if isinstance(extension.value, x509.AuthorityKeyIdentifier):
                continue
            builder = builder.add_extension(extension.value, extension.critical)
        signer = issued.key if issuer is None else issuer.key
        if isinstance(signer, rsa.RSAPrivateKey):
            new = builder.sign(signer, hashes.SHA384(), rsa_padding=PSS)
        else:
            new = builder.sign(signer, hashes.SHA384() if signer.curve.key_size >= 384 else hashes.SHA256())
        out.append(dataclasses.replace(issued, cert=new))
    return out


def fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


# --- evidence per platform: (evidence maker, its root certificate) -----------------------


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return load_or_create(shared_simulated_dir())


@pytest.fixture(scope="module")
def gpu_pki() -> SimulatedGpuPki:
    return load_or_create_gpu_pki(shared_simulated_dir() / "gpu")


def _snp(pki: SimulatedPki) -> Callable[[Policy], Appraisal]:
    report = SimulatedSnpFirmware(pki).report(bytes(64), GuestOptions(measurement=MEASUREMENT))
    certs = (pki.amd.vcek.der, pki.amd.ask.pem + pki.amd.ark.pem)
    return lambda policy: appraise_snp(report, certificates=certs, policy=policy, at=datetime.now(UTC))


def _tdx(pki: SimulatedPki) -> Callable[[Policy], Appraisal]:
    quote = SimulatedTdxQuoter(pki).quote(bytes(64), TdOptions(mr_td=MEASUREMENT))
    return lambda policy: appraise_tdx(quote, policy=policy, at=datetime.now(UTC))


def _gpu(gpu_pki: SimulatedGpuPki) -> Callable[[Policy], Appraisal]:
    evidence, chain = simulated_gpu_evidence(NONCE_A, gpu_pki)
    return lambda policy: appraise_gpu(
        evidence, certificates=chain, expected_nonce=NONCE_A, policy=policy, at=datetime.now(UTC)
    )


def simulated_case(
    platform: str, pki: SimulatedPki, gpu_pki: SimulatedGpuPki
) -> tuple[Callable[[Policy], Appraisal], str]:
    if platform == "sev-snp":
        return _snp(pki), fingerprint(pki.amd.ark.cert)
    if platform == "tdx":
        return _tdx(pki), fingerprint(pki.intel.root.cert)
    return _gpu(gpu_pki), gpu_pki.root_fingerprint


def unmarked_case(
    platform: str, pki: SimulatedPki, gpu_pki: SimulatedGpuPki
) -> tuple[Callable[[Policy], Appraisal], str]:
    """Evidence whose chain ends at a root that is *not* marked simulated (same keys, renamed)."""
    if platform == "sev-snp":
        ark, ask, vcek = reissue_without_simulated_mark([pki.amd.ark, pki.amd.ask, pki.amd.vcek])
        other = dataclasses.replace(pki, amd=dataclasses.replace(pki.amd, ark=ark, ask=ask, vcek=vcek))
        return _snp(other), fingerprint(ark.cert)
    if platform == "tdx":
        root, ca, leaf = reissue_without_simulated_mark([pki.intel.root, pki.intel.pck_ca, pki.intel.pck_leaf])
        other = dataclasses.replace(pki, intel=dataclasses.replace(pki.intel, root=root, pck_ca=ca, pck_leaf=leaf))
        return _tdx(other), fingerprint(root.cert)
    chain = reissue_without_simulated_mark(
        [gpu_pki.root, gpu_pki.identity, gpu_pki.provisioner, gpu_pki.brom, gpu_pki.leaf]
    )
    other_gpu = dataclasses.replace(
        gpu_pki, **dict(zip(("root", "identity", "provisioner", "brom", "leaf"), chain, strict=True))
    )
    return _gpu(other_gpu), fingerprint(chain[0].cert)


PLATFORMS = ("sev-snp", "tdx", "nvidia-gpu")


def root_reasons(appraisal: Appraisal, platform: str) -> list[str]:
    return [r.message for r in appraisal.reasons if r.check == ROOT_CHECK[platform]]


def simulated_warnings(appraisal: Appraisal) -> list[str]:
    return [w for w in appraisal.warnings if "simulated root trusted by the policy" in w]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_listed_simulated_root_is_trusted_with_the_same_warning(
    platform: str, pki: SimulatedPki, gpu_pki: SimulatedGpuPki
) -> None:
    appraise, root = simulated_case(platform, pki, gpu_pki)
    appraisal = appraise(Policy(trusted_simulated_roots=frozenset({root})))
    assert appraisal.accepted, appraisal.reasons
    assert appraisal.claims["simulated"] is True
    (warning,) = simulated_warnings(appraisal)
    assert warning.endswith(
        f"ends at a simulated root trusted by the policy (fingerprint {root}): "
        "the evidence is simulated and proves nothing about hardware"
    )


@pytest.mark.parametrize("platform", PLATFORMS)
def test_unlisted_simulated_root_is_refused(platform: str, pki: SimulatedPki, gpu_pki: SimulatedGpuPki) -> None:
    appraise, root = simulated_case(platform, pki, gpu_pki)
    appraisal = appraise(Policy(trusted_simulated_roots=frozenset({"ab" * 32})))
    (message,) = root_reasons(appraisal, platform)
    assert "simulated" in message and root in message and "does not trust" in message
    assert appraisal.claims["simulated"] is True and not simulated_warnings(appraisal)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_listed_fingerprint_of_a_root_not_marked_simulated_is_refused(
    platform: str, pki: SimulatedPki, gpu_pki: SimulatedGpuPki
) -> None:
    appraise, root = unmarked_case(platform, pki, gpu_pki)
    trusted = appraise(Policy(trusted_simulated_roots=frozenset({root})))
    (message,) = root_reasons(trusted, platform)
    assert "only roots of the simulated TEE can be trusted that way" in message
    # the rest of the evidence is sound: the root is the only objection
    assert {r.check for r in trusted.reasons} == {ROOT_CHECK[platform]}, trusted.reasons
    assert trusted.claims["simulated"] is False and not simulated_warnings(trusted)
    unlisted = appraise(Policy())
    assert [r.check for r in unlisted.reasons] == [ROOT_CHECK[platform]]
    assert "only roots of the simulated TEE" not in unlisted.reasons[0].message


def test_vendor_roots_are_trusted_without_warning(vectors: Path) -> None:
    # SNP: the real Milan report and VCEK
    snp = appraise_snp(
        (vectors / "sev-snp" / "milan-report-v2.bin").read_bytes(),
        certificates=((vectors / "sev-snp" / "milan-report-v2.vcek.der").read_bytes(),),
        policy=Policy(allow_debug=True),
        at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    # TDX: the real Sapphire Rapids quote
    tdx = appraise_tdx(
        (vectors / "tdx" / "spr-quote-v4.dat").read_bytes(),
        policy=Policy(),
        at=datetime(2023, 7, 1, tzinfo=UTC),
    )
    # GPU: the real Hopper evidence and chain
    gpu = appraise_gpu(
        (vectors / "nvidia-gpu" / "hopper-attestation-report.hex").read_text(),
        certificates=(vectors / "nvidia-gpu" / "hopper-cert-chain.pem").read_bytes(),
        policy=Policy(),
        at=datetime(2024, 7, 1, tzinfo=UTC),
    )
    for platform, appraisal in (("sev-snp", snp), ("tdx", tdx), ("nvidia-gpu", gpu)):
        assert not root_reasons(appraisal, platform), appraisal.reasons
        assert appraisal.claims["simulated"] is False and not simulated_warnings(appraisal)


def test_trust_root_is_vendor_specific_and_exact() -> None:
    milan_ark = amd_root_chains()[0].root
    assert trust_root(milan_ark, Policy(), vendor=AMD_ROOTS).trusted
    intel_view = trust_root(milan_ark, Policy(), vendor=INTEL_ROOTS)
    assert not intel_view.trusted and "not the Intel SGX Root CA" in (intel_view.reason or "")
    # listing a vendor root's fingerprint changes nothing, and cannot make another vendor's root trusted
    listed = Policy(trusted_simulated_roots=frozenset({milan_ark.fingerprint_sha256}))
    assert not trust_root(milan_ark, listed, vendor=NVIDIA_ROOTS).trusted
    assert trust_root(milan_ark, listed, vendor=AMD_ROOTS) == trust_root(milan_ark, Policy(), vendor=AMD_ROOTS)
    # a plain collection of fingerprints works as well as a policy
    assert trust_root(milan_ark, frozenset(), vendor=AMD_ROOTS).trusted


def test_reissued_certificate_keeps_the_key(pki: SimulatedPki) -> None:
    (root,) = reissue_without_simulated_mark([pki.amd.ark])
    assert isinstance(root, Issued) and SIMULATED_ORGANIZATION not in parse_certificate(root.der).subject
    (gpu_root,) = reissue_without_simulated_mark([load_or_create_gpu_pki(shared_simulated_dir() / "gpu").root])
    assert isinstance(gpu_root, IssuedCertificate)

"""The platform registry and what is built on it: detection, the neutral claims every platform
reports, policy sections by platform, measurement pins, refused registrations, and that no
code outside the platform packages names a platform."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.appraise import appraise_raw, platform_choices
from attestation.errors import EvidenceFormatError, PlatformError, PolicyError
from attestation.platforms import registry
from attestation.platforms.base import NEUTRAL_CLAIMS, EvidenceInputs, Platform
from attestation.platforms.snp.validate import SnpPolicy
from attestation.platforms.tdx.validate import TdxPolicy
from attestation.policy import Policy

ROOT = Path(__file__).resolve().parent.parent


def test_the_built_ins_in_order() -> None:
    assert registry.builtin_names() == ("sev-snp", "tdx", "nvidia-gpu")
    assert registry.names()[:3] == registry.builtin_names()
    assert platform_choices()[:4] == ("auto", "sev-snp", "tdx", "nvidia-gpu")
    assert all(isinstance(p, Platform) for p in registry.platforms())
    assert [p.name for p in registry.platforms() if p.binds_report_data][:2] == ["sev-snp", "tdx"]


def test_detection_names_one_platform_or_says_what_it_looked_for(vectors: Path) -> None:
    assert registry.detect((vectors / "sev-snp/milan-report-v2.bin").read_bytes()).name == "sev-snp"
    assert registry.detect((vectors / "tdx/spr-quote-v4.dat").read_bytes()).name == "tdx"
    assert registry.detect((vectors / "nvidia-gpu/hopper-attestation-report.hex").read_bytes()).name == "nvidia-gpu"
    with pytest.raises(
        EvidenceFormatError,
        match=r"unrecognised evidence \(3 bytes\): not an SEV-SNP attestation report .*, "
        r"a TDX DCAP quote .* or NVIDIA SPDM evidence",
    ):
        registry.detect(b"abc")


@pytest.fixture
def greedy() -> Iterator[Platform]:
    """A platform that claims SEV-SNP reports as its own, registered for one test."""
    platform = replace(
        registry.get("tdx"),
        name="greedy",
        policy_key="greedy",
        policy_attribute=None,  # type: ignore[type-var]
        description="anything",
    )
    object.__setattr__(platform, "detect", lambda data: True)
    registry.register(platform)
    try:
        yield platform
    finally:
        registry.unregister("greedy")


def test_evidence_two_platforms_claim_is_refused(vectors: Path, greedy: Platform) -> None:
    with pytest.raises(EvidenceFormatError, match="looks like sev-snp and greedy evidence; name its platform"):
        registry.detect((vectors / "sev-snp/milan-report-v2.bin").read_bytes())
    assert "greedy" in platform_choices()


def test_every_platform_reports_the_neutral_claims_first(vectors: Path) -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    snp = appraise_raw(
        (vectors / "sev-snp/milan-report-v2.bin").read_bytes(),
        policy=Policy(allow_debug=True),
        at=at,
        inputs=EvidenceInputs(certificates=((vectors / "sev-snp/milan-report-v2.vcek.der").read_bytes(),)),
    )
    tdx = appraise_raw(
        (vectors / "tdx/spr-quote-v4.dat").read_bytes(),
        policy=Policy(),
        at=datetime(2023, 7, 1, tzinfo=UTC),
        inputs=EvidenceInputs(collateral_dir=vectors / "tdx/collateral"),
    )
    gpu = appraise_raw(
        (vectors / "nvidia-gpu/hopper-attestation-report.hex").read_bytes(),
        policy=Policy(),
        at=at,
        inputs=EvidenceInputs(certificates=((vectors / "nvidia-gpu/hopper-cert-chain.pem").read_bytes(),)),
    )
    for appraisal in (snp, tdx, gpu):
        assert tuple(appraisal.claims)[: len(NEUTRAL_CLAIMS)] == NEUTRAL_CLAIMS, appraisal.platform
        assert appraisal.claims["platform"] == appraisal.platform
    assert snp.claims["measurement"] == snp.claims["measurement"] and snp.claims["signing_key"] == "vcek"
    assert snp.claims["tcb_status"] is None and snp.claims["simulated"] is False
    assert tdx.claims["measurement"] == tdx.claims["mr_td"] and tdx.claims["tcb_status"] == "NotSupported"
    assert tdx.claims["signing_key"] == "pck" and tdx.claims["debug"] is False
    assert (
        gpu.claims["measurement"] is None
        and gpu.claims["debug"] is None
        and gpu.claims["signing_key"] == "gpu-attestation-key"
    )


def test_policy_sections_come_from_the_registry() -> None:
    pinned = SnpPolicy(measurement=frozenset({bytes(48)}))
    policy = Policy(snp=pinned)
    assert (
        policy.snp is pinned and policy.section("sev-snp") is pinned and policy.section("sev-snp", SnpPolicy) is pinned
    )
    assert policy.tdx == TdxPolicy() and policy.gpu == registry.get("nvidia-gpu").policy_section()
    again = replace(policy, tdx=TdxPolicy(require_sept_ve_disable=True), require_gpu=True)
    assert again.snp is pinned and again.tdx.require_sept_ve_disable and again.require_gpu
    assert Policy(sections={"sev-snp": pinned}) == policy and hash(Policy(sections={"sev-snp": pinned})) == hash(policy)
    assert Policy.from_toml('[sev-snp]\nmeasurement = ["' + "00" * 48 + '"]\n').snp == pinned
    assert Policy().platforms == frozenset(registry.builtin_names())
    with pytest.raises(TypeError, match="unexpected keyword argument 'sgx'"):
        Policy(sgx=pinned)
    with pytest.raises(TypeError, match="must be a TdxPolicy"):
        Policy(tdx=pinned)
    with pytest.raises(PolicyError, match="unknown platform"):
        Policy(platforms=frozenset({"sgx"}))
    with pytest.raises(PolicyError, match=r"\[policy\]: unknown key\(s\) sgx"):
        Policy.from_toml("[sgx]\n")
    with pytest.raises(AttributeError):
        _ = policy.sgx


def test_a_policy_pins_the_launch_measurement_of_every_cpu_platform_it_accepts() -> None:
    assert Policy().unpinned_measurements() == ["[sev-snp] measurement", "[tdx] mr_td"]
    assert (
        Policy(
            platforms=frozenset({"sev-snp", "nvidia-gpu"}), snp=SnpPolicy(measurement=frozenset({bytes(48)}))
        ).unpinned_measurements()
        == []
    )
    assert (
        Policy(platforms=frozenset({"tdx"}), tdx=TdxPolicy(mr_td=frozenset({bytes(48)}))).unpinned_measurements() == []
    )


@pytest.mark.parametrize(
    "change, error",
    [
        ({"name": "tdx"}, "'tdx' is a built-in platform and cannot be replaced"),
        ({"name": "auto"}, "not a usable platform name"),
        ({"name": "app-attest"}, "not a usable platform name"),
        ({"name": "Bad Name"}, "not a usable platform name"),
        ({"name": "other", "policy_key": "platforms"}, "is empty or a common policy key"),
        ({"name": "other", "policy_key": "sev-snp"}, r"policy key \[sev-snp\] is already platform sev-snp's"),
        (
            {"name": "other", "policy_key": "other", "policy_attribute": "snp"},
            "policy attribute 'snp' is already platform sev-snp's",
        ),
    ],
)
def test_registrations_that_would_confuse_are_refused(change: dict[str, str], error: str) -> None:
    platform = replace(registry.get("tdx"), **change)  # type: ignore[type-var]
    with pytest.raises(PlatformError, match=error):
        registry.register(platform)
    assert registry.names()[:3] == registry.builtin_names()
    with pytest.raises(PlatformError, match="not a Platform"):
        registry.register(object())  # type: ignore[arg-type]
    with pytest.raises(PlatformError, match="unknown platform 'sgx'; known: sev-snp, tdx, nvidia-gpu"):
        registry.get("sgx")


def test_no_code_outside_the_platform_packages_names_a_platform() -> None:
    """The switchboards are gone: code asks the registry, reads the neutral claims, or imports a
    platform package's name constant (``attestation.platforms.snp.NAME``)."""
    literal = re.compile(r"""["'](sev-snp|mr_td)["']""")
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if (
            relative.startswith(("attestation/platforms/", "tests/", "."))
            or "/." in relative
            or "site-packages" in relative
        ):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if literal.search(line):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []

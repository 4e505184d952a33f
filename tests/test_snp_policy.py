"""SNP policy: TOML parsing, one check per field, every failure reported."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from attestation.errors import PolicyError
from attestation.findings import Appraisal
from attestation.platforms.snp.abi import flags_word
from attestation.platforms.snp.appraise import appraise_snp
from attestation.platforms.snp.validate import MinimumTcb, SnpPolicy
from attestation.policy import Policy
from enclave.simulated.pki import SIM_SNP_TCB, SimulatedPki, load_or_create
from snp_factory import sign_report, sim_chain

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPki:
    return load_or_create(tmp_path_factory.mktemp("sim-tee"))


def appraise(pki: SimulatedPki, toml: str, **fields: object) -> Appraisal:
    root = pki.trusted_root_fingerprints()["sev-snp"]
    policy = Policy.from_toml(f'trusted_simulated_roots = ["{root}"]\n' + toml)
    return appraise_snp(sign_report(pki, **fields), certificates=sim_chain(pki), policy=policy, at=NOW)


def checks(appraisal: Appraisal) -> set[str]:
    return {r.check for r in appraisal.reasons}


def test_baseline_is_accepted(pki: SimulatedPki) -> None:
    assert appraise(pki, "").accepted


@pytest.mark.parametrize(
    ("toml", "fields", "check"),
    [
        ("", {"policy": 0x30000 | 1 << 19}, "snp.policy.allow_debug"),
        ('report_data = "' + "ab" * 64 + '"', {}, "snp.policy.report_data"),
        ('[sev-snp]\nmeasurement = ["' + "11" * 48 + '"]', {"measurement": bytes(48)}, "snp.policy.measurement"),
        ('[sev-snp]\nhost_data = "' + "22" * 32 + '"', {}, "snp.policy.host_data"),
        ('[sev-snp]\nid_key_digest = ["' + "33" * 48 + '"]', {}, "snp.policy.id_key_digest"),
        ('[sev-snp]\nauthor_key_digest = ["' + "44" * 48 + '"]', {}, "snp.policy.author_key_digest"),
        ('[sev-snp]\nfamily_id = ["' + "55" * 16 + '"]', {}, "snp.policy.family_id"),
        ('[sev-snp]\nimage_id = ["' + "66" * 16 + '"]', {}, "snp.policy.image_id"),
        ('[sev-snp]\nchip_id = ["' + "77" * 64 + '"]', {}, "snp.policy.chip_id"),
        ("", {"vmpl": 1}, "snp.policy.vmpl"),
        ("[sev-snp]\nminimum_guest_svn = 3", {"guest_svn": 2}, "snp.policy.minimum_guest_svn"),
        (f"[sev-snp.minimum_tcb]\nsnp = {SIM_SNP_TCB['snp'] + 1}", {}, "snp.policy.minimum_tcb"),
        (
            f"[sev-snp.minimum_launch_tcb]\nmicrocode = {SIM_SNP_TCB['microcode'] + 1}",
            {},
            "snp.policy.minimum_launch_tcb",
        ),
        ('[sev-snp]\nminimum_firmware = "1.56"', {}, "snp.policy.minimum_firmware"),
        ("", {"current_minor": 56}, "snp.policy.allow_provisional_firmware"),
        ('[sev-snp]\nminimum_abi = "1.51"', {"policy": 0x30000 | 1 << 8 | 50}, "snp.policy.minimum_abi"),
        ("", {"policy": 0x30000 | 1 << 18}, "snp.policy.allow_migrate_ma"),
        ("[sev-snp]\nallow_smt = false", {"platform_info": 1}, "snp.policy.allow_smt"),
        ("[sev-snp]\nrequire_single_socket = true", {}, "snp.policy.require_single_socket"),
        ("[sev-snp]\nrequire_tsme = true", {"platform_info": 1}, "snp.policy.require_tsme"),
        ("[sev-snp]\nrequire_ciphertext_hiding = true", {}, "snp.policy.require_ciphertext_hiding"),
        ("[sev-snp]\nrequire_id_block = true", {}, "snp.policy.require_id_block"),
        ("[sev-snp]\nrequire_author_key = true", {"id_key_digest": b"\x01" * 48}, "snp.policy.require_author_key"),
        ('[sev-snp]\nsigning_keys = ["vlek"]', {}, "snp.policy.signing_keys"),
        ('[sev-snp]\nproducts = ["genoa", "turin"]', {}, "snp.policy.products"),
        ('platforms = ["tdx"]', {}, "policy.platforms"),
    ],
)
def test_each_check_bites(pki: SimulatedPki, toml: str, fields: dict, check: str) -> None:
    if check == "policy.platforms":  # applied by the dispatcher, not appraise_snp
        from attestation.appraise import EvidenceInputs, appraise_raw

        root = pki.trusted_root_fingerprints()["sev-snp"]
        policy = Policy.from_toml(f'trusted_simulated_roots = ["{root}"]\n' + toml)
        appraisal = appraise_raw(
            sign_report(pki), policy=policy, at=NOW, inputs=EvidenceInputs(certificates=sim_chain(pki))
        )
    else:
        appraisal = appraise(pki, toml, **fields)
    assert checks(appraisal) == {check}, appraisal.reasons


def test_passing_values_are_accepted(pki: SimulatedPki) -> None:
    toml = f"""
[sev-snp]
measurement = ["{"11" * 48}", "{"12" * 48}"]
vmpl = [0, 1]
minimum_guest_svn = 2
minimum_firmware = "1.55.21"
signing_keys = ["vcek"]
products = ["milan"]
require_id_block = true
require_author_key = true
allow_migrate_ma = true
[sev-snp.minimum_tcb]
bootloader = {SIM_SNP_TCB["bootloader"]}
snp = {SIM_SNP_TCB["snp"]}
"""
    appraisal = appraise(
        pki,
        toml,
        measurement=b"\x12" * 48,
        vmpl=1,
        guest_svn=2,
        id_key_digest=b"\x01" * 48,
        author_key_digest=b"\x02" * 48,
        flags=flags_word(author_key_en=True),
        policy=0x30000 | 1 << 18,
    )
    assert appraisal.accepted, appraisal.reasons


def test_every_failure_is_reported(pki: SimulatedPki) -> None:
    toml = f"""
[sev-snp]
measurement = ["{"11" * 48}"]
minimum_guest_svn = 9
[sev-snp.minimum_tcb]
microcode = 255
"""
    appraisal = appraise(pki, toml, policy=0x30000 | 1 << 19 | 1 << 18, vmpl=2)
    assert checks(appraisal) == {
        "snp.policy.allow_debug",
        "snp.policy.measurement",
        "snp.policy.minimum_guest_svn",
        "snp.policy.minimum_tcb",
        "snp.policy.vmpl",
        "snp.policy.allow_migrate_ma",
    }
    # REPORTED, CURRENT and COMMITTED TCB each fall short: three reasons under one check.
    assert sum(r.check == "snp.policy.minimum_tcb" for r in appraisal.reasons) == 3


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[sev-snp]\nmeasurment = []", "unknown key"),
        ('[sev-snp]\nmeasurement = ["abcd"]', "48 bytes"),
        ("[sev-snp]\nvmpl = 4", "0..3"),
        ("[sev-snp]\nvmpl = []", "0..3"),
        ('[sev-snp]\nminimum_firmware = "one"', "firmware version"),
        ('[sev-snp]\nsigning_keys = ["ask"]', "unknown value"),
        ("[sev-snp]\nsigning_keys = []", "accepts nothing"),
        ('[sev-snp]\nproducts = ["rome"]', "unknown value"),
        ("[sev-snp.minimum_tcb]\nsnp = 256", "out of range"),
        ("[sev-snp.minimum_tcb]\nucode = 1", "unknown key"),
        ("[sev-snp]\nallow_smt = 1", "true or false"),
    ],
)
def test_malformed_sections_are_refused(toml: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_toml(toml)


def test_defaults() -> None:
    policy = SnpPolicy()
    assert policy.vmpl == frozenset({0}) and not policy.allow_migrate_ma and not policy.allow_provisional_firmware
    assert policy.minimum_tcb == MinimumTcb() and policy.minimum_tcb.is_empty


def test_example_policy_parses() -> None:
    example = Path(__file__).resolve().parent.parent / "attestation" / "examples" / "policy.toml"
    policy = Policy.load(example)
    assert policy.snp.measurement and policy.tdx.mr_td

"""The [nvidia-gpu] policy: golden measurements (explicit and from RIM files), versions, settings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.errors import CollateralFormatError, PolicyError
from attestation.platforms.nvidia.abi import GpuEvidence, parse_gpu_evidence_hex
from attestation.platforms.nvidia.appraise import appraise_gpu
from attestation.platforms.nvidia.rim import combine_golden, load_rim, parse_rim
from attestation.platforms.nvidia.validate import GpuPolicy
from attestation.policy import Policy

AT = datetime(2024, 7, 1, tzinfo=UTC)
ZERO = "00" * 48


@pytest.fixture(scope="module")
def report_hex(vectors: Path) -> str:
    return (vectors / "nvidia-gpu" / "hopper-attestation-report.hex").read_text()


@pytest.fixture(scope="module")
def chain_pem(vectors: Path) -> bytes:
    return (vectors / "nvidia-gpu" / "hopper-cert-chain.pem").read_bytes()


@pytest.fixture(scope="module")
def evidence(report_hex: str) -> GpuEvidence:
    return parse_gpu_evidence_hex(report_hex)


@pytest.fixture(scope="module")
def actual(evidence: GpuEvidence) -> dict[int, str]:
    return {index: value.hex() for index, value in evidence.measurements().items()}


def appraise(report_hex: str, chain_pem: bytes, evidence: GpuEvidence, gpu: dict, **common):
    policy = Policy.from_dict({"nvidia-gpu": gpu, **common})
    return appraise_gpu(report_hex, certificates=chain_pem, expected_nonce=evidence.nonce, policy=policy, at=AT)


def rim_xml(
    version: str, resources: list[tuple[int, bool, list[str]]], *, signed: bool = True, extra_payload: str = ""
) -> str:
    """A RIM shaped like NVIDIA's (SWID 2015 namespace, xmlenc#sha384 hash attributes, RIM index from 0)."""
    lines = []
    for index, active, values in resources:
        hashes = " ".join(f'ns2:Hash{i}="{v}"' for i, v in enumerate(values))
        lines.append(
            f'    <ns0:Resource type="Measurement" index="{index}" active="{active}" alternatives="{len(values)}" '
            f'{hashes} name="Measurement_{index}" size="48"/>'
        )
    signature = (
        '<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:SignedInfo/>'
        "<ds:SignatureValue>AAAA</ds:SignatureValue></ds:Signature>"
        if signed
        else ""
    )
    return (
        '<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" '
        'xmlns:ns0="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" '
        'xmlns:ns2="http://www.w3.org/2001/04/xmlenc#sha384" corpus="false" name="GH100" patch="false" '
        'supplemental="false" tagId="test-tag" version="1.0" tagVersion="0">\n'
        '  <ns0:Entity name="NVIDIA Corporation" role="softwareCreator tagCreator"/>\n'
        '  <ns0:Meta xmlns:ns1="https://trustedcomputinggroup.org/resource/'
        'tcg-reference-integrity-manifest-rim-information-model/" '
        f'colloquialVersion="{version}" edition="GPU" product="GH100" revision="r1" PayloadType="direct" '
        'ns1:BindingSpec="RIMIM"/>\n'
        '  <ns0:Payload xmlns:SHA384="http://www.w3.org/2001/04/xmlenc#sha384">\n'
        + "\n".join(lines)
        + extra_payload
        + "\n  </ns0:Payload>\n"
        + signature
        + "\n</SoftwareIdentity>\n"
    )


@pytest.fixture()
def rims(tmp_path: Path, actual: dict[int, str]) -> dict[str, Path]:
    """A driver RIM and a VBIOS RIM whose golden values are the Hopper report's (SPDM index = RIM index + 1)."""
    vbios = [(i - 1, True, [actual[i]]) for i in range(1, 21)]
    vbios[11] = (11, True, ["ab" * 48, actual[12], ZERO])  # SPDM 12: three alternatives, the report's among them
    driver = [
        (i - 1, i <= 41, [actual[i]] if i <= 41 else ["ff" * 48]) for i in range(21, 65)
    ]  # inactive ones are wrong
    paths = {
        "vbios": tmp_path / "vbios-96.00.9F.00.01.swidtag",
        "driver": tmp_path / "driver-550.90.07.swidtag",
        "driver-old": tmp_path / "driver-535.104.05.swidtag",
    }
    paths["vbios"].write_text(rim_xml("96.00.9F.00.01", vbios))
    paths["driver"].write_text(rim_xml("550.90.07", driver))
    paths["driver-old"].write_text(rim_xml("535.104.05", [(i - 1, True, ["11" * 48]) for i in range(21, 42)]))
    return paths


# --- the RIM loader -----------------------------------------------------------------------


def test_rim_loader_maps_rim_indices_to_spdm_indices(rims: dict[str, Path], actual: dict[int, str]) -> None:
    rim = load_rim(rims["vbios"])
    assert (rim.colloquial_version, rim.product, rim.edition, rim.tag_id, rim.name) == (
        "96.00.9F.00.01",
        "GH100",
        "GPU",
        "test-tag",
        "GH100",
    )
    assert rim.has_signature  # present, and not verified
    golden = rim.golden_measurements()
    assert sorted(golden) == list(range(1, 21))
    assert golden[4] == {bytes.fromhex(actual[4])}
    assert golden[12] == {bytes.fromhex("ab" * 48), bytes.fromhex(actual[12]), bytes(48)}
    assert rim.version_matches("96.00.9f.00.01") and not rim.version_matches("96.00.9f.00.02")
    driver = load_rim(rims["driver"])
    assert sorted(driver.golden_measurements()) == list(range(21, 42))  # inactive resources are no golden values
    assert not (driver.measurements[-1].active)


def test_nvidia_sample_rim_index_convention(actual: dict[int, str]) -> None:
    # NVIDIA's sample VBIOS RIM for this board (1010_0200_882_96005E0001) lists at RIM index 3 the value
    # the Hopper report carries in SPDM block 4: RIM index i is SPDM index i + 1.
    rim = parse_rim(
        rim_xml(
            "96.00.5E.00.01",
            [
                (
                    3,
                    True,
                    [
                        "73bbf35822549e28ba8fb2671fb7b58f46424a0069205b3ecf1d0fa762adef90b538cc9d692eb5c050147f2f1e8214ab"
                    ],
                )
            ],
        ).encode()
    )
    assert rim.golden_measurements()[4] == {bytes.fromhex(actual[4])}


def test_combined_rims_must_not_overlap(rims: dict[str, Path], tmp_path: Path) -> None:
    vbios, driver = load_rim(rims["vbios"]), load_rim(rims["driver"])
    assert sorted(combine_golden([vbios, driver])) == list(range(1, 42))
    overlap = parse_rim(rim_xml("550.90.07", [(3, True, [ZERO])]).encode(), "overlap.swidtag")
    with pytest.raises(CollateralFormatError, match="index 4 is active in both"):
        combine_golden([vbios, overlap])


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("<!DOCTYPE x [<!ENTITY a 'b'>]><SoftwareIdentity/>", "DOCTYPE"),
        ("<SoftwareIdentity", "not well-formed"),
        ('<x xmlns="urn:other"/>', "not a SWID SoftwareIdentity"),
        (rim_xml("1.0", []), "no measurements"),
        (rim_xml("", [(0, True, [ZERO])]), "colloquialVersion"),
        (rim_xml("1.0", [(0, True, [ZERO]), (0, False, [ZERO])]), "index 0 appears more than once"),
        (rim_xml("1.0", [(0, True, ["00" * 47])]), "Hash0 is not 48 bytes"),
        (rim_xml("1.0", [(0, True, ["zz" * 48])]), "Hash0 is not 48 bytes"),
        (rim_xml("1.0", [(255, True, [ZERO])]), "out of range"),
        (rim_xml("1.0", [(0, True, [ZERO])]).replace('active="True"', 'active="yes"'), "active"),
        (rim_xml("1.0", [(0, True, [ZERO])]).replace('alternatives="1"', 'alternatives="2"'), "Hash1 is missing"),
        (
            rim_xml("1.0", [(0, True, [ZERO])]).replace("ns2:Hash0", 'ns2:Hash0="' + ZERO + '" ns2:Hash1'),
            "beyond alternatives",
        ),
        (rim_xml("1.0", [(0, True, [ZERO])]).replace('index="0"', 'index="-1"'), "non-negative integer"),
        (rim_xml("1.0", [(0, True, [ZERO])]).replace('type="Measurement"', 'type="File"'), "not 'Measurement'"),
        (rim_xml("1.0", [(0, True, [ZERO])], extra_payload="<ns0:Other/>"), "unexpected element <Other>"),
        (
            rim_xml("1.0", [(0, True, [ZERO])])
            .replace("<ns0:Payload", "<ns0:Unused/><ns0:Payload")
            .replace("</ns0:Payload>", "</ns0:Payload><ns0:Payload/>"),
            "exactly one <Payload>",
        ),
    ],
)
def test_malformed_rims_are_rejected(document: str, message: str) -> None:
    with pytest.raises(CollateralFormatError, match=message):
        parse_rim(document.encode())


def test_rim_file_limits(tmp_path: Path) -> None:
    with pytest.raises(CollateralFormatError, match="cannot read"):
        load_rim(tmp_path / "missing.swidtag")
    big = tmp_path / "big.swidtag"
    big.write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(CollateralFormatError, match="larger than"):
        load_rim(big)


# --- GpuPolicy.from_table -------------------------------------------------------------------


def test_policy_table_is_read_and_checked(rims: dict[str, Path]) -> None:
    policy = GpuPolicy.from_table(
        {
            "allowed_architectures": ["Hopper"],
            "allowed_driver_versions": ["550.90.07"],
            "allowed_vbios_versions": ["96.00.9F.00.01"],
            "require_nonce": True,
            "protected_pcie": "disabled",
            "driver_rims": [str(rims["driver"]), str(rims["driver-old"])],
            "vbios_rims": str(rims["vbios"]),
            "measurements": {"4": "AB" * 48, "12": ["00" * 48, "0x" + "11" * 48]},
        }
    )
    assert policy.allowed_vbios_versions == {"96.00.9f.00.01"}
    assert policy.measurements[12] == {bytes(48), b"\x11" * 48}
    assert len(policy.driver_rims) == 2 and policy.uses_rims
    assert GpuPolicy.from_table({}) == GpuPolicy()
    assert isinstance(hash(policy), int) and isinstance(hash(Policy(gpu=policy)), int)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"golden": {}}, "unknown key"),
        ({"allowed_architectures": ["Ampere"]}, "unknown value"),
        ({"protected_pcie": "on"}, "protected_pcie"),
        ({"protected_pcie": True}, "protected_pcie"),
        ({"require_nonce": "yes"}, "require_nonce"),
        ({"measurements": {"0": ZERO}}, "SPDM measurement index"),
        ({"measurements": {"x": ZERO}}, "SPDM measurement index"),
        ({"measurements": {"1": []}}, "non-empty list"),
        ({"measurements": {"1": "xyz"}}, "hex"),
        ({"measurements": ["1"]}, "expected a table"),
        ({"driver_rims": [1]}, "list of RIM file paths"),
        ({"driver_rims": ["/nonexistent/rim.swidtag"]}, "cannot read RIM"),
    ],
)
def test_bad_policy_tables(table: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        GpuPolicy.from_table(table)


def test_two_rims_for_the_same_version_are_refused(rims: dict[str, Path]) -> None:
    with pytest.raises(PolicyError, match=r"both for version 550\.90\.07"):
        GpuPolicy.from_table({"driver_rims": [str(rims["driver"]), str(rims["driver"])]})


def test_policy_from_toml(rims: dict[str, Path]) -> None:
    policy = Policy.from_toml(
        f'[nvidia-gpu]\nallowed_driver_versions = ["550.90.07"]\nvbios_rims = ["{rims["vbios"]}"]\n'
        '[nvidia-gpu.measurements]\n"4" = "' + "00" * 48 + '"\n'
    )
    assert policy.gpu.allowed_driver_versions == {"550.90.07"}
    assert 4 in policy.gpu.measurements


# --- appraisal against the policy -----------------------------------------------------------


def test_rim_golden_values_accept_the_real_report(report_hex, chain_pem, evidence, rims) -> None:
    appraisal = appraise(
        report_hex,
        chain_pem,
        evidence,
        {
            "driver_rims": [str(rims["driver"]), str(rims["driver-old"])],
            "vbios_rims": [str(rims["vbios"])],
            "allowed_architectures": ["Hopper"],
            "allowed_driver_versions": ["550.90.07"],
            "allowed_vbios_versions": ["96.00.9f.00.01"],
            "require_nonce": True,
            "protected_pcie": "disabled",
        },
    )
    assert appraisal.accepted, appraisal.reasons
    warnings = [w for w in appraisal.warnings if "RIM" in w]
    assert len(warnings) == 2 and all("signature was not verified" in w for w in warnings)


def test_golden_mismatch_is_reported_per_index(report_hex, chain_pem, evidence, actual) -> None:
    appraisal = appraise(
        report_hex,
        chain_pem,
        evidence,
        {
            "measurements": {
                "2": actual[2],  # matches
                "4": "ab" * 48,  # differs
                "12": ["cd" * 48, ZERO],  # none of the alternatives
                "65": ZERO,  # not reported at all
            }
        },
    )
    assert [r.check for r in appraisal.reasons] == ["gpu.measurement.4", "gpu.measurement.12", "gpu.measurement.65"]
    assert actual[4] in appraisal.reasons[0].message and "ab" * 48 in appraisal.reasons[0].message
    assert "missing" in appraisal.reasons[2].message


def test_rim_mismatch_and_explicit_override(report_hex, chain_pem, evidence, actual, tmp_path) -> None:
    wrong = [(i - 1, True, [actual[i]]) for i in range(1, 21)]
    wrong[2] = (2, True, ["ee" * 48])  # SPDM 3
    wrong[6] = (6, True, ["ee" * 48])  # SPDM 7
    path = tmp_path / "vbios.swidtag"
    path.write_text(rim_xml("96.00.9f.00.01", wrong))
    appraisal = appraise(report_hex, chain_pem, evidence, {"vbios_rims": [str(path)]})
    assert [r.check for r in appraisal.reasons] == ["gpu.measurement.3", "gpu.measurement.7"]
    # An explicit pin replaces the RIM's values for its index.
    appraisal = appraise(report_hex, chain_pem, evidence, {"vbios_rims": [str(path)], "measurements": {"3": actual[3]}})
    assert [r.check for r in appraisal.reasons] == ["gpu.measurement.7"]


def test_no_rim_for_the_reported_versions(report_hex, chain_pem, evidence, rims) -> None:
    appraisal = appraise(report_hex, chain_pem, evidence, {"driver_rims": [str(rims["driver-old"])]})
    assert [r.check for r in appraisal.reasons] == ["gpu.rim.driver"]
    assert "550.90.07" in appraisal.reasons[0].message and "535.104.05" in appraisal.reasons[0].message


def test_conflicting_rims_are_a_reason(report_hex, chain_pem, evidence, actual, tmp_path) -> None:
    vbios = tmp_path / "vbios.swidtag"
    vbios.write_text(rim_xml("96.00.9f.00.01", [(3, True, [actual[4]])]))
    driver = tmp_path / "driver.swidtag"
    driver.write_text(rim_xml("550.90.07", [(3, True, [actual[4]])]))
    appraisal = appraise(report_hex, chain_pem, evidence, {"vbios_rims": [str(vbios)], "driver_rims": [str(driver)]})
    assert [r.check for r in appraisal.reasons] == ["gpu.rim.conflict"]


def test_every_setting_check_fails_together(report_hex, chain_pem, evidence) -> None:
    appraisal = appraise_gpu(
        report_hex,
        certificates=chain_pem,
        at=AT,
        policy=Policy.from_dict(
            {
                "nvidia-gpu": {
                    "allowed_architectures": ["Blackwell"],
                    "allowed_driver_versions": ["535.104.05"],
                    "allowed_vbios_versions": ["96.00.74.00.1c"],
                    "require_nonce": True,
                    "protected_pcie": "enabled",
                    "measurements": {"1": "01" * 48},
                }
            }
        ),
    )
    assert [r.check for r in appraisal.reasons] == [
        "gpu.arch",
        "gpu.driver_version",
        "gpu.vbios_version",
        "gpu.nonce",
        "gpu.protected_pcie",
        "gpu.measurement.1",
    ]
    assert "55" in appraisal.reasons[4].message

"""A platform from test code alone (``tests/toy_platform.py``), registered through the
``attestfl.platforms`` entry point of a distribution written into a temporary directory on
PYTHONPATH: ``attestfl evidence verify`` (a real subprocess) appraises its raw evidence and
evidence bundles carrying it, the aggregator's admission admits a site on it, and nothing in
the package was edited. Broken or colliding plug-ins are refused with one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import toy_platform
from attestation.bundle import appraise_bundle
from attestation.bundle_abi import cpu_platforms, encode_bundle
from attestation.platforms import registry
from attestation.platforms.base import NEUTRAL_CLAIMS
from attestation.policy import Policy
from enclave.attester import make_bundle
from enclave.identity import SiteIdentity
from enclave.keys import EnclaveKeys
from protocol.admission import (
    AdmissionPolicy,
    IdentityProof,
    appraise_site,
    read_site_rule,
)
from protocol.formulas import admission_nonce
from toy_attester import ToyAttester

MEASUREMENT = hashlib.sha256(b"the toy guest").digest()
NONCE = bytes(range(32))
MODULE = "attestfl_toy_platform"


def write_distribution(directory: Path, entry_points: str, *, module: bool = True) -> Path:
    """A distribution as an installer leaves it: the module and ``<name>.dist-info`` with
    METADATA and ``entry_points.txt``, in ``directory`` (to go on PYTHONPATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    if module:
        shutil.copyfile(Path(toy_platform.__file__), directory / f"{MODULE}.py")
    info = directory / "attestfl_toy_platform-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: attestfl-toy-platform\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    return directory


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    return write_distribution(tmp_path / "site-packages", f"[attestfl.platforms]\ntoy = {MODULE}:PLATFORM\n")


@pytest.fixture
def vendor(tmp_path: Path) -> toy_platform.ToyVendor:
    return toy_platform.ToyVendor.load_or_create(tmp_path / "toy-vendor")


@pytest.fixture
def registered() -> Iterator[None]:
    """The toy platform registered in this process (the subprocesses find it by its entry point)."""
    registry.register(toy_platform.PLATFORM)
    try:
        yield
    finally:
        registry.unregister(toy_platform.NAME)


def attestfl(dist: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(dist), os.environ.get("PYTHONPATH", ""), str(Path.cwd())]))
    return subprocess.run(
        [sys.executable, "-m", "attestfl.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def toy_policy(vendor: toy_platform.ToyVendor, *, measurement: bytes = MEASUREMENT, platforms: str = '["toy"]') -> str:
    return (
        f'platforms = {platforms}\ntrusted_simulated_roots = ["{vendor.root_fingerprint}"]\n'
        f'[toy]\nmeasurement = ["{measurement.hex()}"]\n'
    )


def verify(dist: Path, tmp_path: Path, evidence: bytes, policy: str, *extra: str) -> tuple[int, dict, str]:
    (tmp_path / "evidence.bin").write_bytes(evidence)
    (tmp_path / "policy.toml").write_text(policy)
    done = attestfl(
        dist, "evidence", "verify", "--json", "--policy", "policy.toml", *extra, "evidence.bin", cwd=tmp_path
    )
    return done.returncode, json.loads(done.stdout), done.stderr


def test_the_entry_point_lists_the_platform_after_the_built_ins(dist: Path, tmp_path: Path) -> None:
    done = attestfl(dist, "evidence", "platforms", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["platforms"]
    assert [r["name"] for r in rows] == [*registry.builtin_names(), "toy"]
    toy = rows[-1]
    assert toy["module"] == MODULE and toy["cpu"] and not toy["default"] and toy["policy_section"] == "toy"


def test_attestfl_evidence_verify_appraises_toy_evidence(
    dist: Path, tmp_path: Path, vendor: toy_platform.ToyVendor
) -> None:
    evidence = vendor.evidence(measurement=MEASUREMENT, report_data=bytes(64))
    code, result, stderr = verify(
        dist, tmp_path, evidence, toy_policy(vendor), "--cert", str(tmp_path / "toy-vendor/root.der")
    )
    assert code == 0, (result, stderr)
    assert result["accepted"] and result["platform"] == "toy"
    claims = result["claims"]
    assert list(claims)[: len(NEUTRAL_CLAIMS)] == list(NEUTRAL_CLAIMS)
    assert claims["platform"] == "toy" and claims["measurement"] == MEASUREMENT.hex() and claims["debug"] is False
    assert claims["simulated"] is True and any("simulated root trusted by the policy" in w for w in result["warnings"])


def test_toy_evidence_that_fails_its_checks_is_rejected_with_every_reason(
    dist: Path, tmp_path: Path, vendor: toy_platform.ToyVendor
) -> None:
    root = str(tmp_path / "toy-vendor/root.der")
    evidence = bytearray(vendor.evidence(measurement=MEASUREMENT, report_data=bytes(64), debug=True))
    evidence[20] ^= 1  # inside the signed measurement
    code, result, _ = verify(dist, tmp_path, bytes(evidence), toy_policy(vendor), "--cert", root)
    assert code == 1
    assert {r.split(":")[0] for r in result["reasons"]} == {
        "toy.signature",
        "toy.policy.allow_debug",
        "toy.policy.measurement",
    }
    # A third-party platform is accepted only by a policy that names it; its root only when listed.
    code, result, _ = verify(
        dist, tmp_path, vendor.evidence(measurement=MEASUREMENT, report_data=bytes(64)), "", "--cert", root
    )
    assert code == 1 and {r.split(":")[0] for r in result["reasons"]} == {"policy.platforms", "toy.chain.root"}


def test_an_evidence_bundle_carries_toy_evidence(dist: Path, tmp_path: Path, registered: None) -> None:
    assert "toy" in cpu_platforms()
    attester = ToyAttester(tmp_path / "toy-vendor", MEASUREMENT)
    bundle = make_bundle(attester, EnclaveKeys(), NONCE)
    in_process = appraise_bundle(
        bundle,
        expected_nonce=NONCE,
        policy=Policy.from_toml(toy_policy(attester.vendor)),
        at=datetime.now(UTC),
    )
    assert in_process.accepted, in_process.reasons
    code, result, stderr = verify(
        dist, tmp_path, encode_bundle(bundle), toy_policy(attester.vendor), "--nonce", NONCE.hex()
    )
    assert code == 0, (result, stderr)
    assert result["platform"] == "toy" and result["claims"]["bundle"]["nonce"] == NONCE.hex()
    # The binding holds for the toy platform's report_data as for any other.
    code, result, _ = verify(
        dist, tmp_path, encode_bundle(bundle), toy_policy(attester.vendor), "--nonce", bytes(32).hex()
    )
    assert code == 1 and [r.split(":")[0] for r in result["reasons"]] == ["binding.nonce"]


def test_admission_admits_a_site_on_the_toy_platform(tmp_path: Path, registered: None) -> None:
    attester = ToyAttester(tmp_path / "toy-vendor", MEASUREMENT)
    identity = SiteIdentity.generate("toy-site")
    rule = read_site_rule(
        "toy-site",
        {"platforms": ["toy"], "identity_keys": [identity.public.hex()], "measurements": [], "max_weight": 10},
        tmp_path,
    )
    policy = AdmissionPolicy(sites={"toy-site": rule}, attestation=Policy.from_toml(toy_policy(attester.vendor)))
    keys, aggregator = EnclaveKeys(), EnclaveKeys().public
    challenge = os.urandom(32)
    evidence = encode_bundle(make_bundle(attester, keys, admission_nonce("toy-site", challenge)))
    appraisal = appraise_site(
        policy,
        site_id="toy-site",
        challenge_reason=None,
        challenge=challenge,
        x25519=keys.public.x25519,
        ed25519=keys.public.ed25519,
        evidence_format="bundle",
        evidence=evidence,
        app_attest_key_id=b"",
        identity=IdentityProof.signed(
            identity,
            site_id="toy-site",
            challenge=challenge,
            evidence=evidence,
            site_keys=keys.public,
            aggregator_keys=aggregator,
            aggregator_evidence_sha256=bytes(32),
        ),
        aggregator=aggregator,
        at=datetime.now(UTC),
    )
    assert appraisal.admitted, appraisal.reasons
    assert appraisal.platform == "toy" and appraisal.claims["measurement"] == MEASUREMENT.hex()


def test_a_site_policy_must_pin_the_toy_measurement(tmp_path: Path, registered: None) -> None:
    vendor = toy_platform.ToyVendor.load_or_create(tmp_path / "toy-vendor")
    pinned = Policy.from_toml(toy_policy(vendor))
    assert pinned.unpinned_measurements() == [] and pinned.toy.measurement == frozenset({MEASUREMENT})
    unpinned = Policy.from_toml('platforms = ["toy", "tdx"]\n')
    assert unpinned.unpinned_measurements() == ["[tdx] mr_td", "[toy] measurement"]


@pytest.mark.parametrize(
    "entry_points, expected",
    [
        (
            f"[attestfl.platforms]\ntoy = {MODULE}_missing:PLATFORM\n",
            "entry point toy = attestfl_toy_platform_missing:PLATFORM",
        ),
        (f"[attestfl.platforms]\ntoy = {MODULE}:NOT_THERE\n", "cannot load attestfl_toy_platform:NOT_THERE"),
        (f"[attestfl.platforms]\ntoy = {MODULE}:ToyPolicy\n", "is a type, not a Platform"),
        (f"[attestfl.platforms]\nmine = {MODULE}:PLATFORM\n", "the platform is named 'toy', not 'mine'"),
    ],
)
def test_a_broken_plugin_is_refused_in_one_line(tmp_path: Path, entry_points: str, expected: str) -> None:
    dist = write_distribution(tmp_path / "site-packages", entry_points)
    done = attestfl(dist, "evidence", "verify", "--example", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr


def test_a_plugin_cannot_take_a_built_in_name(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "shadow_tdx.py").write_text(
        f"from dataclasses import replace\nfrom {MODULE} import PLATFORM as TOY\n"
        "PLATFORM = replace(TOY, name='tdx', policy_key='tdx2', policy_attribute=None)\n"
    )
    dist = write_distribution(tmp_path / "site-packages", "[attestfl.platforms]\ntdx = shadow_tdx:PLATFORM\n")
    env_dist = Path(f"{dist}{os.pathsep}{shadow}")
    done = attestfl(env_dist, "evidence", "verify", "--example", cwd=tmp_path)
    assert done.returncode == 2 and "a platform named 'tdx' is already registered" in done.stderr, done.stderr

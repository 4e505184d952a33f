"""The configuration bundle: the simulated measurement covers aggregator.toml and every file it
names (admission policy, initial model); SNP HOST_DATA / TDX MRCONFIGID carry its digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from enclave.config_bundle import DOMAIN, ConfigBundleError, config_bundle
from enclave.measure import measure
from protocol.tensors import encode_tensors


def _write(directory: Path, *, policy: str = "allow_debug = false\n", scale: float = 1.0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "site-policy.toml").write_text(policy)
    (directory / "model.safetensors").write_bytes(encode_tensors({"w": np.full((2, 2), scale, np.float32)}))
    (directory / "collateral").mkdir(exist_ok=True)
    config = directory / "aggregator.toml"
    config.write_text(
        '[aggregator]\nlisten = "127.0.0.1:0"\nlog_dir = "audit-log"\n'
        '[admission]\npolicy = "site-policy.toml"\ncollateral_dir = "collateral"\n'
        '[task]\ninitial_model = "model.safetensors"\nrounds = 2\n'
    )
    return config


def test_bundle_names_every_loaded_file_and_no_directory(tmp_path: Path) -> None:
    bundle = config_bundle(_write(tmp_path))
    assert [f.key for f in bundle.files] == ["admission.policy", "config", "task.initial_model"]
    policy = next(f for f in bundle.files if f.key == "admission.policy")
    assert policy.sha384 == hashlib.sha384(b"allow_debug = false\n").hexdigest() and policy.size == 20


def test_digest_computation_is_the_canonical_text(tmp_path: Path) -> None:
    """HOST_DATA = SHA-256 and MRCONFIGID = SHA-384 of the canonical lines, written out here by hand."""
    config = _write(tmp_path)
    lines = [DOMAIN]
    for key, name in (
        ("admission.policy", "site-policy.toml"),
        ("config", "aggregator.toml"),
        ("task.initial_model", "model.safetensors"),
    ):
        data = (tmp_path / name).read_bytes()
        lines.append(f"file\x00{key}\x00{hashlib.sha384(data).hexdigest()}\x00{len(data)}\n")
    text = "".join(lines).encode()
    bundle = config_bundle(config)
    assert bundle.data == text
    assert bundle.sha256 == hashlib.sha256(text).hexdigest() and len(bytes.fromhex(bundle.sha256)) == 32
    assert bundle.sha384 == hashlib.sha384(text).hexdigest() and len(bytes.fromhex(bundle.sha384)) == 48
    assert measure(bundle.data).config_sha384 == bundle.sha384  # the simulated TEE's config digest is MRCONFIGID


def test_same_configuration_elsewhere_same_digest(tmp_path: Path) -> None:
    assert config_bundle(_write(tmp_path / "a")).data == config_bundle(_write(tmp_path / "b")).data


@pytest.mark.parametrize("change", ["policy", "model"])
def test_changing_a_loaded_file_changes_the_measurement(tmp_path: Path, change: str) -> None:
    before = measure(config_bundle(_write(tmp_path)).data).digest
    if change == "policy":
        _write(tmp_path, policy="allow_debug = true\n")
    else:
        _write(tmp_path, scale=2.0)
    after = measure(config_bundle(tmp_path / "aggregator.toml").data).digest
    assert after != before


def test_unreadable_configuration_is_a_typed_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[task\n")
    with pytest.raises(ConfigBundleError, match="not a TOML file"):
        config_bundle(bad)
    with pytest.raises(ConfigBundleError, match="cannot read"):
        config_bundle(tmp_path / "missing.toml")


@pytest.mark.parametrize(("platform", "field"), [("sev-snp", "host_data"), ("tdx", "mr_config_id")])
def test_the_launch_field_carries_the_bundle_digest_and_a_pin_bites(tmp_path: Path, platform: str, field: str) -> None:
    """As on hardware (HOST_DATA / MRCONFIGID set by the host at launch): the simulated TEE launched
    with a configuration reports its bundle's digest there; a site pinning it refuses the same
    aggregator launched after the admission policy file changed."""
    import os
    from datetime import UTC, datetime

    from attestation.bundle import appraise_bundle
    from attestation.bundle_abi import encode_bundle, parse_bundle
    from attestation.policy import Policy
    from enclave.attester import make_bundle
    from enclave.keys import EnclaveKeys
    from enclave.simulated.attester import SimulatedSnpAttester, SimulatedTdxAttester
    from enclave.simulated.pki import load_or_create

    sim = tmp_path / "vendor"
    roots = ", ".join(f'"{fp}"' for fp in load_or_create(sim).trusted_root_fingerprints().values())
    make = SimulatedSnpAttester if platform == "sev-snp" else SimulatedTdxAttester
    pinned = config_bundle(_write(tmp_path / "agg"))
    value = pinned.sha256 if platform == "sev-snp" else pinned.sha384
    policy = Policy.from_toml(f'trusted_simulated_roots = [{roots}]\n[{platform}]\n{field} = ["{value}"]\n')

    def appraise(config: bytes) -> object:
        nonce = os.urandom(32)
        evidence = encode_bundle(make_bundle(make(sim, config=config), EnclaveKeys(), nonce))
        return appraise_bundle(parse_bundle(evidence), expected_nonce=nonce, policy=policy, at=datetime.now(UTC))

    same = appraise(pinned.data)
    assert same.accepted and same.claims[field] == value, same.reasons
    changed = config_bundle(_write(tmp_path / "agg", policy="allow_debug = true\n"))
    refused = appraise(changed.data)
    assert not refused.accepted and any(field in str(r) for r in refused.reasons)

"""The verifier's caches cannot be poisoned (issue 19: verification at dcap-qvl's speed).

A warm collateral store and the signature memo (:data:`attestation.verify.chain.SIGNATURE_MEMO`)
make a quote cost only its own signatures. These tests prove that what is cached is only ever
what was verified: collateral with another digest is verified afresh (and refused when its
signature does not hold), expiry is checked on every appraisal however warm the caches are, and
a revocation published after a warm acceptance refuses at once. SEV-SNP and TDX alike."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest

from attestation.bundle import appraise_bundle
from attestation.bundle_abi import EvidenceBundle, encode_bundle
from attestation.collateral import CollateralStore
from attestation.findings import Appraisal
from attestation.policy import Policy
from attestation.verify.chain import SIGNATURE_MEMO
from enclave.attester import make_bundle
from enclave.keys import EnclaveKeys
from enclave.simulated.attester import SimulatedSnpAttester, SimulatedTdxAttester
from enclave.simulated.collateral import simulated_collateral_files
from enclave.simulated.pki import SimulatedPki, load_or_create
from enclave_fixtures import MEASUREMENT, NONCE_A, now, shared_simulated_dir, trusting

Attester = SimulatedSnpAttester | SimulatedTdxAttester


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return load_or_create(shared_simulated_dir())


@pytest.fixture(scope="module")
def snp() -> SimulatedSnpAttester:
    return SimulatedSnpAttester(shared_simulated_dir(), measurement=MEASUREMENT)


@pytest.fixture(scope="module")
def tdx() -> SimulatedTdxAttester:
    return SimulatedTdxAttester(shared_simulated_dir(), measurement=MEASUREMENT)


def required(pki: SimulatedPki) -> Policy:
    return trusting(pki, require_collateral=True)


def write_cache(directory: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory


def bundle_of(attester: Attester) -> EvidenceBundle:
    # new enclave keys: new evidence (its own signatures) on every call, the same collateral
    return replace(make_bundle(attester, EnclaveKeys(), NONCE_A), collateral={})


def appraise(attester: Attester, policy: Policy, store: CollateralStore, at: dt.datetime | None = None) -> Appraisal:
    return appraise_bundle(
        encode_bundle(bundle_of(attester)), expected_nonce=NONCE_A, policy=policy, at=at or now(), collateral=store
    )


def checks(appraisal: Appraisal) -> set[str]:
    return {r.check for r in appraisal.reasons}


def warm(attester: Attester, pki: SimulatedPki, tmp_path: Path, **issue: object) -> CollateralStore:
    """A store over clean collateral, warmed by an accepted appraisal (every collateral signature
    verdict now memoised)."""
    store = CollateralStore(write_cache(tmp_path / "clean", simulated_collateral_files(pki, **issue)))  # type: ignore[arg-type]
    appraisal = appraise(attester, required(pki), store)
    assert appraisal.accepted, appraisal.reasons
    return store


@pytest.mark.parametrize("name", ["snp", "tdx"])
def test_a_warm_quote_costs_only_its_own_signatures(
    name: str, request: pytest.FixtureRequest, pki: SimulatedPki, tmp_path: Path
) -> None:
    attester = request.getfixturevalue(name)
    SIGNATURE_MEMO.clear()
    store = warm(attester, pki, tmp_path)
    cold = SIGNATURE_MEMO.misses
    for _ in range(2):
        assert appraise(attester, required(pki), store).accepted
    assert SIGNATURE_MEMO.misses == cold  # no collateral signature checked again


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def test_tdx_collateral_with_another_digest_is_verified_afresh(
    tdx: SimulatedTdxAttester, pki: SimulatedPki, tmp_path: Path
) -> None:
    """A TCB info rewritten from OutOfDate to UpToDate under its genuine signature: the memo
    holds the genuine document's verdict, but the rewritten one has another digest, is checked
    again and refused."""
    SIGNATURE_MEMO.clear()
    files = simulated_collateral_files(pki, tcb_status="OutOfDate")
    genuine = CollateralStore(write_cache(tmp_path / "genuine", files))
    first = appraise(tdx, required(pki), genuine)
    assert first.claims.get("tcb_status") == "OutOfDate", first
    name = next(k for k in files if k.startswith("intel/tcb-info-fmspc-"))
    assert files[name].count(b'"OutOfDate"') >= 1
    forged = dict(files, **{name: files[name].replace(b'"OutOfDate"', b'"UpToDate"')})
    misses = SIGNATURE_MEMO.misses
    appraisal = appraise(tdx, required(pki), CollateralStore(write_cache(tmp_path / "forged", forged)))
    assert not appraisal.accepted
    assert SIGNATURE_MEMO.misses > misses  # verified afresh, not served from the memo
    assert any("signature" in check for check in checks(appraisal)), appraisal.reasons


def test_snp_crl_with_another_digest_is_verified_afresh(
    snp: SimulatedSnpAttester, pki: SimulatedPki, tmp_path: Path
) -> None:
    SIGNATURE_MEMO.clear()
    files = simulated_collateral_files(pki)
    warm(snp, pki, tmp_path)
    crl = "amd/milan/crl-vcek.der"
    forged = dict(files, **{crl: _flip_last_byte(files[crl])})  # the signature's last byte
    misses = SIGNATURE_MEMO.misses
    appraisal = appraise(snp, required(pki), CollateralStore(write_cache(tmp_path / "forged", forged)))
    assert not appraisal.accepted
    assert SIGNATURE_MEMO.misses > misses
    assert any(check.startswith("snp.crl") for check in checks(appraisal)), appraisal.reasons


@pytest.mark.parametrize("name", ["snp", "tdx"])
def test_expiry_is_checked_on_every_appraisal_however_warm(
    name: str, request: pytest.FixtureRequest, pki: SimulatedPki, tmp_path: Path
) -> None:
    attester = request.getfixturevalue(name)
    store = warm(attester, pki, tmp_path, lifetime=dt.timedelta(days=2))
    assert appraise(attester, required(pki), store).accepted
    later = appraise(attester, required(pki), store, at=now() + dt.timedelta(days=3))
    assert not later.accepted, "collateral past its next update was used because its verdict was cached"
    assert any("expired" in r.message or "not used" in r.message for r in later.reasons), later.reasons


@pytest.mark.parametrize("name", ["snp", "tdx"])
def test_a_revocation_after_a_warm_accept_still_refuses(
    name: str, request: pytest.FixtureRequest, pki: SimulatedPki, tmp_path: Path
) -> None:
    attester = request.getfixturevalue(name)
    store = warm(attester, pki, tmp_path)
    assert appraise(attester, required(pki), store).accepted
    leaf = pki.amd.vcek.der if name == "snp" else pki.intel.pck_leaf.der
    revoked = CollateralStore(write_cache(tmp_path / "revoked", simulated_collateral_files(pki, revoked=[leaf])))
    appraisal = appraise(attester, required(pki), revoked)
    assert checks(appraisal) == {"snp.crl.revoked" if name == "snp" else "tdx.pck.revoked"}, appraisal.reasons
    # the same directory updated in place: the store re-reads the new CRL and refuses too
    write_cache(tmp_path / "clean", simulated_collateral_files(pki, revoked=[leaf]))
    in_place = CollateralStore(tmp_path / "clean")
    assert not appraise(attester, required(pki), in_place).accepted
    # and the clean collateral's cached verdicts do not resurrect it
    assert not appraise(attester, required(pki), revoked).accepted

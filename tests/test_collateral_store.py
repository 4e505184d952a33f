"""The verifier decides the collateral (attestation.collateral): an offline cache directory,
optionally refreshed from AMD KDS / Intel PCS (here a real loopback HTTP server serving the
simulated vendors' collateral). A site that strips or replaces its bundle's collateral gains
nothing: the bundle's collateral is ignored when the verifier has a store."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from attestation.abi.x509 import parse_crl
from attestation.bundle import IGNORED_COLLATERAL_WARNING, appraise_bundle
from attestation.bundle_abi import EvidenceBundle, encode_bundle
from attestation.collateral import (
    CollateralError,
    CollateralFetcher,
    CollateralStore,
    FetchConfig,
)
from attestation.errors import AttestationError, CertificateFormatError
from attestation.findings import Appraisal
from attestation.platforms.snp.appraise import appraise_snp
from attestation.platforms.snp.collateral import amd_crl_url
from attestation.platforms.tdx.appraise import appraise_tdx
from attestation.platforms.tdx.collateral import pck_ca_kind
from attestation.policy import Policy
from attestation.verify.chain import SIGNATURE_MEMO
from attestfl.cli import main
from collateral_server import ROOT_CRL_PATH, Route, VendorServer, serving
from enclave.attester import make_bundle
from enclave.keys import EnclaveKeys
from enclave.simulated.attester import SimulatedSnpAttester, SimulatedTdxAttester
from enclave.simulated.collateral import simulated_collateral_files, write_simulated_collateral
from enclave.simulated.pki import SimulatedPki, load_or_create
from enclave_fixtures import MEASUREMENT, NONCE_A, now, shared_simulated_dir, trusting

TDX_AT = dt.datetime(2023, 7, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return load_or_create(shared_simulated_dir())


@pytest.fixture(scope="module")
def snp() -> SimulatedSnpAttester:
    return SimulatedSnpAttester(shared_simulated_dir(), measurement=MEASUREMENT)


@pytest.fixture(scope="module")
def tdx() -> SimulatedTdxAttester:
    return SimulatedTdxAttester(shared_simulated_dir(), measurement=MEASUREMENT)


@pytest.fixture
def server() -> Iterator[VendorServer]:
    yield from serving()


def required(pki: SimulatedPki, **kwargs: object) -> Policy:
    return trusting(pki, require_collateral=True, **kwargs)


def checks(appraisal: Appraisal) -> set[str]:
    return {r.check for r in appraisal.reasons}


def cache(tmp_path: Path, name: str = "cache", **kwargs: object) -> Path:
    directory = tmp_path / name
    write_simulated_collateral(shared_simulated_dir(), directory, **kwargs)  # type: ignore[arg-type]
    return directory


def bundle_of(attester: SimulatedSnpAttester | SimulatedTdxAttester, **changes: object) -> EvidenceBundle:
    return replace(make_bundle(attester, EnclaveKeys(), NONCE_A), **changes)  # type: ignore[arg-type]


def appraise(
    bundle: EvidenceBundle, policy: Policy, store: CollateralStore | None, at: dt.datetime | None = None
) -> Appraisal:
    return appraise_bundle(
        encode_bundle(bundle), expected_nonce=NONCE_A, policy=policy, at=at or now(), collateral=store
    )


# --- the verifier's collateral, never the bundle's -----------------------------------------


@pytest.mark.parametrize("name", ["snp", "tdx"])
def test_bundle_verified_with_the_verifiers_collateral(
    name: str, request: pytest.FixtureRequest, pki: SimulatedPki, tmp_path: Path
) -> None:
    attester = request.getfixturevalue(name)
    store = CollateralStore(cache(tmp_path))
    carried = bundle_of(attester)
    assert carried.collateral  # the simulated TEE ships its own collateral
    appraisal = appraise(carried, required(pki), store)
    assert appraisal.accepted, appraisal.reasons
    assert IGNORED_COLLATERAL_WARNING in appraisal.warnings
    stripped = appraise(replace(carried, collateral={}), required(pki), store)
    assert stripped.accepted and IGNORED_COLLATERAL_WARNING not in stripped.warnings
    if name == "tdx":
        assert stripped.claims["tcb_status"] == "UpToDate"


def test_a_revoked_vcek_is_refused_whatever_the_bundle_carries(
    snp: SimulatedSnpAttester, pki: SimulatedPki, tmp_path: Path
) -> None:
    store = CollateralStore(cache(tmp_path, revoked=[pki.amd.vcek.der]))
    for policy in (trusting(pki), required(pki)):
        for bundle in (bundle_of(snp), bundle_of(snp, collateral={})):  # its own clean CRL, or none at all
            appraisal = appraise(bundle, policy, store)
            assert checks(appraisal) == {"snp.crl.revoked"}, appraisal.reasons
            assert "VCEK certificate" in appraisal.reasons[0].message
    # without the verifier's store, stripping the CRL used to turn "revoked" into a warning
    stripped = appraise(bundle_of(snp, collateral={}), trusting(pki), None)
    assert stripped.accepted and any("no AMD CRL was given" in w for w in stripped.warnings)


def test_a_revoked_pck_leaf_is_refused_whatever_the_bundle_carries(
    tdx: SimulatedTdxAttester, pki: SimulatedPki, tmp_path: Path
) -> None:
    store = CollateralStore(cache(tmp_path, revoked=[pki.intel.pck_leaf.der]))
    for bundle in (bundle_of(tdx), bundle_of(tdx, collateral={})):
        assert checks(appraise(bundle, required(pki), store)) == {"tdx.pck.revoked"}
    revoked_ca = CollateralStore(cache(tmp_path, "ca", revoked=[pki.intel.pck_ca.der]))
    assert "tdx.pck.revoked" in checks(appraise(bundle_of(tdx, collateral={}), required(pki), revoked_ca))


def test_a_revoked_ask_is_refused(snp: SimulatedSnpAttester, pki: SimulatedPki, tmp_path: Path) -> None:
    store = CollateralStore(cache(tmp_path, revoked=[pki.amd.ask.der]))
    appraisal = appraise(bundle_of(snp), trusting(pki), store)
    assert checks(appraisal) == {"snp.crl.revoked"} and "ASK certificate" in appraisal.reasons[0].message


@pytest.mark.parametrize(
    "name,check", [("snp", "snp.policy.require_collateral"), ("tdx", "tdx.policy.require_collateral")]
)
def test_missing_collateral_fails_only_when_required(
    name: str, check: str, request: pytest.FixtureRequest, pki: SimulatedPki, tmp_path: Path
) -> None:
    attester = request.getfixturevalue(name)
    empty = CollateralStore(tmp_path)
    refused = appraise(bundle_of(attester), required(pki), empty)
    assert checks(refused) == {check}
    assert "the collateral cache has no" in refused.reasons[0].message
    warned = appraise(bundle_of(attester), trusting(pki), empty)
    assert warned.accepted and any(
        w.startswith("collateral: the collateral cache has no") or "no AMD CRL was given" in w for w in warned.warnings
    )


@pytest.mark.parametrize("name", ["snp", "tdx"])
def test_stale_collateral_is_not_used(
    name: str, request: pytest.FixtureRequest, pki: SimulatedPki, tmp_path: Path
) -> None:
    attester = request.getfixturevalue(name)
    check = {"snp": "snp.policy.require_collateral", "tdx": "tdx.policy.require_collateral"}[name]
    expired = CollateralStore(
        cache(tmp_path, "expired", issued=now() - dt.timedelta(days=40), lifetime=dt.timedelta(days=30))
    )
    appraisal = appraise(bundle_of(attester), required(pki), expired)
    assert checks(appraisal) == {check} and "expired at its next update" in appraisal.reasons[0].message
    old = CollateralStore(cache(tmp_path, "old", issued=now() - dt.timedelta(days=2)))
    assert appraise(bundle_of(attester), required(pki), old).accepted
    aged = appraise(bundle_of(attester), required(pki, max_collateral_age=dt.timedelta(days=1)), old)
    assert checks(aged) == {check} and "older than the policy's max_collateral_age" in aged.reasons[0].message
    future = CollateralStore(cache(tmp_path, "future", issued=now() + dt.timedelta(days=1)))
    assert "is not valid before" in appraise(bundle_of(attester), required(pki), future).reasons[0].message


def test_malformed_cache_files_are_not_used(snp: SimulatedSnpAttester, pki: SimulatedPki, tmp_path: Path) -> None:
    directory = cache(tmp_path)
    (directory / "amd/milan/crl-vcek.der").write_bytes(b"\x30\x03junk")
    appraisal = appraise(bundle_of(snp), required(pki), CollateralStore(directory))
    assert (
        checks(appraisal) == {"snp.policy.require_collateral"} and "unusable: not a CRL" in appraisal.reasons[0].message
    )
    (directory / "amd/milan/crl-vcek.der").unlink()
    os.mkfifo(directory / "amd/milan/crl-vcek.der")  # never read, never blocks
    appraisal = appraise(bundle_of(snp), required(pki), CollateralStore(directory))
    assert "FIFO" in appraisal.reasons[0].message


def test_tdx_document_without_its_issuer_chain_is_not_used(
    tdx: SimulatedTdxAttester, pki: SimulatedPki, tmp_path: Path
) -> None:
    directory = cache(tmp_path)
    (directory / "intel/qe-identity-issuer-chain.pem").unlink()
    appraisal = appraise(bundle_of(tdx), required(pki), CollateralStore(directory))
    assert checks(appraisal) == {"tdx.policy.require_collateral"}
    assert "QE identity" in appraisal.reasons[0].message and "issuer chain" in appraisal.reasons[0].message


def test_store_changes_are_seen_and_unchanged_files_are_not_reread(
    snp: SimulatedSnpAttester, pki: SimulatedPki, tmp_path: Path
) -> None:
    directory = cache(tmp_path)
    store = CollateralStore(directory, recheck_after=dt.timedelta(0))
    assert appraise(bundle_of(snp), required(pki), store).accepted
    write_simulated_collateral(shared_simulated_dir(), directory, revoked=[pki.amd.vcek.der])
    assert checks(appraise(bundle_of(snp), required(pki), store)) == {"snp.crl.revoked"}


def test_store_refuses_a_missing_directory_and_mixed_sources(
    tmp_path: Path, snp: SimulatedSnpAttester, pki: SimulatedPki
) -> None:
    with pytest.raises(CollateralError, match="not a collateral cache directory"):
        CollateralStore(tmp_path / "missing")
    report = snp.evidence(bytes(64)).evidence
    with pytest.raises(CollateralError, match="store alone"):
        appraise_snp(report, crl=b"x", policy=Policy(), at=now(), store=CollateralStore(tmp_path))
    with pytest.raises(CollateralError):
        FetchConfig(amd_base_url="file:///etc/passwd")
    assert (
        pck_ca_kind("Intel SGX PCK Processor CA") == "processor"
        and pck_ca_kind("Intel SGX PCK Platform CA") == "platform"
    )


# --- real Intel collateral through the store ----------------------------------------------


def test_real_intel_collateral_in_the_cache_layout(vectors: Path, tmp_path: Path) -> None:
    source = vectors / "tdx/collateral"
    intel = tmp_path / "intel"
    intel.mkdir()
    for name in (
        "tcb-info-fmspc-50806f000000.json",
        "tcb-info-issuer-chain.pem",
        "qe-identity.json",
        "qe-identity-issuer-chain.pem",
        "pck-platform-crl.der",
        "root-ca-crl.der",
    ):
        shutil.copy(source / name, intel / name)
    shutil.copy(source / "pck-crl-issuer-chain.pem", intel / "pck-platform-crl-issuer-chain.pem")
    quote = (vectors / "tdx/spr-quote-v4.dat").read_bytes()
    appraisal = appraise_tdx(quote, policy=Policy(require_collateral=True), at=TDX_AT, store=CollateralStore(tmp_path))
    # README facts: every collateral signature valid, QE UpToDate, no TCB level matches
    assert not any(c.startswith("tdx.collateral") or c == "tdx.policy.require_collateral" for c in checks(appraisal)), (
        appraisal.reasons
    )
    assert appraisal.claims["qe_tcb_status"] == "UpToDate" and appraisal.claims["tcb_status"] == "NotSupported"
    # a month later the TCB info and QE identity have expired: not used, hence missing
    later = appraise_tdx(
        quote,
        policy=Policy(require_collateral=True),
        at=TDX_AT + dt.timedelta(days=30),
        store=CollateralStore(tmp_path),
    )
    missing = [r.message for r in later.reasons if r.check == "tdx.policy.require_collateral"]
    assert missing and "TCB info" in missing[0] and "QE identity" in missing[0] and "expired" in missing[0]


# --- cache by digest -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["snp", "tdx"])
def test_a_warm_store_checks_no_collateral_signature_again(
    name: str, request: pytest.FixtureRequest, pki: SimulatedPki, tmp_path: Path
) -> None:
    attester = request.getfixturevalue(name)
    store = CollateralStore(cache(tmp_path))
    SIGNATURE_MEMO.clear()
    assert appraise(bundle_of(attester, collateral={}), required(pki), store).accepted
    cold = SIGNATURE_MEMO.misses
    assert cold >= (4 if name == "snp" else 8)  # chain, CRL(s), documents and their issuer chains
    for _ in range(3):  # new keys and nonces: new evidence, same platform and collateral
        assert appraise(bundle_of(attester, collateral={}), required(pki), store).accepted
    assert SIGNATURE_MEMO.misses == cold and SIGNATURE_MEMO.hits >= 3 * cold


def test_signature_memo_is_keyed_by_everything_signed(pki: SimulatedPki) -> None:
    from attestation.abi.x509 import parse_certificate
    from attestation.verify.chain import certificate_signed_by

    SIGNATURE_MEMO.clear()
    ask, ark = parse_certificate(pki.amd.ask.der), parse_certificate(pki.amd.ark.der)
    assert certificate_signed_by(ask, ark) and certificate_signed_by(ask, ark)
    assert SIGNATURE_MEMO.misses == 1 and SIGNATURE_MEMO.hits == 1
    forged = replace(ask, tbs_der=ask.tbs_der[:-1] + bytes([ask.tbs_der[-1] ^ 1]))
    assert not certificate_signed_by(forged, ark)
    other_signature = replace(ask, signature=bytes(len(ask.signature)))
    assert not certificate_signed_by(other_signature, ark)
    assert certificate_signed_by(ask, ark) and SIGNATURE_MEMO.misses == 3


# --- the fetcher, against a real loopback server --------------------------------------------


def fetching_store(directory: Path, server: VendorServer, **config: object) -> CollateralStore:
    fetch = FetchConfig(**{**server.config_kwargs(), "timeout": 5.0, "retries": 1, "retry_backoff": 0.01, **config})  # type: ignore[arg-type]
    return CollateralStore(directory, fetcher=CollateralFetcher(fetch))


def test_fetcher_fills_an_empty_cache_from_kds_and_pcs(
    server: VendorServer, snp: SimulatedSnpAttester, tdx: SimulatedTdxAttester, pki: SimulatedPki, tmp_path: Path
) -> None:
    server.serve_simulated(pki, simulated_collateral_files(pki))
    directory = tmp_path / "cache"
    store = fetching_store(directory, server)
    for attester in (snp, tdx):
        appraisal = appraise(bundle_of(attester, collateral={}), required(pki), store)
        assert appraisal.accepted, appraisal.reasons
    assert sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()) == sorted(
        simulated_collateral_files(pki)
    )
    assert len(server.requests) == 5  # AMD CRL, TCB info, QE identity, PCK CRL, root CA CRL: once each
    assert any(r.startswith("/vcek/v1/Milan/crl") for r in server.requests)
    assert any(r == "/tdx/certification/v4/tcb?fmspc=00a06f0000ff" for r in server.requests)
    assert any(r == "/sgx/certification/v4/pckcrl?ca=platform&encoding=der" for r in server.requests)
    for attester in (snp, tdx):  # warm: nothing fetched again
        assert appraise(bundle_of(attester), required(pki), store).accepted
    assert len(server.requests) == 5
    # an offline store on the same directory now has everything
    assert appraise(bundle_of(tdx), required(pki), CollateralStore(directory)).accepted


def test_fetcher_refreshes_stale_collateral(
    server: VendorServer, snp: SimulatedSnpAttester, pki: SimulatedPki, tmp_path: Path
) -> None:
    directory = cache(tmp_path, issued=now() - dt.timedelta(days=40), lifetime=dt.timedelta(days=30))
    server.serve_simulated(pki, simulated_collateral_files(pki, revoked=[pki.amd.vcek.der]))
    appraisal = appraise(bundle_of(snp), required(pki), fetching_store(directory, server))
    assert checks(appraisal) == {"snp.crl.revoked"}
    assert server.requests == ["/vcek/v1/Milan/crl"]
    assert parse_crl((directory / "amd/milan/crl-vcek.der").read_bytes()).this_update > now() - dt.timedelta(
        hours=2
    )  # a fresh one (issued an hour ago)


def test_fetch_failures_are_reasons_not_crashes_and_are_not_retried_at_once(
    server: VendorServer, snp: SimulatedSnpAttester, pki: SimulatedPki, tmp_path: Path
) -> None:
    files = simulated_collateral_files(pki)
    server.serve_simulated(pki, files)
    crl_path = "/vcek/v1/Milan/crl"
    cases = [
        (Route(files["amd/milan/crl-vcek.der"], status=500), "HTTP 500", 2),  # retried once
        (Route(b"\x00" * 5000), "over the 4096-byte limit", 1),
        (Route(files["amd/milan/crl-vcek.der"], delay=2.5), "timed out", 2),
        (Route(b"not a crl"), "not a CRL", 1),
        (Route(b"\x30\x82\x01\x00", declared_length=300), "IncompleteRead", 2),  # the connection closes mid-body
        (Route(b"x", {"X-Padding": "a" * 70000}), "got more than 65536 bytes", 2),  # a header line too long
    ]
    for route, message, attempts in cases:
        server.routes[crl_path] = route
        server.requests.clear()
        store = fetching_store(
            tmp_path / f"cache-{len(os.listdir(tmp_path))}", server, max_response_bytes=4096, timeout=1.0
        )
        appraisal = appraise(bundle_of(snp), required(pki), store)
        assert checks(appraisal) == {"snp.policy.require_collateral"}
        assert "fetching the AMD CRL" in appraisal.reasons[0].message and message in appraisal.reasons[0].message, (
            appraisal.reasons
        )
        assert server.requests.count(crl_path) == attempts
        again = appraise(bundle_of(snp), required(pki), store)  # within refetch_after: not asked again
        assert "not fetched again" in again.reasons[0].message and server.requests.count(crl_path) == attempts
    del server.routes[crl_path]
    server.requests.clear()
    store = fetching_store(tmp_path / "cache-404", server)
    assert "HTTP 404" in appraise(bundle_of(snp), required(pki), store).reasons[0].message
    assert server.requests == [crl_path]  # a 404 is not retried


def test_fetched_documents_need_their_issuer_chain_header(
    server: VendorServer, tdx: SimulatedTdxAttester, pki: SimulatedPki, tmp_path: Path
) -> None:
    server.serve_simulated(pki, simulated_collateral_files(pki))
    server.routes["/tdx/certification/v4/qe/identity"].headers.clear()
    appraisal = appraise(bundle_of(tdx), required(pki), fetching_store(tmp_path / "cache", server))
    assert checks(appraisal) == {"tdx.policy.require_collateral"}
    assert "no SGX-Enclave-Identity-Issuer-Chain header" in appraisal.reasons[0].message
    assert not (tmp_path / "cache/intel/qe-identity.json").exists()


def test_fetcher_gets_a_vcek_the_evidence_lacks(
    server: VendorServer, snp: SimulatedSnpAttester, pki: SimulatedPki, tmp_path: Path
) -> None:
    server.serve_simulated(pki, simulated_collateral_files(pki))
    report = snp.evidence(bytes(64)).evidence
    store = fetching_store(tmp_path / "cache", server)
    without = appraise_snp(
        report,
        certificates=(pki.amd.ask.pem + pki.amd.ark.pem,),
        policy=required(pki),
        at=now(),
        store=CollateralStore(tmp_path),
    )
    assert "snp.cert.missing" in checks(without)
    appraisal = appraise_snp(
        report, certificates=(pki.amd.ask.pem + pki.amd.ark.pem,), policy=required(pki), at=now(), store=store
    )
    assert appraisal.accepted, appraisal.reasons
    vceks = list((tmp_path / "cache/amd/milan/vcek").iterdir())
    assert (
        len(vceks) == 1
        and vceks[0].name.startswith(pki.amd.chip_id.hex() + "-")
        and vceks[0].read_bytes() == pki.amd.vcek.der
    )


def test_fetcher_follows_http_redirects_only(server: VendorServer, tmp_path: Path) -> None:
    server.routes["/vcek/v1/Milan/crl"] = Route(b"", {"Location": "file:///etc/passwd"}, status=302)
    fetcher = CollateralFetcher(FetchConfig(**server.config_kwargs(), retries=0))
    with pytest.raises(AttestationError, match=r"(?i)redirect"):
        fetcher.get(amd_crl_url(fetcher.config, "milan", "vcek"))
    server.routes["/vcek/v1/Milan/crl"] = Route(b"", {"Location": "/moved/crl"}, status=302)
    server.routes["/moved/crl"] = Route(b"the body")
    assert fetcher.get(amd_crl_url(fetcher.config, "milan", "vcek")).body == b"the body"


# --- indirect CRLs ------------------------------------------------------------------------


def test_indirect_crl_entries_name_their_issuer(pki: SimulatedPki) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding

    from attestation.abi.x509 import parse_certificate, parse_crl
    from enclave.simulated.pki import PSS
    from enclave.simulated.snp import simulated_amd_crl

    vcek, ask = parse_certificate(pki.amd.vcek.der), parse_certificate(pki.amd.ask.der)
    crl = parse_crl(simulated_amd_crl(pki, revoked=[pki.amd.vcek.cert]))
    assert crl.indirect and crl.revokes(vcek) and not crl.revokes(ask) and vcek.serial_number not in crl.revoked_serials
    # the same serial in a direct CRL of the ARK does not revoke the VCEK (another issuer's serial)
    stamp = dt.datetime.now(dt.UTC)
    entry = x509.RevokedCertificateBuilder().serial_number(vcek.serial_number).revocation_date(stamp)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.amd.ark.cert.subject)
        .last_update(stamp)
        .next_update(stamp + dt.timedelta(days=1))
    )
    direct = parse_crl(
        builder.add_revoked_certificate(entry.build())
        .sign(pki.amd.ark.key, hashes.SHA384(), rsa_padding=PSS)
        .public_bytes(Encoding.DER)
    )
    assert not direct.revokes(vcek)
    # a certificateIssuer entry in a CRL that is not indirect is malformed
    named = entry.add_extension(x509.CertificateIssuer([x509.DirectoryName(pki.amd.ask.cert.subject)]), critical=True)
    bad = (
        builder.add_revoked_certificate(named.build())
        .sign(pki.amd.ark.key, hashes.SHA384(), rsa_padding=PSS)
        .public_bytes(Encoding.DER)
    )
    with pytest.raises(CertificateFormatError, match="not indirect"):
        parse_crl(bad)


# --- the commands ---------------------------------------------------------------------------


def test_cli_collateral_then_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str], pki: SimulatedPki) -> None:
    sim = str(shared_simulated_dir())
    evidence = tmp_path / "bundle.cbor"
    assert (
        main(
            [
                "enclave",
                "evidence",
                "--nonce",
                NONCE_A.hex(),
                "--tee",
                "simulated-snp",
                "--simulated-dir",
                sim,
                "-o",
                str(evidence),
            ]
        )
        == 0
    )
    policy = tmp_path / "policy.toml"
    roots = ", ".join(f'"{fp}"' for fp in pki.trusted_root_fingerprints().values())
    policy.write_text(f"trusted_simulated_roots = [{roots}]\nrequire_collateral = true\n")
    clean, revoked = tmp_path / "clean", tmp_path / "revoked"
    assert main(["enclave", "collateral", "--simulated-dir", sim, "--out", str(clean)]) == 0
    assert main(["enclave", "collateral", "--simulated-dir", sim, "--out", str(revoked), "--revoke", "vcek"]) == 0
    assert "revoked: vcek" in capsys.readouterr().out
    verify = ["evidence", "verify", str(evidence), "--nonce", NONCE_A.hex(), "--policy", str(policy), "--json"]
    assert main([*verify, "--collateral-dir", str(clean)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accepted"] and IGNORED_COLLATERAL_WARNING in result["warnings"]
    assert main([*verify, "--collateral-dir", str(revoked)]) == 1
    assert any(r.startswith("snp.crl.revoked") for r in json.loads(capsys.readouterr().out)["reasons"])
    assert main([*verify, "--collateral-dir", str(tmp_path / "empty-missing")]) == 2
    assert main([*verify, "--collateral-dir", str(clean), "--crl", str(clean / "amd/milan/crl-vcek.der")]) == 2
    assert main([*verify, "--fetch-collateral"]) == 2
    err = capsys.readouterr().err
    assert err.count("attestfl: error:") == 3 and "Traceback" not in err
    assert main(["enclave", "collateral", "--simulated-dir", sim, "--out", str(clean), "--revoke", "nonsense.pem"]) == 2
    assert main(["enclave", "collateral", "--simulated-dir", sim, "--out", str(clean), "--tcb-status", "Great"]) == 2
    assert main(["enclave", "collateral", "--simulated-dir", sim, "--out", str(clean), "--issued", "yesterday"]) == 2
    assert (
        main(["enclave", "collateral", "--simulated-dir", sim, "--out", str(clean), "--issued", "9999-12-31T00:00:00Z"])
        == 2
    )
    assert main(["enclave", "collateral", "--simulated-dir", sim, "--out", str(clean), "--lifetime", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("attestfl: error:") == 5 and "internal error" not in err


def test_cli_verify_fetches_into_the_cache(
    server: VendorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], pki: SimulatedPki
) -> None:
    server.serve_simulated(pki, simulated_collateral_files(pki))
    sim = str(shared_simulated_dir())
    evidence = tmp_path / "bundle.cbor"
    assert (
        main(
            [
                "enclave",
                "evidence",
                "--nonce",
                NONCE_A.hex(),
                "--tee",
                "simulated-tdx",
                "--simulated-dir",
                sim,
                "-o",
                str(evidence),
            ]
        )
        == 0
    )
    policy = tmp_path / "policy.toml"
    roots = ", ".join(f'"{fp}"' for fp in pki.trusted_root_fingerprints().values())
    policy.write_text(f"trusted_simulated_roots = [{roots}]\nrequire_collateral = true\n")
    (tmp_path / "cache").mkdir()
    code = main(
        [
            "evidence",
            "verify",
            str(evidence),
            "--nonce",
            NONCE_A.hex(),
            "--policy",
            str(policy),
            "--collateral-dir",
            str(tmp_path / "cache"),
            "--amd-kds-url",
            server.url,
            "--intel-pcs-url",
            server.url,
            "--intel-root-crl-url",
            server.url + ROOT_CRL_PATH,
        ]
    )
    assert code == 0, capsys.readouterr()
    assert (tmp_path / "cache/intel/qe-identity.json").is_file()

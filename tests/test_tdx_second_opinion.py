"""A second opinion on TDX evidence: dcap-qvl (Phala's Rust verifier, an offline wheel) and
attestfl's verifier on every shipped TDX quote and collateral set (tests/vectors/tdx), on the
simulated TD's quote and collateral (which both accept: dcap-qvl is given the simulated root),
and on their mutations: a bit flipped in each signed region of the quote and of every
collateral file, collateral swapped between platforms and parts, a revoked PCK certificate,
a debug TD, every TCB status. Both accept with the same TCB status, or both reject
(tests/dcap_reference.py says what each verdict is; docs/attestation.md why).

One class of difference is known and pinned: dcap-qvl never reads the PCK CRL issuer chain
file, nor the root certificate at the end of an issuer chain (its trust anchor is its own);
attestfl refuses collateral whose issuer chains are corrupted there too (stricter, never looser)."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

try:
    import dcap_qvl  # noqa: F401 - the reference verifier; pinned in the test extra
except ImportError:  # pragma: no cover - a missing test dependency must be seen, not skipped
    pytest.fail(
        "dcap-qvl is a test dependency (dcap-qvl==0.7.0 in the test extra): pip install dcap-qvl", pytrace=False
    )

from attestation.platforms.tdx.abi import parse_quote
from attestation.platforms.tdx.verify import pck_chain_of
from dcap_reference import Verdict, ours, theirs
from enclave.simulated.attester import SimulatedTdxAttester
from enclave.simulated.collateral import simulated_collateral_files
from enclave.simulated.pki import SIM_FMSPC, load_or_create

VECTORS = Path(__file__).parent / "vectors" / "tdx"
V4_AT = dt.datetime(2023, 7, 1, tzinfo=dt.UTC)
V4_FMSPC, V5_FMSPC = "50806f000000", "90c06f000000"


def shipped_collateral() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (VECTORS / "collateral").iterdir()}


def assert_agree(label: str, mine: Verdict, reference: Verdict) -> None:
    assert mine.agrees_with(reference), f"{label}: attestfl {mine} but dcap-qvl {reference}"


# --- mutations ------------------------------------------------------------------------------


def quote_regions(quote: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges of a quote's parts: the signed header and body, the signature data's
    signature, attestation key, QE report, its signature, the QE authentication data, the PCK chain."""
    parsed = parse_quote(quote)
    signed = len(parsed.signed_bytes())
    auth = len(parsed.signature_data.qe_certification.qe_auth_data)
    start = signed + 4  # after the signature data's length
    return {
        "header": (0, 48),
        "body": (48, signed),
        "quote signature": (start, start + 64),
        "attestation key": (start + 64, start + 128),
        "QE report": (start + 134, start + 518),
        "QE report signature": (start + 518, start + 582),
        "QE auth data": (start + 584, start + 584 + auth),
        "PCK chain": (start + 584 + auth + 6, len(quote) - len(parsed.trailing)),
    }


def flips(start: int, end: int) -> list[tuple[int, int]]:
    """(offset, bit) at the first byte, a third, two thirds and the last byte of a range."""
    positions = sorted({start, start + (end - start) // 3, start + 2 * (end - start) // 3, end - 1})
    return [(pos, (3 * i + pos) % 8) for i, pos in enumerate(positions)]


def flipped(data: bytes, pos: int, bit: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def quote_mutations(quote: bytes) -> Iterator[tuple[str, bytes]]:
    for region, (start, end) in quote_regions(quote).items():
        for pos, bit in flips(start, end):
            yield f"{region} byte {pos} bit {bit}", flipped(quote, pos, bit)


def collateral_regions(name: str, data: bytes) -> dict[str, tuple[int, int]]:
    if name.endswith(".json"):
        body = re.match(rb'\{"[A-Za-z]+":', data)
        assert body is not None
        signature = data.rindex(b',"signature":"')
        return {"signed body": (body.end(), signature), "signature": (signature + 14, len(data) - 2)}
    if name.endswith(".pem"):
        starts = [m.start() for m in re.finditer(rb"-----BEGIN CERTIFICATE-----", data)] + [len(data)]
        return {f"certificate {i}": (starts[i] + 28, starts[i + 1] - 27) for i in range(len(starts) - 1)}
    return {"to be signed": (4, len(data) - 80), "signature": (len(data) - 70, len(data))}  # a DER CRL


def collateral_mutations(files: Mapping[str, bytes]) -> Iterator[tuple[str, str, int, dict[str, bytes]]]:
    for name in sorted(files):
        for region, (start, end) in collateral_regions(name, files[name]).items():
            for pos, bit in flips(start, end):
                yield (
                    f"{name} {region} byte {pos} bit {bit}",
                    name,
                    pos,
                    {**files, name: flipped(files[name], pos, bit)},
                )


def dcap_never_reads(name: str, data: bytes, pos: int) -> bool:
    """dcap-qvl does not read the PCK CRL issuer chain file, nor the root ending an issuer chain."""
    if name == "pck-crl-issuer-chain.pem":
        return True
    return name.endswith("issuer-chain.pem") and pos >= data.rindex(b"-----BEGIN CERTIFICATE-----")


def assert_agree_on_collateral(
    label: str, name: str, pos: int, files: Mapping[str, bytes], mine: Verdict, reference: Verdict
) -> None:
    if not mine.agrees_with(reference) and dcap_never_reads(name, files[name], pos):
        assert reference.accepted and not mine.accepted, f"{label}: attestfl {mine} but dcap-qvl {reference}"
        return
    assert_agree(label, mine, reference)


# --- the shipped vectors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "quote_file, at, fmspc, our_checks, their_error",
    [
        # Authentic, fresh collateral, but no TCB level of the TCB info matches the platform.
        ("spr-quote-v4.dat", V4_AT, V4_FMSPC, {"tdx.policy.allowed_tcb_statuses"}, "No matching TCB level found"),
        # The v5 TCB info is valid in 2026, the QE identity and CRLs expired in 2023.
        (
            "quote-v5.dat",
            dt.datetime(2026, 2, 15, tzinfo=dt.UTC),
            V5_FMSPC,
            {"tdx.collateral.qe_identity.validity"},
            "CrlExpired",
        ),
        ("quote-v5.dat", V4_AT, V5_FMSPC, {"tdx.collateral.tcb_info.validity"}, "TCBInfo issue date is in the future"),
    ],
)
def test_the_shipped_quotes_are_refused_by_both_for_the_same_reason(
    quote_file: str, at: dt.datetime, fmspc: str, our_checks: set[str], their_error: str
) -> None:
    quote = (VECTORS / quote_file).read_bytes()
    mine, reference = ours(quote, shipped_collateral(), at), theirs(quote, shipped_collateral(), at, fmspc=fmspc)
    assert_agree(quote_file, mine, reference)
    assert our_checks <= set(mine.why.split()), mine
    assert their_error in reference.why, reference


def test_the_shipped_v4_quote_is_authentic_with_no_matching_tcb_level() -> None:
    from attestation.platforms.tdx.appraise import appraise_tdx
    from attestation.platforms.tdx.collateral import collateral_from_files
    from dcap_reference import dcap_equivalent_policy

    appraisal = appraise_tdx(
        (VECTORS / "spr-quote-v4.dat").read_bytes(),
        collateral=collateral_from_files(shipped_collateral()),
        policy=dcap_equivalent_policy(),
        at=V4_AT,
    )
    assert appraisal.claims["tcb_status"] == "NotSupported"
    assert not [r for r in appraisal.reasons if not r.check.startswith("tdx.policy.")], appraisal.reasons


@pytest.mark.parametrize(
    "quote_file, fmspc, at",
    [
        ("spr-quote-v4.dat", V4_FMSPC, V4_AT),
        ("quote-v5.dat", V5_FMSPC, dt.datetime(2026, 2, 15, tzinfo=dt.UTC)),
    ],
)
def test_every_mutation_of_a_shipped_quote_is_refused_by_both(quote_file: str, fmspc: str, at: dt.datetime) -> None:
    files = shipped_collateral()
    for label, quote in quote_mutations((VECTORS / quote_file).read_bytes()):
        mine, reference = ours(quote, files, at), theirs(quote, files, at, fmspc=fmspc)
        assert_agree(f"{quote_file} {label}", mine, reference)
        assert not mine.accepted


def test_every_mutation_of_the_shipped_collateral_is_refused_by_both() -> None:
    quote, files = (VECTORS / "spr-quote-v4.dat").read_bytes(), shipped_collateral()
    for label, name, pos, mutated in collateral_mutations(files):
        if "90c06f" in name:  # the v5 platform's TCB info: not used for this quote
            continue
        assert_agree_on_collateral(
            label, name, pos, files, ours(quote, mutated, V4_AT), theirs(quote, mutated, V4_AT, fmspc=V4_FMSPC)
        )


# --- the simulated TD: a quote both accept -------------------------------------------------


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("simulated-vendor")


def simulated(sim_dir: Path, **options: object) -> tuple[bytes, dict[str, bytes], frozenset[str], bytes]:
    """(quote, collateral files, trusted simulated roots, the simulated Intel root's DER)."""
    attester = SimulatedTdxAttester(sim_dir, **options)  # type: ignore[arg-type]
    evidence = attester.evidence(os.urandom(64))
    roots = frozenset({attester.pki.trusted_root_fingerprints()["tdx"]})
    return evidence.evidence, dict(evidence.collateral), roots, attester.pki.intel.root.der


def both(
    quote: bytes, files: Mapping[str, bytes], roots: frozenset[str], root_der: bytes, at: dt.datetime | None = None
) -> tuple[Verdict, Verdict]:
    at = at or dt.datetime.now(dt.UTC)
    return ours(quote, files, at, roots), theirs(quote, files, at, fmspc=SIM_FMSPC.hex(), root_der=root_der)


@pytest.mark.parametrize(
    "status",
    [
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    ],
)
def test_both_give_the_simulated_td_the_same_tcb_status(sim_dir: Path, status: str) -> None:
    quote, files, roots, root_der = simulated(sim_dir, tcb_status=status)
    mine, reference = both(quote, files, roots, root_der)
    assert_agree(status, mine, reference)
    assert mine.accepted == (status != "Revoked") and mine.status == (None if status == "Revoked" else status)


def test_both_refuse_a_debug_td_and_stale_collateral(sim_dir: Path) -> None:
    quote, files, roots, root_der = simulated(sim_dir, debug=True)
    mine, reference = both(quote, files, roots, root_der)
    assert_agree("debug", mine, reference)
    assert "tdx.policy.allow_debug" in mine.why and "Debug mode" in reference.why
    quote, files, roots, root_der = simulated(sim_dir)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=60)
    mine, reference = both(quote, files, roots, root_der, later)
    assert_agree("60 days later", mine, reference)
    assert not mine.accepted


def test_every_mutation_of_the_simulated_quote_agrees(sim_dir: Path) -> None:
    quote, files, roots, root_der = simulated(sim_dir)
    assert all(v.accepted for v in both(quote, files, roots, root_der))
    refused = 0
    for label, mutated in quote_mutations(quote):
        mine, reference = both(mutated, files, roots, root_der)
        assert_agree(label, mine, reference)
        refused += not mine.accepted
    assert refused >= 28  # every flip in a signed region; a flip in the PEM chain's padding changes nothing


def test_every_mutation_of_the_simulated_collateral_agrees(sim_dir: Path) -> None:
    quote, files, roots, root_der = simulated(sim_dir)
    for label, name, pos, mutated in collateral_mutations(files):
        mine, reference = both(quote, mutated, roots, root_der)
        assert_agree_on_collateral(label, name, pos, files, mine, reference)


def test_swapped_collateral_is_refused_by_both(sim_dir: Path, tmp_path: Path) -> None:
    quote, files, roots, root_der = simulated(sim_dir)
    _, other_files, _, _ = simulated(tmp_path / "another-vendor")
    shipped = shipped_collateral()
    tcb_name = next(n for n in files if n.startswith("tcb-info-fmspc-"))
    swaps = {
        "another vendor's collateral": other_files,
        "another vendor's TCB info": {**files, tcb_name: other_files[tcb_name]},
        "another vendor's QE identity": {**files, "qe-identity.json": other_files["qe-identity.json"]},
        "another vendor's PCK CRL": {**files, "pck-platform-crl.der": other_files["pck-platform-crl.der"]},
        "another vendor's root CA CRL": {**files, "root-ca-crl.der": other_files["root-ca-crl.der"]},
        "Intel's collateral": shipped,
        "PCK CRL and root CA CRL swapped": {
            **files,
            "pck-platform-crl.der": files["root-ca-crl.der"],
            "root-ca-crl.der": files["pck-platform-crl.der"],
        },
        "the QE identity as the TCB info": {**files, tcb_name: files["qe-identity.json"]},
    }
    for label, swapped in swaps.items():
        mine, reference = both(quote, swapped, roots, root_der)
        assert_agree(label, mine, reference)
        assert not mine.accepted, label
    # The shipped quote with the simulated vendor's collateral, and with the v5 platform's TCB info.
    v4 = (VECTORS / "spr-quote-v4.dat").read_bytes()
    assert_agree("v4 with simulated collateral", ours(v4, files, V4_AT), theirs(v4, files, V4_AT, fmspc=V4_FMSPC))
    only_v5 = {n: d for n, d in shipped.items() if V4_FMSPC not in n}
    mine, reference = ours(v4, only_v5, V4_AT), theirs(v4, only_v5, V4_AT, fmspc=V5_FMSPC)
    assert_agree("v4 with the v5 platform's TCB info", mine, reference)
    assert (
        "tdx.collateral.tcb_info.fmspc" in mine.why and not reference.accepted
    )  # dcap-qvl stops earlier: the TCB info is not valid yet


def test_a_revoked_pck_certificate_is_refused_by_both(sim_dir: Path) -> None:
    quote, files, roots, root_der = simulated(sim_dir)
    pck, _ = pck_chain_of(parse_quote(quote))
    assert pck is not None
    cache = simulated_collateral_files(load_or_create(sim_dir), revoked=[pck.leaf.der])
    names = {
        "intel/pck-platform-crl.der": "pck-platform-crl.der",
        "intel/pck-platform-crl-issuer-chain.pem": "pck-crl-issuer-chain.pem",
        "intel/root-ca-crl.der": "root-ca-crl.der",
    }
    revoked = {**files, **{names[path]: data for path, data in cache.items() if path in names}}
    mine, reference = both(quote, revoked, roots, root_der)
    assert_agree("revoked PCK", mine, reference)
    assert "tdx.pck.revoked" in mine.why and not reference.accepted

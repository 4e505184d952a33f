"""Fuzz targets, one per parser, run in CI with a bounded number of examples.

Each target mutates a real vector (bit flips, byte overwrites, truncation, extension, random
bytes, extreme values in length fields) and asserts:

* the parse / verify / appraise entry point either returns or raises an
  :class:`~attestation.errors.AttestationError` subclass, never anything else;
* a result whose *signed region* differs from the vector's is never accepted (the region
  each format signs: an SNP report's bytes 0x000-0x29F; a TDX quote's header and body, QE
  report, attestation key and QE authentication data; GPU evidence's request and response
  before the signature; a certificate's or CRL's TBS; a collateral document's signed JSON).

Crashes these targets found are named regression tests in ``tests/test_hostile_inputs.py``.
Bounded (1000 examples a target) so that all targets together take about 15 s on two cores;
``ATTESTFL_FUZZ_EXAMPLES`` sets another number for a longer local campaign.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.abi.x509 import parse_certificate, parse_certificates, parse_crl
from attestation.bundle import appraise_bundle
from attestation.bundle_abi import parse_bundle
from attestation.errors import AttestationError
from attestation.findings import Appraisal
from attestation.platforms.nvidia.abi import REQUEST_SIZE, parse_gpu_evidence, parse_gpu_evidence_hex
from attestation.platforms.nvidia.appraise import appraise_gpu
from attestation.platforms.nvidia.rim import parse_rim
from attestation.platforms.snp.abi import SIGNED_SIZE
from attestation.platforms.snp.appraise import appraise_snp
from attestation.platforms.tdx.abi import parse_quote
from attestation.platforms.tdx.appraise import appraise_tdx
from attestation.platforms.tdx.collateral import load_collateral_dir
from attestation.platforms.tdx.collateral_abi import parse_qe_identity, parse_tcb_info
from attestation.policy import Policy
from attestation.verify.chain import certificate_signed_by, crl_reasons, memoised_raw_ecdsa_is_valid

VECTORS = Path(__file__).resolve().parent / "vectors"
SNP_AT = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
TDX_AT = dt.datetime(2023, 7, 1, tzinfo=dt.UTC)
GPU_AT = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)

#: Examples per target; ATTESTFL_FUZZ_EXAMPLES=50000 runs a longer campaign locally.
EXAMPLES = int(os.environ.get("ATTESTFL_FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


# --- mutations --------------------------------------------------------------------------


def mutations(length_fields: tuple[tuple[int, int, str], ...] = ()) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Lists of mutation operations; indices are taken modulo the data's length.
    ``length_fields``: (offset, width, byte order) of the format's length fields, which get
    extreme values."""
    position = st.integers(min_value=0, max_value=1 << 20)
    ops = [
        st.tuples(st.just("flip"), position, st.integers(0, 7)),
        st.tuples(st.just("set"), position, st.integers(0, 255)),
        st.tuples(st.just("truncate"), position),
        st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=32)),
        st.tuples(st.just("delete"), position, st.integers(1, 64)),
        st.tuples(st.just("random"), position, st.binary(min_size=1, max_size=16)),
    ]
    if length_fields:
        extreme = st.sampled_from(["zero", "max", "one-less", "one-more", "huge"])
        ops.append(st.tuples(st.just("length"), st.sampled_from(length_fields), extreme))
    return st.lists(st.one_of(ops), min_size=1, max_size=4)


def mutate(seed: bytes, operations: list[tuple[Any, ...]]) -> bytes:
    data = bytearray(seed)
    for op in operations:
        kind = op[0]
        at = op[1] % (len(data) + 1) if kind not in ("extend", "length") else 0
        if kind == "flip" and data:
            data[at % len(data)] ^= 1 << op[2]
        elif kind == "set" and data:
            data[at % len(data)] = op[2]
        elif kind == "truncate":
            del data[at:]
        elif kind == "extend":
            data += op[1]
        elif kind == "insert":
            data[at:at] = op[2]
        elif kind == "delete":
            del data[at : at + op[2]]
        elif kind == "random":
            data[at : at + len(op[2])] = op[2]
        elif kind == "length":
            (offset, width, order), how = op[1], op[2]
            if offset + width <= len(data):
                current = int.from_bytes(data[offset : offset + width], order)
                top = (1 << (8 * width)) - 1
                value = {
                    "zero": 0,
                    "max": top,
                    "one-less": max(current - 1, 0),
                    "one-more": min(current + 1, top),
                    "huge": top >> 1,
                }[how]
                data[offset : offset + width] = value.to_bytes(width, order)
    return bytes(data)


def typed(call: Callable[[], Any]) -> Any:
    """The result of ``call``, or None when it raised an AttestationError (anything else fails)."""
    try:
        return call()
    except AttestationError:
        return None


# --- SEV-SNP report --------------------------------------------------------------------------

SNP_REPORT = (VECTORS / "sev-snp/milan-report-v2.bin").read_bytes()
SNP_VCEK = (VECTORS / "sev-snp/milan-report-v2.vcek.der").read_bytes()
SNP_POLICY = Policy(allow_debug=True)


def test_snp_seed_is_accepted() -> None:
    assert appraise_snp(SNP_REPORT, certificates=(SNP_VCEK,), policy=SNP_POLICY, at=SNP_AT).accepted


@FUZZ
@given(mutations())
def test_fuzz_snp_report(operations: list[tuple[Any, ...]]) -> None:
    data = mutate(SNP_REPORT, operations)
    appraisal: Appraisal | None = typed(
        lambda: appraise_snp(data, certificates=(SNP_VCEK,), policy=SNP_POLICY, at=SNP_AT)
    )
    if appraisal is not None and data[:SIGNED_SIZE] != SNP_REPORT[:SIGNED_SIZE]:
        assert not appraisal.accepted


# --- TDX quote ----------------------------------------------------------------------------------

TDX_QUOTE = (VECTORS / "tdx/spr-quote-v4.dat").read_bytes()
TDX_COLLATERAL = load_collateral_dir(VECTORS / "tdx/collateral")


def _tdx_signed_parts(data: bytes) -> tuple[bytes, ...] | None:
    quote = typed(lambda: parse_quote(data))
    if quote is None:
        return None
    qe = quote.signature_data.qe_certification
    return (quote.signed_bytes(), qe.qe_report.to_bytes(), quote.signature_data.attestation_key, qe.qe_auth_data)


def _tdx_length_fields() -> tuple[tuple[int, int, str], ...]:
    quote = parse_quote(TDX_QUOTE)
    auth = len(quote.signature_data.qe_certification.qe_auth_data)
    base = 48 + 584
    fields = [
        (base, 4, "little"),
        (base + 4 + 128, 2, "little"),
        (base + 4 + 128 + 2, 4, "little"),
        (base + 4 + 128 + 6 + 384 + 64, 2, "little"),
        (base + 4 + 128 + 6 + 384 + 64 + 2 + auth, 2, "little"),
        (base + 4 + 128 + 6 + 384 + 64 + 2 + auth + 2, 4, "little"),
    ]
    return tuple(fields)


def test_tdx_seed_is_accepted() -> None:
    assert appraise_tdx(TDX_QUOTE, policy=Policy(), at=TDX_AT).accepted
    assert _tdx_signed_parts(TDX_QUOTE) is not None


@FUZZ
@given(mutations(_tdx_length_fields()))
def test_fuzz_tdx_quote(operations: list[tuple[Any, ...]]) -> None:
    data = mutate(TDX_QUOTE, operations)
    appraisal: Appraisal | None = typed(lambda: appraise_tdx(data, policy=Policy(), at=TDX_AT))
    if appraisal is not None and _tdx_signed_parts(data) != _tdx_signed_parts(TDX_QUOTE):
        assert not appraisal.accepted
    # the same bytes through every collateral check and Intel's TCB matching
    typed(lambda: appraise_tdx(data, collateral=TDX_COLLATERAL, policy=Policy(), at=TDX_AT))


# --- TDX collateral JSON -------------------------------------------------------------------------

TCB_INFO = (VECTORS / "tdx/collateral/tcb-info-fmspc-50806f000000.json").read_bytes()
QE_IDENTITY = (VECTORS / "tdx/collateral/qe-identity.json").read_bytes()
TCB_SIGNER = parse_certificates((VECTORS / "tdx/collateral/tcb-info-issuer-chain.pem").read_bytes())[0]


@FUZZ
@given(st.sampled_from(["tcb", "qe"]), mutations())
def test_fuzz_tdx_collateral_json(which: str, operations: list[tuple[Any, ...]]) -> None:
    seed, parse = (TCB_INFO, parse_tcb_info) if which == "tcb" else (QE_IDENTITY, parse_qe_identity)
    original = parse(seed)
    document = typed(lambda: parse(mutate(seed, operations)))
    if document is not None:
        signed_ok = memoised_raw_ecdsa_is_valid(TCB_SIGNER, document.signature, "sha256", document.signed_bytes)
        if document.signed_bytes != original.signed_bytes:
            assert not signed_ok


# --- x509 certificates and CRLs ------------------------------------------------------------------

VCEK_CERT = parse_certificate(SNP_VCEK)
MILAN_CHAIN = parse_certificates((VECTORS / "sev-snp/amd-roots/milan-vcek-chain.pem").read_bytes())
PCK_CRL = (VECTORS / "tdx/collateral/pck-platform-crl.der").read_bytes()
PCK_CRL_ISSUER = parse_certificates((VECTORS / "tdx/collateral/pck-crl-issuer-chain.pem").read_bytes())[0]
GPU_CHAIN_PEM = (VECTORS / "nvidia-gpu/hopper-cert-chain.pem").read_bytes()


def test_x509_seeds_verify() -> None:
    assert certificate_signed_by(VCEK_CERT, MILAN_CHAIN[0])
    assert not crl_reasons(parse_crl(PCK_CRL), PCK_CRL_ISSUER, at=TDX_AT, check_prefix="x", name="crl")


@FUZZ
@given(st.sampled_from(["certificate", "crl", "pem"]), mutations())
def test_fuzz_x509(which: str, operations: list[tuple[Any, ...]]) -> None:
    if which == "certificate":
        cert = typed(lambda: parse_certificate(mutate(SNP_VCEK, operations)))
        if cert is not None and (
            cert.tbs_der != VCEK_CERT.tbs_der or cert.signature_algorithm != VCEK_CERT.signature_algorithm
        ):
            assert not certificate_signed_by(cert, MILAN_CHAIN[0])
    elif which == "crl":
        crl = typed(lambda: parse_crl(mutate(PCK_CRL, operations)))
        if crl is not None and crl.tbs_der != parse_crl(PCK_CRL).tbs_der:
            assert any(
                r.check == "x.signature"
                for r in crl_reasons(crl, PCK_CRL_ISSUER, at=TDX_AT, check_prefix="x", name="crl")
            )
    else:
        typed(lambda: parse_certificates(mutate(GPU_CHAIN_PEM, operations)))


# --- NVIDIA SPDM GPU evidence --------------------------------------------------------------------

GPU_EVIDENCE = parse_gpu_evidence_hex((VECTORS / "nvidia-gpu/hopper-attestation-report.hex").read_text())
GPU_RAW = GPU_EVIDENCE.raw


def _spdm_length_fields() -> tuple[tuple[int, int, str], ...]:
    record = int.from_bytes(GPU_RAW[REQUEST_SIZE + 5 : REQUEST_SIZE + 8], "little")
    opaque_at = REQUEST_SIZE + 8 + record + 32
    blocks = [(REQUEST_SIZE + 8 + 2 + 55 * i, 2, "little") for i in (0, 1, 30, 63)]
    return (
        (REQUEST_SIZE + 4, 1, "little"),
        (REQUEST_SIZE + 5, 3, "little"),
        (opaque_at, 2, "little"),
        (opaque_at + 4, 2, "little"),
        *blocks,
    )


def test_gpu_seed_is_accepted() -> None:
    assert appraise_gpu(
        GPU_RAW, certificates=GPU_CHAIN_PEM, expected_nonce=GPU_EVIDENCE.nonce, policy=Policy(), at=GPU_AT
    ).accepted


@FUZZ
@given(mutations(_spdm_length_fields()), st.booleans())
def test_fuzz_gpu_evidence(operations: list[tuple[Any, ...]], as_hex: bool) -> None:
    data = mutate(GPU_RAW, operations)
    evidence: Any = data.hex() if as_hex else data
    appraisal = typed(
        lambda: appraise_gpu(
            evidence, certificates=GPU_CHAIN_PEM, expected_nonce=GPU_EVIDENCE.nonce, policy=Policy(), at=GPU_AT
        )
    )
    parsed = typed(lambda: parse_gpu_evidence(data))
    if appraisal is not None and parsed is not None and parsed.signed_bytes != GPU_EVIDENCE.signed_bytes:
        assert not appraisal.accepted


# --- evidence bundle CBOR -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_seed() -> tuple[bytes, Policy, bytes]:
    from attestation.bundle_abi import encode_bundle
    from enclave.attester import make_bundle
    from enclave.keys import EnclaveKeys
    from enclave.simulated.attester import SimulatedSnpAttester
    from enclave_fixtures import MEASUREMENT, NONCE_A, shared_simulated_dir, trusting

    attester = SimulatedSnpAttester(shared_simulated_dir(), measurement=MEASUREMENT)
    seed = encode_bundle(make_bundle(attester, EnclaveKeys(), NONCE_A))
    policy = trusting(attester.pki)
    assert appraise_bundle(seed, expected_nonce=NONCE_A, policy=policy, at=dt.datetime.now(dt.UTC)).accepted
    return seed, policy, NONCE_A


@FUZZ
@given(operations=mutations())
def test_fuzz_bundle(bundle_seed: tuple[bytes, Policy, bytes], operations: list[tuple[Any, ...]]) -> None:
    seed, policy, nonce = bundle_seed
    data = mutate(seed, operations)
    appraisal = typed(lambda: appraise_bundle(data, expected_nonce=nonce, policy=policy, at=dt.datetime.now(dt.UTC)))
    if appraisal is None:
        return
    original, mutated = parse_bundle(seed), parse_bundle(data)
    bound = lambda b: (b.evidence[:SIGNED_SIZE], b.keys, b.nonce)  # noqa: E731 - what the report signs and binds
    if bound(mutated) != bound(original):
        assert not appraisal.accepted


# --- policy TOML and RIM ---------------------------------------------------------------------------

POLICY_TOML = (Path(__file__).resolve().parent.parent / "attestation/examples/policy.toml").read_bytes()
RIM = (
    b'<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" '
    b'xmlns:ns0="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" '
    b'xmlns:ns2="http://www.w3.org/2001/04/xmlenc#sha384" '
    b'corpus="false" name="GH100" tagId="test" version="1.0" tagVersion="0">'
    b'<ns0:Meta colloquialVersion="550.90.07" edition="GPU" product="GH100"/><ns0:Payload>'
    + b"".join(
        b'<ns0:Resource type="Measurement" index="%d" active="True" alternatives="1" ns2:Hash0="%s" size="48"/>'
        % (i, b"ab" * 48)
        for i in range(3)
    )
    + b"</ns0:Payload></SoftwareIdentity>"
)


def test_text_seeds_parse() -> None:
    Policy.from_toml(POLICY_TOML.decode())
    assert len(parse_rim(RIM).measurements) == 3


@FUZZ
@given(mutations())
def test_fuzz_policy_toml(operations: list[tuple[Any, ...]]) -> None:
    text = mutate(POLICY_TOML, operations).decode("utf-8", "replace")
    typed(lambda: Policy.from_toml(text))


@FUZZ
@given(mutations())
def test_fuzz_rim(operations: list[tuple[Any, ...]]) -> None:
    typed(lambda: parse_rim(mutate(RIM, operations)))

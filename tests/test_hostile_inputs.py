"""Regression tests for hostile inputs found by fuzzing: each used to escape the verifier as an
untyped exception ("internal error" from the CLI). Each is built here, re-signed with a test
key where the parser must get past a signature, and must now give a typed
``AttestationError`` (or, where the format says so, a failed check), and the CLI one clean
line."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import cbor2
import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from attestation.abi.x509 import SignatureAlgorithm, parse_certificate, parse_certificates
from attestation.bundle_abi import MAGIC, MAX_CREATED, encode_bundle, parse_bundle
from attestation.errors import AttestationError, CertificateFormatError, EvidenceFormatError, PolicyError
from attestation.platforms.tdx.abi import SGX_EXTENSIONS_OID, decode_sgx_extensions
from attestation.platforms.tdx.appraise import appraise_tdx
from attestation.policy import Policy
from attestation.verify.chain import load_public_key, signature_is_valid
from attestfl.cli import main
from enclave.attester import make_bundle
from enclave.keys import EnclaveKeys
from enclave.simulated.attester import SimulatedSnpAttester
from enclave.simulated.pki import SimulatedPki, load_or_create
from enclave.simulated.tdx import SimulatedTdxQuoter, TdOptions
from enclave_fixtures import MEASUREMENT, NONCE_A, shared_simulated_dir, trusting


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["evidence", "verify", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_clean_error_line(err: str) -> None:
    assert "internal error" not in err and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attestfl: error: "), err


@pytest.fixture(scope="module")
def pki() -> SimulatedPki:
    return load_or_create(shared_simulated_dir())


# --- RSA-PSS salt length >= 2^31 ---------------------------------------------------------


def pss_certificate_with_salt(salt: int) -> bytes:
    """AMD's real Milan ASK (RSA-PSS/SHA-384) with its PSS salt length set to ``salt``."""
    from attestation.platforms.snp.roots import amd_root_chains

    cert = asn1_x509.Certificate.load(amd_root_chains()[0].intermediate.der).copy()
    cert["signature_algorithm"]["parameters"]["salt_length"] = salt
    cert["tbs_certificate"]["signature"]["parameters"]["salt_length"] = salt
    return cert.dump(force=True)


@pytest.mark.parametrize("salt", [2**31, 2**63 + 5, 2**200, -1])
def test_pss_salt_length_out_of_range_is_a_certificate_error(salt: int) -> None:
    with pytest.raises(CertificateFormatError, match="salt length"):
        parse_certificate(pss_certificate_with_salt(salt))


def test_pss_salt_length_that_bypassed_the_parser_is_an_invalid_signature_not_a_crash() -> None:
    from attestation.platforms.snp.roots import amd_root_chains

    chain = amd_root_chains()[0]
    algorithm = SignatureAlgorithm("rsassa_pss", "sha384", 2**31, "sha384")
    ask = chain.intermediate
    assert signature_is_valid(load_public_key(chain.root), ask.signature_algorithm, ask.signature, ask.tbs_der)
    assert not signature_is_valid(load_public_key(chain.root), algorithm, ask.signature, ask.tbs_der)


def test_cli_pss_salt_length(capsys: pytest.CaptureFixture[str], tmp_path: Path, vectors: Path) -> None:
    bad = tmp_path / "bad-ask.der"
    bad.write_bytes(pss_certificate_with_salt(2**31))
    # as a GPU certificate chain: unusable input, exit 2 and one line
    hopper = str(vectors / "nvidia-gpu/hopper-attestation-report.hex")
    code, _out, err = cli(capsys, hopper, "--cert", str(bad), "--at", "2024-07-01T00:00:00Z")
    assert code == 2 and "salt length" in err
    assert_one_clean_error_line(err)
    # beside an SEV-SNP report, a certificate that does not decode is a failed check (snp.cert.format)
    code, out, err = cli(
        capsys,
        str(vectors / "sev-snp/milan-report-v2.bin"),
        "--cert",
        str(vectors / "sev-snp/milan-report-v2.vcek.der"),
        "--cert",
        str(bad),
        "--at",
        "2024-01-01T00:00:00Z",
    )
    assert code == 1 and "snp.cert.format" in out and "salt length" in out and not err


# --- bundle created past year 9999 ---------------------------------------------------------


def bundle_with_created(created: int) -> bytes:
    attester = SimulatedSnpAttester(shared_simulated_dir(), measurement=MEASUREMENT)
    bundle = make_bundle(attester, EnclaveKeys(), NONCE_A)
    value = bundle.to_cbor_object()
    value["created"] = created
    return MAGIC + cbor2.dumps(value, canonical=True)


@pytest.mark.parametrize("created", [MAX_CREATED + 1, 2**40 - 1, 2**64 - 1])
def test_bundle_created_past_year_9999_is_a_format_error(created: int) -> None:
    with pytest.raises(EvidenceFormatError, match="bundle created"):
        parse_bundle(bundle_with_created(created))


def test_bundle_created_at_the_last_second_of_9999_parses() -> None:
    bundle = parse_bundle(bundle_with_created(MAX_CREATED))
    assert bundle.created == dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    assert parse_bundle(encode_bundle(bundle)).created == bundle.created


def test_cli_bundle_created_past_year_9999(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bundle.cbor"
    path.write_bytes(bundle_with_created(2**40 - 1))
    code, _out, err = cli(capsys, str(path), "--nonce", NONCE_A.hex())
    assert code == 2 and "bundle created" in err
    assert_one_clean_error_line(err)
    code, out, err = cli(capsys, str(path), "--nonce", NONCE_A.hex(), "--json")
    assert code == 2 and out.count("\n") == 1 and '"accepted": false' in out


def test_cli_time_out_of_range(capsys: pytest.CaptureFixture[str], vectors: Path) -> None:
    code, _out, err = cli(capsys, str(vectors / "sev-snp/milan-report-v2.bin"), "--at", "+10000-01-01T00:00:00Z")
    assert code == 2
    assert_one_clean_error_line(err)


# --- malformed SGX extension in a TDX PCK certificate ---------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        length = bytes([len(content)])
    else:
        raw = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _oid(dotted: str) -> bytes:
    from asn1crypto import core

    return core.ObjectIdentifier(dotted).dump()


def malformed_sgx_extension() -> bytes:
    """SEQUENCE OF (OID, ANY) whose TCB value is an element no parser knows
    (universal class, constructed, tag 0): the ANY is only parsed when it is used."""

    def entry(oid: str, value: bytes) -> bytes:
        return _der(0x30, _oid(oid) + value)

    return _der(
        0x30,
        b"".join(
            [
                entry(f"{SGX_EXTENSIONS_OID}.1", _der(0x04, bytes(16))),
                entry(f"{SGX_EXTENSIONS_OID}.2", b"\x20\x00"),
                entry(f"{SGX_EXTENSIONS_OID}.3", _der(0x04, bytes(2))),
                entry(f"{SGX_EXTENSIONS_OID}.4", _der(0x04, bytes(6))),
                entry(f"{SGX_EXTENSIONS_OID}.5", _der(0x0A, b"\x00")),
            ]
        ),
    )


def pki_with_pck_extension(pki: SimulatedPki, value: bytes) -> SimulatedPki:
    """The simulated PKI with its PCK leaf re-issued (same key, signed by the simulated PCK CA)
    carrying ``value`` as its SGX extension."""
    leaf = pki.intel.pck_leaf.cert
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer)
        .public_key(leaf.public_key())
        .serial_number(leaf.serial_number)
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
    )
    for extension in leaf.extensions:
        if extension.oid.dotted_string != SGX_EXTENSIONS_OID:
            builder = builder.add_extension(extension.value, extension.critical)
    builder = builder.add_extension(
        x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSIONS_OID), value), critical=False
    )
    new_leaf = dataclasses.replace(pki.intel.pck_leaf, cert=builder.sign(pki.intel.pck_ca.key, hashes.SHA256()))
    return dataclasses.replace(pki, intel=dataclasses.replace(pki.intel, pck_leaf=new_leaf))


def test_malformed_sgx_extension_is_a_certificate_error() -> None:
    with pytest.raises(CertificateFormatError, match="SGX extensions"):
        decode_sgx_extensions(malformed_sgx_extension())


def test_quote_whose_pck_leaf_has_a_malformed_sgx_extension_is_refused(
    pki: SimulatedPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = pki_with_pck_extension(pki, malformed_sgx_extension())
    quote = SimulatedTdxQuoter(hostile).quote(bytes(64), TdOptions(mr_td=MEASUREMENT))
    appraisal = appraise_tdx(quote, policy=trusting(pki), at=dt.datetime.now(dt.UTC))
    assert [r.check for r in appraisal.reasons] == ["tdx.pck.leaf"], appraisal.reasons
    assert "SGX extensions" in appraisal.reasons[0].message
    path = tmp_path / "quote.dat"
    path.write_bytes(quote)
    code, out, err = cli(capsys, str(path))
    assert code == 1 and "tdx.pck.leaf" in out and not err


# --- policy values that overflowed ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "max_collateral_age = 999999999999999999",
        'max_collateral_age = "99999999999d"',
        "max_collateral_age = " + "9" * 5000,
        'max_collateral_age = "' + "9" * 5000 + 'd"',
        "a = " + "[" * 5000 + "]" * 5000,
    ],
)
def test_policy_values_out_of_range_are_policy_errors(text: str) -> None:
    with pytest.raises(PolicyError):
        Policy.from_toml(text)


def test_policy_duration_bound() -> None:
    assert Policy.from_toml('max_collateral_age = "36500d"').max_collateral_age == dt.timedelta(days=36500)
    with pytest.raises(PolicyError, match="longer than"):
        Policy.from_toml('max_collateral_age = "36501d"')


def test_every_error_here_is_an_attestation_error() -> None:
    for exc in (CertificateFormatError, EvidenceFormatError, PolicyError):
        assert issubclass(exc, AttestationError)
    assert parse_certificates  # the PEM path shares the DER decoder


# --- certificate and CRL times outside datetime's range --------------------------------------


def _with_not_before(der: bytes, encoded_time: bytes) -> bytes:
    from asn1crypto import x509 as asn1

    cert = asn1.Certificate.load(der).copy()
    cert["tbs_certificate"]["validity"]["not_before"] = asn1.Time.load(encoded_time)
    return cert.dump(force=True)


@pytest.mark.parametrize("encoded", [b"\x18\x0f00000101000000Z", b"\x17\x0d230230000000Z"])
def test_certificate_times_out_of_range_are_certificate_errors(encoded: bytes, vectors: Path) -> None:
    vcek = (vectors / "sev-snp/milan-report-v2.vcek.der").read_bytes()
    with pytest.raises(CertificateFormatError):
        parse_certificate(
            _with_not_before(vcek, encoded)
            if encoded[0] == 0x18
            else vcek.replace(bytes.fromhex("170d3232303932343030353532385a"), encoded, 1)
        )


# --- RIM encodings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        b'<?xml version="1.0" encoding="bogus"?><a/>',
        '<?xml version="1.0" encoding="utf-16"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'.encode("utf-16"),
        b'<?xml version="1.0" encoding="latin-1"?><a/>',
        b"\xff\xfe<\x00a\x00/\x00>\x00",
    ],
)
def test_rims_in_other_encodings_are_refused(document: bytes) -> None:
    from attestation.errors import CollateralFormatError
    from attestation.platforms.nvidia.rim import parse_rim

    with pytest.raises(CollateralFormatError, match="UTF-8"):
        parse_rim(document)

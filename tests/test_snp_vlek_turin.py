"""VLEK-signed reports (VLEK -> ASVK -> ARK) and the Turin TCB layout, through the verifier.

The chains are built here with the simulated PKI's certificate builder: a Turin ARK/ASK/VCEK
(the VCEK carrying the FMC SPL extension) and a Milan ARK/ASVK/VLEK. RSA-2048 keeps the test
quick; the verifier does not depend on the key size.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attestation.findings import Appraisal
from attestation.platforms.snp.abi import SIGNED_SIZE, TcbVersion, encode_report, flags_word, new_report, with_signature
from attestation.platforms.snp.appraise import appraise_snp
from attestation.policy import Policy
from enclave.simulated.pki import Issued, _builder, _name, _sign, vcek_extensions

NOW = dt.datetime.now(dt.UTC)
TURIN_TCB = TcbVersion(bootloader=1, tee=0, snp=3, microcode=0x44, fmc=2)
MILAN_TCB = TcbVersion(bootloader=4, tee=0, snp=22, microcode=213)


@dataclass(frozen=True)
class Chain:
    root: Issued
    intermediate: Issued
    leaf: Issued
    chip_id: bytes

    def certificates(self) -> tuple[bytes, ...]:
        return (self.leaf.der, self.intermediate.pem + self.root.pem)

    @property
    def root_fingerprint(self) -> str:
        return hashlib.sha256(self.root.der).hexdigest()

    def policy(self, **kwargs: object) -> Policy:
        return Policy(trusted_simulated_roots=frozenset({self.root_fingerprint}), **kwargs)  # type: ignore[arg-type]


def _chain(product: str, leaf_kind: str, intermediate_cn: str, tcb: TcbVersion) -> Chain:
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root_name = _name(f"ARK-{product} (simulated)")
    root = Issued(_sign(_builder(root_name, root_name, root_key.public_key(), NOW, True), root_key), root_key)
    mid_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    mid_name = _name(f"{intermediate_cn} (simulated)")
    intermediate = Issued(_sign(_builder(mid_name, root_name, mid_key.public_key(), NOW, True), root_key), mid_key)
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    chip_id = bytes(range(64))
    builder = _builder(_name(f"SEV-{leaf_kind} (simulated)"), mid_name, leaf_key.public_key(), NOW, False)
    for ext in vcek_extensions(tcb.components(), chip_id, f"{product}-B0"):
        builder = builder.add_extension(ext, critical=False)
    return Chain(root, intermediate, Issued(_sign(builder, mid_key), leaf_key), chip_id)


@pytest.fixture(scope="module")
def turin() -> Chain:
    return _chain("Turin", "VCEK", "SEV-Turin", TURIN_TCB)


@pytest.fixture(scope="module")
def milan_vlek() -> Chain:
    return _chain("Milan", "VLEK", "SEV-VLEK-Milan", MILAN_TCB)


def _signed(chain: Chain, product: str, tcb: TcbVersion, **fields: object) -> bytes:
    raw = tcb.to_bytes(product)
    values: dict[str, object] = dict(
        reported_tcb_raw=raw, current_tcb_raw=raw, committed_tcb_raw=raw, launch_tcb_raw=raw, chip_id=chain.chip_id
    )
    values.update(fields)
    unsigned = encode_report(new_report(**values))
    r, s = decode_dss_signature(chain.leaf.key.sign(unsigned[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
    return with_signature(unsigned, r, s)


def checks(appraisal: Appraisal) -> set[str]:
    return {r.check for r in appraisal.reasons}


def test_turin_report_decodes_fmc_and_verifies(turin: Chain) -> None:
    report = _signed(turin, "turin", TURIN_TCB, version=5, cpuid_fam_id=0x1A, cpuid_mod_id=0x02)
    appraisal = appraise_snp(report, certificates=turin.certificates(), policy=turin.policy(), at=NOW)
    assert appraisal.accepted, appraisal.reasons
    assert appraisal.claims["product"] == "turin"
    assert appraisal.claims["reported_tcb"] == {"bootloader": 1, "tee": 0, "snp": 3, "microcode": 0x44, "fmc": 2}
    policy = Policy.from_toml(
        f'trusted_simulated_roots = ["{turin.root_fingerprint}"]\n[sev-snp.minimum_tcb]\nfmc = 3\n'
    )
    short = appraise_snp(report, certificates=turin.certificates(), policy=policy, at=NOW)
    assert checks(short) == {"snp.policy.minimum_tcb"} and "fmc SPL 2 < minimum 3" in short.reasons[0].message


def test_turin_fmc_must_match_the_vcek(turin: Chain) -> None:
    lower = TcbVersion(bootloader=1, tee=0, snp=3, microcode=0x44, fmc=1)
    report = _signed(turin, "turin", lower, version=5, cpuid_fam_id=0x1A, cpuid_mod_id=0x02)
    appraisal = appraise_snp(report, certificates=turin.certificates(), policy=turin.policy(), at=NOW)
    assert checks(appraisal) == {"snp.cert.tcb"} and "fmc" in appraisal.reasons[0].message


def test_turin_report_with_a_milan_layout_fails(turin: Chain) -> None:
    # The same SPLs written with Milan's byte positions are read as other values on Turin.
    report = _signed(
        turin,
        "turin",
        TURIN_TCB,
        version=5,
        cpuid_fam_id=0x1A,
        cpuid_mod_id=0x02,
        reported_tcb_raw=bytes([1, 0, 0, 0, 0, 0, 3, 0x44]),
    )
    assert "snp.cert.tcb" in checks(
        appraise_snp(report, certificates=turin.certificates(), policy=turin.policy(), at=NOW)
    )


def test_vlek_signed_report(milan_vlek: Chain) -> None:
    flags = flags_word(signing_key="vlek", mask_chip_key=True)
    report = _signed(milan_vlek, "milan", MILAN_TCB, flags=flags, chip_id=bytes(64))
    appraisal = appraise_snp(report, certificates=milan_vlek.certificates(), policy=milan_vlek.policy(), at=NOW)
    assert appraisal.accepted, appraisal.reasons
    assert appraisal.claims["signing_key"] == "vlek"
    vcek_only = milan_vlek.policy(snp=Policy.from_toml('[sev-snp]\nsigning_keys = ["vcek"]').snp)
    assert checks(appraise_snp(report, certificates=milan_vlek.certificates(), policy=vcek_only, at=NOW)) == {
        "snp.policy.signing_keys"
    }


def test_vlek_issued_by_an_ask_is_refused(turin: Chain) -> None:
    # A "VLEK" issued by an ASK (not an ASVK): the chain kind is wrong.
    bogus = _chain("Milan", "VLEK", "SEV-Milan", MILAN_TCB)
    report = _signed(bogus, "milan", MILAN_TCB, flags=flags_word(signing_key="vlek"))
    assert "snp.chain.kind" in checks(
        appraise_snp(report, certificates=bogus.certificates(), policy=bogus.policy(), at=NOW)
    )


def test_vcek_report_with_a_vlek_certificate_is_refused(milan_vlek: Chain) -> None:
    report = _signed(milan_vlek, "milan", MILAN_TCB)  # SIGNING_KEY says VCEK
    found = checks(appraise_snp(report, certificates=milan_vlek.certificates(), policy=milan_vlek.policy(), at=NOW))
    assert {"snp.cert.kind", "snp.chain.kind"} <= found

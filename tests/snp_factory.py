"""Test helper: SEV-SNP reports with any field values, signed by a simulated AMD PKI."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attestation.platforms.snp.abi import SIGNED_SIZE, encode_report, new_report, with_signature
from attestation.policy import Policy
from enclave.simulated.pki import SIM_SNP_TCB, SimulatedPki


def tcb_bytes(tcb: dict[str, int]) -> bytes:
    return bytes([tcb["bootloader"], tcb["tee"], 0, 0, 0, 0, tcb["snp"], tcb["microcode"]])


def sign_report(pki: SimulatedPki, **fields: object) -> bytes:
    tcb = tcb_bytes(SIM_SNP_TCB)
    values: dict[str, object] = dict(
        version=3,
        cpuid_fam_id=0x19,
        cpuid_mod_id=0x01,
        chip_id=pki.amd.chip_id,
        current_tcb_raw=tcb,
        reported_tcb_raw=tcb,
        committed_tcb_raw=tcb,
        launch_tcb_raw=tcb,
        current_major=1,
        current_minor=55,
        current_build=21,
        committed_major=1,
        committed_minor=55,
        committed_build=21,
        policy=0x30000,
    )
    values.update(fields)
    unsigned = encode_report(new_report(**values))
    r, s = decode_dss_signature(pki.amd.vcek.key.sign(unsigned[:SIGNED_SIZE], ec.ECDSA(hashes.SHA384())))
    return with_signature(unsigned, r, s)


def sim_chain(pki: SimulatedPki) -> tuple[bytes, ...]:
    return (pki.amd.vcek.der, pki.amd.ask.pem + pki.amd.ark.pem)


def trusting(pki: SimulatedPki, **kwargs: object) -> Policy:
    return Policy(trusted_simulated_roots=frozenset({pki.trusted_root_fingerprints()["sev-snp"]}), **kwargs)  # type: ignore[arg-type]

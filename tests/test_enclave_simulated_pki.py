"""The simulated vendor PKIs mirror the real hierarchies and persist in their directory."""

from __future__ import annotations

import multiprocessing
import stat

import pytest

from attestation.abi.x509 import decode_der_integer, parse_certificate
from attestation.timeutil import utcnow
from attestation.trust import is_simulated
from attestation.verify.chain import ChainLink, verify_chain
from enclave.simulated import SimulatedTeeError
from enclave.simulated.pki import SIM_SNP_TCB, load_or_create


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return load_or_create(tmp_path_factory.mktemp("sim"))


def test_amd_chain_verifies_like_the_real_one(pki):
    vcek, ask, ark = (parse_certificate(i.der) for i in (pki.amd.vcek, pki.amd.ask, pki.amd.ark))
    assert (
        verify_chain(
            [ChainLink(vcek, "VCEK"), ChainLink(ask, "ASK"), ChainLink(ark, "ARK")], at=utcnow(), check_prefix="t"
        )
        == []
    )
    assert ask.signature_algorithm.scheme == "rsassa_pss" and ask.signature_algorithm.hash_name == "sha384"
    assert all(is_simulated(c) for c in (vcek, ask, ark))
    oid = "1.3.6.1.4.1.3704.1"
    assert decode_der_integer(vcek.extension_value(f"{oid}.3.1")) == SIM_SNP_TCB["bootloader"]
    assert decode_der_integer(vcek.extension_value(f"{oid}.3.3")) == SIM_SNP_TCB["snp"]
    assert decode_der_integer(vcek.extension_value(f"{oid}.3.8")) == SIM_SNP_TCB["microcode"]
    assert vcek.extension_value(f"{oid}.4") == pki.amd.chip_id  # raw 64 bytes, as AMD writes it


def test_intel_chain_verifies_and_leaf_has_sgx_extension(pki):
    leaf, ca, root = (parse_certificate(i.der) for i in (pki.intel.pck_leaf, pki.intel.pck_ca, pki.intel.root))
    assert (
        verify_chain(
            [ChainLink(leaf, "PCK"), ChainLink(ca, "PCK CA"), ChainLink(root, "root")], at=utcnow(), check_prefix="t"
        )
        == []
    )
    assert "1.2.840.113741.1.13.1" in leaf.extensions


def test_reload_gives_the_same_roots_and_private_keys_are_private(pki):
    again = load_or_create(pki.directory)
    assert again.trusted_root_fingerprints() == pki.trusted_root_fingerprints()
    for key_file in pki.directory.rglob("*.key.pem"):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_two_directories_are_two_different_roots(pki, tmp_path):
    other = load_or_create(tmp_path / "other")
    assert set(other.trusted_root_fingerprints().values()).isdisjoint(pki.trusted_root_fingerprints().values())


def test_corrupt_directory_is_a_typed_error(pki, tmp_path):
    broken = load_or_create(tmp_path / "broken").directory
    (broken / "amd" / "vcek.pem").write_text("garbage")
    with pytest.raises(SimulatedTeeError, match="unusable"):
        load_or_create(broken)


def _roots_in_a_new_process(directory: str) -> dict[str, str]:
    return load_or_create(directory).trusted_root_fingerprints()


def test_processes_starting_at_once_on_a_fresh_directory_share_one_complete_pki(tmp_path):
    """``attestfl demo`` enrols every site in parallel on one fresh directory: no process may read
    another's half-written key (the CI failure "Unable to load PEM file"), and all end on one root."""
    directory = tmp_path / "fresh"
    context = multiprocessing.get_context("spawn")
    with context.Pool(6) as pool:
        roots = pool.map(_roots_in_a_new_process, [str(directory)] * 12)
    assert all(r == roots[0] for r in roots)
    assert roots[0] == load_or_create(directory).trusted_root_fingerprints()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_a_directory_that_already_holds_the_gpu_pki_gets_the_cpu_pkis_beside_it(tmp_path):
    from enclave.simulated.gpu import load_or_create_gpu_pki

    gpu = load_or_create_gpu_pki(tmp_path / "vendor" / "gpu")
    pki = load_or_create(tmp_path / "vendor")
    assert load_or_create_gpu_pki(tmp_path / "vendor" / "gpu").root_fingerprint == gpu.root_fingerprint
    assert load_or_create(tmp_path / "vendor").trusted_root_fingerprints() == pki.trusted_root_fingerprints()

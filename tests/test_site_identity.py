"""The site identity key: `attestfl site enroll` creates it inside the (simulated) TEE and seals
it; only the same site id, code and TEE open it again."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from enclave.identity import IdentityError, SiteIdentity, enroll, fingerprint, load_identity
from enclave.sealing import SimulatedSealingKey


def _site_toml(directory: Path, site_id: str = "hospital-a", extra: str = "") -> Path:
    (directory / "policy.toml").write_text("trusted_simulated_roots = []\n")
    path = directory / "site.toml"
    path.write_text(
        textwrap.dedent(f"""\
        [site]
        id = "{site_id}"
        aggregator = "127.0.0.1:1"
        tee = "simulated-snp"
        simulated_dir = "vendor"
        policy = "policy.toml"
        {extra}
        """)
    )
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attestfl.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_enroll_seals_a_key_that_only_this_site_and_code_open(tmp_path: Path) -> None:
    config = _site_toml(tmp_path)
    result = _cli("site", "enroll", "--config", str(config), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["site"] == "hospital-a" and len(bytes.fromhex(printed["identity_key"])) == 32
    assert printed["fingerprint"] == fingerprint(bytes.fromhex(printed["identity_key"]))
    sealed = tmp_path / "identity.sealed"
    assert sealed.stat().st_mode & 0o077 == 0  # private to the site's user
    assert bytes.fromhex(printed["identity_key"]) not in sealed.read_bytes()

    # Re-running enrol never silently replaces the key the operator pinned.
    again = _cli("site", "enroll", "--config", str(config), cwd=tmp_path)
    assert again.returncode == 2 and "already enrolled" in again.stderr and "--replace" in again.stderr
    human = _cli("site", "enroll", "--config", str(config), "--replace", cwd=tmp_path)
    assert human.returncode == 0 and 'identity_keys = ["' in human.stdout and "fingerprint" in human.stdout


def test_sealed_identity_is_bound_to_site_id_and_measurement(tmp_path: Path) -> None:
    code = SimulatedSealingKey(tmp_path, b"\x01" * 48)
    identity = enroll(tmp_path / "identity.sealed", code, "hospital-a")
    assert load_identity(tmp_path / "identity.sealed", code, "hospital-a").public == identity.public
    with pytest.raises(IdentityError, match="another site id"):
        load_identity(tmp_path / "identity.sealed", code, "hospital-b")
    with pytest.raises(IdentityError, match="other code"):
        load_identity(tmp_path / "identity.sealed", SimulatedSealingKey(tmp_path, b"\x02" * 48), "hospital-a")
    (tmp_path / "garbage").write_bytes(b"AFID1" + bytes(40))
    with pytest.raises(IdentityError, match="cannot be unsealed"):
        load_identity(tmp_path / "garbage", code, "hospital-a")
    with pytest.raises(IdentityError, match="site enroll"):
        load_identity(tmp_path / "missing.sealed", code, "hospital-a")


def test_identity_private_key_never_leaves_the_object() -> None:
    identity = SiteIdentity.generate("hospital-a")
    assert identity.public.hex() in repr(identity)
    for attempt in (
        lambda: pickle.dumps(identity),
        lambda: __import__("copy").copy(identity),
        lambda: __import__("copy").deepcopy(identity),
    ):
        with pytest.raises(IdentityError):
            attempt()


def test_site_run_without_enrolment_says_what_to_do(tmp_path: Path) -> None:
    config = _site_toml(tmp_path, extra="INSECURE_accept_any_aggregator = true")
    (tmp_path / "trainer.py").write_text("def make(data, base):\n    return None\n")
    with config.open("a") as handle:
        handle.write('\n[data]\ntrainer = "trainer:make"\n')
    result = _cli("site", "join", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2 and "attestfl site enroll" in result.stderr and "Traceback" not in result.stderr


def _sealing_key_in_a_new_process(directory: str) -> bytes:
    from enclave.sealing import SimulatedSealingKey

    return SimulatedSealingKey(directory, bytes(48)).key(b"test")


def test_processes_starting_at_once_share_one_simulated_sealing_root(tmp_path: Path) -> None:
    """The demo enrols its sites in parallel, each sealing with the simulated TEE's root: a process
    must never read the root file while another is still writing it."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(6) as pool:
        keys = pool.map(_sealing_key_in_a_new_process, [str(tmp_path)] * 12)
    assert len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["sealing-root.key"]  # no temporary file left

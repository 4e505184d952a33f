"""Shared helpers for the enclave tests: one simulated TEE directory per test session."""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from attestation.policy import Policy
from enclave.simulated.pki import SimulatedPki, load_or_create

MEASUREMENT = hashlib.sha384(b"attestfl test aggregator").digest()
NONCE_A = hashlib.sha256(b"verifier nonce A").digest()
NONCE_B = hashlib.sha256(b"verifier nonce B").digest()


def now() -> datetime:
    return datetime.now(UTC)


def trusting(pki: SimulatedPki, *extra: str, **kwargs: object) -> Policy:
    roots = frozenset(pki.trusted_root_fingerprints().values()) | frozenset(extra)
    return Policy(trusted_simulated_roots=roots, **kwargs)  # type: ignore[arg-type]


_SHARED: dict[str, Path] = {}


def shared_simulated_dir() -> Path:
    """One simulated TEE directory for the whole test run (the RSA-4096 AMD keys are slow
    to make); removed when the interpreter exits."""
    if "dir" not in _SHARED:
        base = Path(tempfile.mkdtemp(prefix="attestfl-simulated-tee-"))
        atexit.register(shutil.rmtree, base, True)
        _SHARED["dir"] = base / "tee"
        load_or_create(_SHARED["dir"])
    return _SHARED["dir"]


def other_simulated_dir() -> Path:
    """A second, independent simulated TEE (another root of trust)."""
    if "other" not in _SHARED:
        base = Path(tempfile.mkdtemp(prefix="attestfl-simulated-tee-"))
        atexit.register(shutil.rmtree, base, True)
        _SHARED["other"] = base / "tee"
        load_or_create(_SHARED["other"])
    return _SHARED["other"]

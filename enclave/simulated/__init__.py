"""The simulated TEE: software roots of trust emitting real binary evidence formats.

It proves nothing about hardware. It exists so that every verifier path (parsing,
signatures, chains, collateral, policy) runs on an ordinary machine, and it is
accepted only by policies that name its root fingerprints.

Modules: :mod:`.pki` (the AMD and Intel roots), :mod:`.snp`, :mod:`.tdx` (the CPU
evidence), :mod:`.gpu` (a simulated NVIDIA CC GPU: its PKI and SPDM evidence),
:mod:`.collateral` (what the simulated vendors publish) and :mod:`.attester`.
"""

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from attestation.errors import AttestflError
from attestation.files import read_bounded


class SimulatedTeeError(AttestflError):
    """The simulated TEE's directory or inputs are unusable."""


def create_once(directory: Path, marker: str, populate: Callable[[Path], None]) -> None:
    """Fill ``directory`` with ``populate`` unless it holds ``marker`` (which ``populate`` writes last).

    Several processes may start at once on a fresh directory (``attestfl demo`` enrols every site in
    parallel), and the directory may already hold other things (the simulated GPU's ``gpu/``, the
    sealing root). The creator holds an exclusive ``flock`` on the directory while it writes; a
    process that finds no marker waits for that lock and looks again, so nobody reads a half-written
    key and nobody overwrites a finished one.
    """
    if (directory / marker).exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    handle = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not (directory / marker).exists():
            os.chmod(directory, 0o700)
            populate(directory)
    finally:
        os.close(handle)  # releases the lock


#: No file of a simulated PKI directory is larger than this.
MAX_PKI_FILE_BYTES = 64 * 1024


def read_pki_file(path: Path) -> bytes:
    """A file of a simulated PKI directory, read with a bound."""
    return read_bounded(path, MAX_PKI_FILE_BYTES, "simulated TEE file", SimulatedTeeError)


def save_issued(directory: Path, name: str, certificate_pem: bytes, key: PrivateKeyTypes) -> None:
    """``name.pem`` (the certificate) and ``name.key.pem`` (its key, PKCS#8, readable by the owner only)."""
    (directory / f"{name}.pem").write_bytes(certificate_pem)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(directory / f"{name}.key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)


def load_issued(directory: Path, name: str) -> tuple[x509.Certificate, PrivateKeyTypes]:
    """What :func:`save_issued` wrote."""
    certificate = x509.load_pem_x509_certificate(read_pki_file(directory / f"{name}.pem"))
    return certificate, serialization.load_pem_private_key(read_pki_file(directory / f"{name}.key.pem"), password=None)

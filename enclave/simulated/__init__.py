"""The simulated TEE: software roots of trust emitting real binary evidence formats.

It proves nothing about hardware. It exists so that every verifier path (parsing,
signatures, chains, collateral, policy) runs on an ordinary machine, and it is
accepted only by policies that name its root fingerprints.

Modules: :mod:`.pki` (the AMD and Intel roots), :mod:`.snp`, :mod:`.tdx` (the CPU
evidence), :mod:`.gpu` (a simulated NVIDIA CC GPU: its PKI and SPDM evidence),
:mod:`.collateral` (what the simulated vendors publish) and :mod:`.attester`.
"""

import errno
import os
import shutil
import tempfile
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
    """Create ``directory`` (holding ``marker``) with ``populate`` unless it already exists.

    Several processes may start at once on a fresh directory (``attestfl demo`` enrols every site in
    parallel). Each fills a private sibling directory and renames it into place: ``rename`` is
    atomic, so a reader sees either no directory or a complete one, never a half-written key. The
    first rename wins; the others find the directory taken and discard their own.
    """
    if (directory / marker).exists():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        populate(staging)
        (staging / marker).touch(exist_ok=True)
        try:
            os.rename(staging, directory)  # replaces an empty directory; fails on a populated one
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if not (directory / marker).exists():
                raise SimulatedTeeError(
                    f"{directory} exists and is not a simulated TEE directory (no {marker}); "
                    "name another directory or empty this one"
                ) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


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

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

from attestation.errors import AttestflError


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

"""The simulated TEE: software roots of trust emitting real binary evidence formats.

It proves nothing about hardware. It exists so that every verifier path (parsing,
signatures, chains, collateral, policy) runs on an ordinary machine, and it is
accepted only by policies that name its root fingerprints.

Modules: :mod:`.pki` (the AMD and Intel roots), :mod:`.snp`, :mod:`.tdx` (the CPU
evidence), :mod:`.gpu` (a simulated NVIDIA CC GPU: its PKI and SPDM evidence),
:mod:`.collateral` (what the simulated vendors publish) and :mod:`.attester`.
"""

from attestation.errors import AttestflError


class SimulatedTeeError(AttestflError):
    """The simulated TEE's directory or inputs are unusable."""

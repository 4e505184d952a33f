"""The simulated TEE: software roots of trust emitting real binary evidence formats.

It proves nothing about hardware. It exists so that every verifier path (parsing,
signatures, chains, collateral, policy) runs on an ordinary machine, and it is
accepted only by policies that name its root fingerprints.
"""

from attestation.errors import AttestflError


class SimulatedTeeError(AttestflError):
    """The simulated TEE's directory or inputs are unusable."""

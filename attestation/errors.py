"""Exception types of the relying party.

Unusable input (bytes that do not parse, a malformed policy) raises one of these.
Evidence that parses but fails a check is *not* an exception: it is an
:class:`attestation.findings.Appraisal` with every failed check listed.
"""
from __future__ import annotations


class AttestationError(Exception):
    """Base of every error raised by the relying party."""


class EvidenceFormatError(AttestationError):
    """The evidence bytes are not a well-formed report, quote or bundle."""


class EvidenceTooLargeError(EvidenceFormatError):
    """The input is larger than any evidence this verifier accepts; nothing was parsed."""


class CertificateFormatError(AttestationError):
    """A certificate, chain or CRL could not be decoded."""


class CollateralFormatError(AttestationError):
    """Collateral (TCB info, QE identity, CRLs) is missing a field or malformed."""


class PolicyError(AttestationError):
    """A policy file or value is malformed: unknown key, wrong type, bad hex."""


class PlatformError(AttestationError):
    """A platform name is unknown, or a platform plug-in cannot be registered (it does not load,
    is no :class:`~attestation.platforms.base.Platform`, or takes a name or policy key in use)."""


class CollateralError(AttestationError):
    """The verifier's collateral store cannot be used: no such cache directory, a bad fetch
    setting, collateral given both to the store and beside it."""


class CollateralFetchError(CollateralError):
    """A vendor service did not give the collateral (network, HTTP status, size, time)."""

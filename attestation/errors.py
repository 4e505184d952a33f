"""The error model of attestfl, and the exception types of the relying party.

Every exception attestfl raises derives from :class:`AttestflError`, which carries the exit
status the ``attestfl`` command ends with when it is not caught sooner, and a stable
``kind`` naming that status: the console script catches this one type (``attestfl.cli.main``)
and prints its one-line message. The exit statuses every command documents:

* 0 (:data:`EXIT_OK`) done, valid, accepted;
* 1 (:data:`EXIT_REFUSED`, kind ``"refused"``) refused, untrusted, not admitted, failed verification;
* 2 (:data:`EXIT_UNUSABLE`, kind ``"unusable"``) unusable input or configuration (the default);
* 3 (:data:`EXIT_FAULT`, kind ``"fault"``) the aggregator stopped on a fault;
* 4 (:data:`EXIT_NOT_TRUSTED`, kind ``"not_trusted"``) authentic but not trusted by your policy:
  ``attestfl audit verify``/``report`` on a log that is intact (nothing altered since it was
  signed) whose aggregator evidence ends at roots, or has a measurement or TCB, that the
  auditor's policy does not accept (e.g. the simulated TEE's root under the default policy).

This module is the bottom layer: every package (``native`` too) may import it. A package's
errors derive from it directly or through the package's own base (``AttestationError`` here).

Unusable input (bytes that do not parse, a malformed policy) raises one of the relying party's
errors below. Evidence that parses but fails a check is *not* an exception: it is an
:class:`attestation.findings.Appraisal` with every failed check listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

EXIT_OK, EXIT_REFUSED, EXIT_UNUSABLE, EXIT_FAULT = 0, 1, 2, 3
#: An audit log that is authentic (intact) but whose evidence the auditor's policy does not trust.
EXIT_NOT_TRUSTED = 4
#: The stable name of each non-zero exit status (``AttestflError.kind``).
KINDS = {EXIT_REFUSED: "refused", EXIT_UNUSABLE: "unusable", EXIT_FAULT: "fault", EXIT_NOT_TRUSTED: "not_trusted"}

#: The largest evidence accepted anywhere (SEV-SNP report, TDX quote, GPU evidence, evidence
#: bundle, an Admit request's evidence): larger input is refused before it is parsed
#: (:class:`EvidenceTooLargeError`).
MAX_EVIDENCE_BYTES = 64 * 1024


class AttestflError(Exception):
    """Base of every error attestfl raises; ``str()`` is the reason, ``exit_code`` the exit
    status of the command it ends. A subclass states its status by setting ``exit_code``."""

    exit_code: ClassVar[int] = EXIT_UNUSABLE

    @property
    def kind(self) -> str:
        """``"refused"``, ``"unusable"``, ``"fault"`` or ``"not_trusted"``: the stable name of ``exit_code``."""
        return KINDS[self.exit_code]


class ExtraNotInstalled(AttestflError):
    """A command needs an optional part of attestfl (an extra) that is not installed here."""

    @classmethod
    def check(cls, extra: str, command: str, modules: Iterable[str]) -> None:
        """Raise unless every module of ``extra`` is importable (nothing is imported here)."""
        import importlib.util

        missing = [name for name in modules if importlib.util.find_spec(name) is None]
        if missing:
            raise cls(
                f"{command} needs the {extra} extra ({', '.join(missing)} not installed): "
                f"pip install 'attestfl[{extra}]'"
            )


class AttestationError(AttestflError):
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

"""What a platform is: the :class:`Platform` protocol every platform package implements, and
what the relying party hands a platform (:class:`EvidenceInputs`, an :class:`AppraisalPolicy`).

A platform is one kind of evidence (an SEV-SNP attestation report, a TDX quote, NVIDIA GPU
evidence, or a third party's format) with everything the relying party needs to use it
without knowing its name: how to recognise its raw bytes, where its report_data is, how to
verify and appraise it, its policy section, the launch measurement a policy pins and the
vendor roots its chains end at. The registry (:mod:`attestation.platforms.registry`) holds
the platforms; nothing outside the platform packages names one.

This module imports no platform and no policy: platforms depend on it, never the reverse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Protocol,
    Self,
    TypeVar,
    runtime_checkable,
)

from ..findings import Appraisal
from ..trust import VendorRoots

if TYPE_CHECKING:
    from ..collateral import CollateralStore

SectionT = TypeVar("SectionT")

#: The keys of a policy that are not a platform's section (see :mod:`attestation.policy`).
COMMON_POLICY_KEYS = (
    "platforms",
    "allow_debug",
    "report_data",
    "require_collateral",
    "max_collateral_age",
    "trusted_simulated_roots",
    "require_gpu",
)

#: The claims every platform reports, whatever its evidence (``None`` where it has no such
#: thing, e.g. the launch measurement of GPU evidence):
#:
#: * ``platform`` — the platform's registered name;
#: * ``measurement`` — lowercase hex of the launch measurement (SEV-SNP MEASUREMENT, TDX MRTD);
#: * ``debug`` — the guest can be debugged (its memory read by the host);
#: * ``simulated`` — the evidence ends at a simulated root: it proves nothing about hardware;
#: * ``tcb_status`` — the vendor's verdict on the platform's TCB, when the vendor gives one and
#:   collateral was used (TDX: Intel's status from the TCB info);
#: * ``signing_key`` — the kind of key that signed the evidence (SEV-SNP ``vcek``/``vlek``,
#:   TDX ``pck``).
NEUTRAL_CLAIMS = ("platform", "measurement", "debug", "simulated", "tcb_status", "signing_key")


def neutral_claims(
    platform: str,
    *,
    measurement: bytes | None,
    debug: bool | None,
    simulated: bool,
    tcb_status: str | None,
    signing_key: str | None,
) -> dict[str, Any]:
    """The :data:`NEUTRAL_CLAIMS` of one appraisal, in that order (a platform's own claims follow)."""
    return {
        "platform": platform,
        "measurement": None if measurement is None else bytes(measurement).hex(),
        "debug": debug,
        "simulated": simulated,
        "tcb_status": tcb_status,
        "signing_key": signing_key,
    }


@dataclass(frozen=True)
class EvidenceInputs:
    """Everything a relying party may hold beside the evidence itself; each platform takes
    what applies to it and ignores the rest."""

    #: Certificates given separately (SEV-SNP: VCEK/VLEK and its chain; GPU: a PEM chain), DER or PEM.
    certificates: Sequence[bytes] = ()
    #: A CRL given beside the evidence, DER or PEM (SEV-SNP: the AMD CRL).
    crl: bytes | None = None
    #: A directory of collateral files given by the caller (TDX: Intel collateral, by the file
    #: names of :mod:`attestation.platforms.tdx.collateral`; SEV-SNP: ``amd-crl.der``).
    collateral_dir: Path | None = None
    #: Collateral carried by an evidence bundle, file name -> bytes, in the names the platform
    #: documents; a name the platform does not know makes the evidence unusable. ``crl`` and
    #: ``collateral_dir`` take precedence.
    collateral_files: Mapping[str, bytes] = field(default_factory=dict)
    #: The nonce the relying party chose (GPU request nonce).
    nonce: bytes | None = None
    extra_warnings: tuple[str, ...] = field(default=())

    @property
    def gives_collateral(self) -> bool:
        """True when the caller gave collateral of its own (a CRL or a collateral directory)."""
        return self.crl is not None or self.collateral_dir is not None


#: The default :class:`EvidenceInputs`: nothing beside the evidence.
NO_INPUTS = EvidenceInputs()


class AppraisalPolicy(Protocol):
    """The policy as a platform sees it (:class:`attestation.policy.Policy` is one): the
    common keys, and the platform's own section by name."""

    @property
    def platforms(self) -> frozenset[str]: ...

    @property
    def allow_debug(self) -> bool: ...

    @property
    def report_data(self) -> bytes | None: ...

    @property
    def require_collateral(self) -> bool: ...

    @property
    def max_collateral_age(self) -> timedelta | None: ...

    @property
    def trusted_simulated_roots(self) -> frozenset[str]: ...

    def section(self, name: str, kind: type[SectionT]) -> SectionT:
        """The platform ``name``'s section, which must be a ``kind`` (its default when the policy has none)."""
        ...


class PolicySection(Protocol):
    """A platform's policy section: a frozen dataclass whose every field is one check;
    ``cls()`` is the section of a policy that does not mention the platform."""

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> Self:
        """The section from its TOML table; :class:`~attestation.errors.PolicyError` naming the key."""
        ...


@dataclass(frozen=True)
class MeasurementPin:
    """Where a platform's policy section pins the launch measurement: ``field`` of the section
    (a set of allowed values; empty pins nothing), ``label`` as messages name it."""

    field: str
    label: str


@runtime_checkable
class Platform(Protocol):
    """One kind of evidence. Built-in platforms live in :mod:`attestation.platforms`; a third
    party's is registered through the ``attestfl.platforms`` entry point group (see
    ``docs/extending.md`` ("Add a platform"))."""

    @property
    def name(self) -> str:
        """The registered name: evidence bundles, policies (``platforms``, the section's
        default key) and appraisals use it; lowercase letters, digits and ``-``."""
        ...

    @property
    def description(self) -> str:
        """What its raw evidence is, for "unrecognised evidence" messages ("a TDX DCAP quote (version 4 or 5)")."""
        ...

    @property
    def roots(self) -> VendorRoots:
        """Its vendor and the roots shipped for it (:func:`attestation.trust.trust_root`)."""
        ...

    @property
    def binds_report_data(self) -> bool:
        """True for CPU evidence that carries 64 bytes of report_data chosen by the attester
        (it can be the CPU evidence of a bundle, and a site's policy must pin its launch
        measurement); False for device evidence bound through a nonce (GPU)."""
        ...

    @property
    def policy_key(self) -> str:
        """The TOML table of its policy section (``[sev-snp]``)."""
        ...

    @property
    def policy_attribute(self) -> str | None:
        """The :class:`~attestation.policy.Policy` attribute that names its section (``policy.snp``), or None."""
        ...

    @property
    def policy_section(self) -> type[PolicySection]:
        """The class of its policy section."""
        ...

    @property
    def measurement_pin(self) -> MeasurementPin | None:
        """Where its policy section pins the launch measurement; None when it has none."""
        ...

    def detect(self, data: bytes) -> bool:
        """True when raw evidence is this platform's, judged from fixed header fields alone."""
        ...

    def report_data(self, evidence: bytes) -> bytes:
        """The caller-chosen bytes the raw evidence carries: CPU evidence its 64-byte
        report_data, device evidence its request nonce;
        :class:`~attestation.errors.EvidenceFormatError` when it does not parse."""
        ...

    def appraise(
        self,
        evidence: bytes,
        *,
        policy: AppraisalPolicy,
        at: datetime,
        inputs: EvidenceInputs,
        collateral: CollateralStore | None,
    ) -> Appraisal:
        """Parse, verify and appraise raw evidence. Unusable input raises an
        :class:`~attestation.errors.AttestationError`; evidence that parses yields an
        :class:`Appraisal` listing every failed check, with the :data:`NEUTRAL_CLAIMS` and
        the platform's own claims. ``collateral``: the verifier's store; when given, the
        platform takes its collateral from there, never from ``inputs``."""
        ...


__all__ = [
    "COMMON_POLICY_KEYS",
    "NEUTRAL_CLAIMS",
    "AppraisalPolicy",
    "EvidenceInputs",
    "MeasurementPin",
    "Platform",
    "PolicySection",
    "neutral_claims",
]

"""Admission: which sites may join, on what evidence and identity, and the single-use
challenges they answer.

Attested is not authorised: evidence says *what* runs (every honest site runs the same code);
only a key the site alone holds says *which* site it is. So every rule pins one: the site's
long-lived Ed25519 identity key (``attestfl site enroll`` prints it), or an organisation CA
that certifies it. At admission the site signs the handshake transcript
(:func:`protocol.formulas.identity_transcript`) with that key.

The admission policy is the ``[admission]`` table of ``aggregator.toml``::

    [admission]
    challenge_ttl = "60s"          # a challenge is refused after this
    credential_ttl = "8h"          # lifetime of a session
    policy = "site-policy.toml"    # attestation policy for site evidence (roots, TCB, debug...);
                                   # require_collateral defaults to true here
    collateral_dir = "collateral"  # the verifier's own collateral (AMD CRLs and VCEKs, Intel TCB
                                   # info, QE identity, CRLs; layout: docs/attestation.md). Sites'
                                   # evidence never brings its own. Absent: none (fail closed).
    collateral_fetch = false       # fetch missing or stale collateral from AMD KDS / Intel PCS
    amd_kds_url = "https://kdsintf.amd.com"                  # (with collateral_fetch) the vendors'
    intel_pcs_url = "https://api.trustedservices.intel.com"  #   services, or a caching proxy of yours

    [admission.sites.hospital-a]   # one table per site id that may join
    platforms = ["tdx"]            # accepted: any registered CPU platform (sev-snp, tdx; real or simulated), app-attest
    identity_keys = ["<hex>"]      # the site's identity key(s) (attestfl site enroll), or:
    organisation_ca = "ca.pem"     # a CA whose certificate for the identity key names the site id (CN)
    measurements = ["<hex>"]       # SNP MEASUREMENT / TDX MRTD the site must run (optional)
    chip_ids = ["<hex>"]           # optional hardware pins: SNP CHIP_ID (64 bytes),
    host_data = ["<hex>"]          #   SNP HOST_DATA (32 bytes),
    mr_config_ids = ["<hex>"]      #   TDX MRCONFIGID (48 bytes)
    ed25519_keys = ["<hex>"]       # pin the site's per-session attested Ed25519 key(s) (rarely useful)
    max_weight = 1200              # the largest example count the site may claim (update weight and
                                   # evaluation examples); default 1: every site weighs the same
    [admission.sites.hospital-a.checks."example.hours"]  # parameters of an installed check
    hours = [8, 9, 10]             #   (its id; its own keys, checked against its schema)

    [admission.sites.wearable-7]
    platforms = ["app-attest"]
    identity_keys = ["<hex>"]
    app_id = "ABCDE12345.org.example.monitor"
    app_attest_root = "apple-app-attestation-root.pem"   # default: Apple's, shipped by pyattest
    production = true

The aggregator refuses to start on a rule that pins neither ``identity_keys`` nor
``organisation_ca``, naming the rule.

What a site's evidence must bind (checked here, with ids ``admission.*``):

* bundle (SEV-SNP/TDX): the bundle's nonce is :func:`admission_nonce` of (site id,
  challenge), and its report_data binds the site's session X25519 and Ed25519 keys to that
  nonce (:mod:`attestation.binding`); the keys in the request are the bundle's;
* App Attest: the attestation's client data hash is :func:`app_attest_client_data` of
  (site id, challenge, both keys), checked by ``pyattest`` against the configured root;
* identity (every platform): ``admission.identity.missing`` (no key or signature),
  ``admission.identity.key`` (not a pinned key), ``admission.identity.certificate`` (not
  certified for this site by the organisation CA), ``admission.identity.signature`` (not a
  signature over this handshake's transcript).

So evidence made for another site id, another challenge or other keys fails, and so does a
TEE that passes every evidence check but lacks the site's identity key. The challenge is
consumed on first use, whatever the verdict: a replayed one is refused before any work.

**Checks are objects in one tuple** (:data:`BUILTIN_CHECKS`, then the installed ones): each
an :class:`AdmissionCheck` with a stable ``id``, a ``stage``, the ``inputs`` it reads and
``check(inputs, parameters) -> list[Reason]``. :func:`appraise` runs them stage by stage
(``request`` -> ``identity`` -> ``evidence``, each a gate for the next; see its docstring).
Installed distributions add checks through the entry-point group ``attestfl.admission_checks``
(``<check id> = "module:object"``); a site rule carries a check's parameters in its
``checks."<check id>"`` table, typed by the check's ``Parameters`` Struct. The site rule itself
is a :mod:`msgspec` Struct (:class:`SiteRule`): :func:`encode_plain` / :func:`decode_plain`
are the one codec of the rule as plain data (the audit log's ``config`` entry,
:mod:`protocol.auditlog.records`), so a new rule field or a check's parameters round-trip
through the log with no second codec to keep in step. ``docs/extending.md`` walks through
adding a check.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import hmac
import math
import re
import tomllib
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from attestation.binding import BoundKeys
from attestation.bundle import appraise_bundle
from attestation.bundle_abi import cpu_platforms, parse_bundle
from attestation.collateral import CollateralFetcher, CollateralStore, FetchConfig, LoggedCollateralStore
from attestation.errors import AttestationError, PolicyError
from attestation.files import read_bounded
from attestation.findings import Reason
from attestation.policy import MAX_POLICY_BYTES, Policy
from attestation.validate.fields import read_duration, read_hex_set, read_str_set, read_table, reject_unknown_keys
from protocol.config import ConfigError, read_struct
from protocol.formulas import (
    MAX_IDENTITY_CERTIFICATE_BYTES,
    MAX_SITE_ID,
    admission_nonce,
    app_attest_client_data,
    identity_transcript,
    valid_site_id,
)


def site_platforms() -> tuple[str, ...]:
    """What a rule's ``platforms`` may name: every registered CPU platform, and app-attest."""
    return (*cpu_platforms(), "app-attest")


MAX_CA_BYTES = 64 * 1024
#: No site weighs more than this, whatever its rule says.
MAX_WEIGHT_LIMIT = 1e12
RULE_KEYS = (
    "platforms",
    "identity_keys",
    "organisation_ca",
    "measurements",
    "chip_ids",
    "host_data",
    "mr_config_ids",
    "ed25519_keys",
    "max_weight",
    "app_id",
    "app_attest_root",
    "production",
    "checks",
)
#: The keys of the ``[admission]`` table.
ADMISSION_KEYS = (
    "challenge_ttl",
    "credential_ttl",
    "policy",
    "sites",
    "collateral_dir",
    "collateral_fetch",
    "amd_kds_url",
    "intel_pcs_url",
)
#: The byte length of each hex-set field of a rule.
HEX_LENGTHS = {
    "identity_keys": 32,
    "measurements": 48,
    "chip_ids": 64,
    "host_data": 32,
    "mr_config_ids": 48,
    "ed25519_keys": 32,
}
#: The entry-point group through which installed distributions add admission checks.
CHECK_ENTRY_POINTS = "attestfl.admission_checks"

S = TypeVar("S")


# ---- the site rule: one schema, one codec ---------------------------------------------------------


class Hex(bytes):
    """Bytes written as lowercase hex in plain data (TOML, the audit log)."""


class OrganisationCa:
    """A CA whose certificates bind an identity key to a site id (the subject's common name).
    Plain data: its DER bytes."""

    def __init__(self, der: bytes, certificate: x509.Certificate) -> None:
        self.der = der
        self.certificate = certificate

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> OrganisationCa:
        try:
            certificate = (
                x509.load_pem_x509_certificate(data)
                if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(data)
            )
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise PolicyError(
                f"{where}: the organisation CA certificate has no basicConstraints (CA:true required)"
            ) from None
        except ValueError as exc:
            raise PolicyError(f"{where}: not an X.509 certificate: {exc}") from None
        if not constraints.ca:
            raise PolicyError(f"{where}: the organisation CA certificate is not a CA (basicConstraints CA:false)")
        return cls(certificate.public_bytes(Encoding.DER), certificate)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OrganisationCa) and other.der == self.der

    def __hash__(self) -> int:
        return hash(self.der)

    def __repr__(self) -> str:
        return f"OrganisationCa(sha256:{hashlib.sha256(self.der).hexdigest()[:16]}...)"


if TYPE_CHECKING:
    from enclave.identity import SiteIdentity

    HexSet = frozenset[bytes]  # what callers pass: SiteRule.__post_init__ makes each value a Hex
else:
    HexSet = frozenset[Hex]


class AppAttestRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    app_id: str
    root_pem: bytes | None  # None: Apple's App Attestation root shipped by pyattest
    production: bool


class SiteRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One site's admission rule. Its plain form (:func:`encode_plain`) is what the audit log
    records and :func:`decode_plain` reads back: add a field here and it round-trips."""

    platforms: frozenset[str]
    identity_keys: HexSet = frozenset()
    organisation_ca: OrganisationCa | None = None
    measurements: HexSet = frozenset()
    chip_ids: HexSet = frozenset()
    host_data: HexSet = frozenset()
    mr_config_ids: HexSet = frozenset()
    ed25519_keys: HexSet = frozenset()
    max_weight: float = 1.0
    app_attest: AppAttestRule | None = None
    #: Parameters of installed checks, by check id, as plain data (checked by the policy).
    checks: dict[str, dict[str, Any]] = {}

    def __post_init__(self) -> None:
        # (no platforms, no registry: DECOY_RULE is built at import, before any plug-in is loaded)
        unknown = sorted(set(self.platforms) - set(site_platforms())) if self.platforms else []
        if unknown:
            raise ValueError(
                f"platforms: unknown platform(s) {', '.join(unknown)}; allowed: {', '.join(site_platforms())}"
            )
        for name, length in HEX_LENGTHS.items():
            values = frozenset(Hex(value) for value in getattr(self, name))
            if any(len(value) != length for value in values):
                raise ValueError(f"{name}: every value is {length} bytes")
            msgspec.structs.force_setattr(self, name, values)
        weight = self.max_weight
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or not 0 < weight <= MAX_WEIGHT_LIMIT
        ):
            raise ValueError(f"max_weight: expected a number in (0, {MAX_WEIGHT_LIMIT:g}], got {weight!r}")
        msgspec.structs.force_setattr(self, "max_weight", float(weight))

    @property
    def pins_identity(self) -> bool:
        return bool(self.identity_keys) or self.organisation_ca is not None


def _encode_hook(value: Any) -> Any:
    if isinstance(value, Hex):
        return value.hex()
    if isinstance(value, OrganisationCa):
        return value.der
    raise NotImplementedError(f"{type(value).__name__} has no plain form")


def _decode_hook(kind: type[Any], value: Any) -> Any:
    if kind is Hex and isinstance(value, str) and re.fullmatch(r"(?:[0-9a-f]{2})*", value):
        return Hex(bytes.fromhex(value))
    if kind is OrganisationCa and isinstance(value, bytes):
        try:
            return OrganisationCa.from_bytes(value, "organisation_ca")
        except PolicyError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError(f"expected {'lowercase hex text' if kind is Hex else 'DER bytes'}")


def encode_plain(value: msgspec.Struct) -> Any:
    """A rule (or any Struct of this module's types) as plain data: text, numbers, booleans,
    bytes, null, lists and maps; sets sorted, so the same rule always encodes the same."""
    return msgspec.to_builtins(value, builtin_types=(bytes,), enc_hook=_encode_hook, order="deterministic")


def decode_plain(data: Any, kind: type[S]) -> S:
    """The inverse of :func:`encode_plain`, strictly typed (:class:`msgspec.ValidationError`)."""
    return msgspec.convert(data, kind, strict=True, builtin_types=(bytes,), dec_hook=_decode_hook)


# ---- reading the [admission] table ----------------------------------------------------------------


def _read_file(path: Path, limit: int, where: str) -> bytes:
    try:
        return read_bounded(path, limit, where, PolicyError)
    except PolicyError as exc:
        raise PolicyError(str(exc)) from None


def _read_app_attest(rule: dict[str, Any], where: str, base_dir: Path) -> AppAttestRule:
    if not isinstance(rule.get("app_id"), str):
        raise PolicyError(f"[{where}] app_id: required for app-attest (TEAMID.bundle.id)")
    root = None
    if "app_attest_root" in rule:
        root = _read_file(base_dir / str(rule["app_attest_root"]), MAX_CA_BYTES, f"[{where}] app_attest_root")
    production = rule.get("production", True)
    if not isinstance(production, bool):
        raise PolicyError(f"[{where}] production: expected true or false")
    return AppAttestRule(rule["app_id"], root, production)


def _read_check_tables(rule: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    checks = rule.get("checks", {})
    if not isinstance(checks, dict):
        raise PolicyError(f"[{where}] checks: expected a table of check parameters, one table per check id")
    for check_id, parameters in checks.items():
        if not isinstance(parameters, dict):
            raise PolicyError(f'[{where}.checks] "{check_id}": expected a table (the check\'s parameters)')
    return dict(checks)


def read_site_rule(site_id: str, rule: Any, base_dir: Path) -> SiteRule:
    """One ``[admission.sites.<id>]`` table, every value checked; :class:`PolicyError` names the key.
    (The parameters of installed checks are checked by :class:`AdmissionPolicy`.)"""
    where = f"admission.sites.{site_id}"
    if not valid_site_id(site_id):
        raise PolicyError(f"[{where}]: a site id is 1-{MAX_SITE_ID} letters, digits, '-', '_' or '.'")
    if not isinstance(rule, dict):
        raise PolicyError(f"[{where}]: expected a table")
    reject_unknown_keys(rule, RULE_KEYS, where)
    platforms = read_str_set(rule, "platforms", where, site_platforms())
    if not platforms:
        raise PolicyError(f"[{where}] platforms: name at least one of {', '.join(site_platforms())}")
    app_attest = _read_app_attest(rule, where, base_dir) if "app-attest" in platforms else None
    ca = None
    if "organisation_ca" in rule:
        if not isinstance(rule["organisation_ca"], str):
            raise PolicyError(f"[{where}] organisation_ca: expected a file name")
        ca = OrganisationCa.from_bytes(
            _read_file(base_dir / rule["organisation_ca"], MAX_CA_BYTES, f"[{where}] organisation_ca"),
            f"[{where}] organisation_ca",
        )
    max_weight = rule.get("max_weight", 1)
    if (
        isinstance(max_weight, bool)
        or not isinstance(max_weight, (int, float))
        or not math.isfinite(max_weight)
        or not 0 < max_weight <= MAX_WEIGHT_LIMIT
    ):
        raise PolicyError(f"[{where}] max_weight: expected a number in (0, {MAX_WEIGHT_LIMIT:g}], got {max_weight!r}")
    hexes = {name: read_hex_set(rule, name, where, length) for name, length in HEX_LENGTHS.items()}
    site_rule = SiteRule(
        platforms=platforms,
        organisation_ca=ca,
        max_weight=float(max_weight),
        app_attest=app_attest,
        checks=_read_check_tables(rule, where),
        **hexes,
    )
    if not site_rule.pins_identity:
        raise PolicyError(
            f"[{where}]: the rule pins nothing only site {site_id!r} holds, "
            "so any TEE that passes the policy could join as this site: "
            'add identity_keys = ["<hex>"] (printed by `attestfl site enroll`) or organisation_ca = "ca.pem"'
        )
    return site_rule


def read_collateral_store(table: dict[str, Any], base_dir: Path) -> CollateralStore | None:
    """The ``collateral_*`` keys of ``[admission]``: the verifier's collateral store."""
    fetch = table.get("collateral_fetch", False)
    if not isinstance(fetch, bool):
        raise PolicyError(f"[admission] collateral_fetch: expected true or false, got {fetch!r}")
    urls = {}
    for key in ("amd_kds_url", "intel_pcs_url"):
        if key in table:
            value = table[key]
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise PolicyError(f"[admission] {key}: expected an http(s) URL, got {value!r}")
            urls[key] = value.rstrip("/")
    if "collateral_dir" not in table:
        if fetch or urls:
            raise PolicyError(
                "[admission] collateral_fetch and the vendor URLs need collateral_dir "
                "(where fetched collateral is kept)"
            )
        return None
    directory = table["collateral_dir"]
    if not isinstance(directory, str) or not directory:
        raise PolicyError(f"[admission] collateral_dir: expected a directory name, got {directory!r}")
    fetcher = None
    if fetch:
        config = FetchConfig()
        if "amd_kds_url" in urls:
            config = replace(config, amd_base_url=urls["amd_kds_url"])
        if "intel_pcs_url" in urls:
            config = replace(config, intel_base_url=urls["intel_pcs_url"])
        fetcher = CollateralFetcher(config)
    try:
        return CollateralStore(base_dir / directory, fetcher=fetcher)
    except AttestationError as exc:
        raise PolicyError(
            f"[admission] collateral_dir: {exc} (fill it with the vendors' collateral, `attestfl enclave collateral` "
            "for the simulated TEE, or set collateral_fetch = true)"
        ) from None


#: The store of a verifier that holds no collateral at all: evidence that needs some fails
#: ``require_collateral`` (fail closed) rather than falling back to what the evidence brings.
NO_COLLATERAL = LoggedCollateralStore({})


def load_site_attestation_policy(path: Path) -> tuple[Policy, bytes]:
    """The attestation policy for site evidence, and its bytes. ``require_collateral``
    defaults to true here: revocation and TCB status must be known to admit a site."""
    text = _read_file(path, MAX_POLICY_BYTES, "site attestation policy")
    try:
        data = tomllib.loads(text.decode("utf-8"))
        policy = Policy.from_dict(data)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    if "require_collateral" not in data:
        policy = replace(policy, require_collateral=True)
    return policy, text


# ---- what a check reads ----------------------------------------------------------------------------

Stage = Literal["request", "identity", "evidence"]
STAGES: tuple[Stage, ...] = ("request", "identity", "evidence")
#: What each stage's checks may read (:class:`AdmissionInputs` attributes).
STAGE_INPUTS: dict[Stage, frozenset[str]] = {
    "request": frozenset({"request", "rule", "policy"}),
    "identity": frozenset({"request", "rule", "policy", "transcript"}),
    "evidence": frozenset({"request", "rule", "policy", "transcript", "evidence"}),
}


@dataclass(frozen=True)
class IdentityProof:
    """What a site presents to prove it is the site it names."""

    public: bytes = b""
    signature: bytes = b""
    certificate: bytes = b""  # DER, under the rule's organisation CA
    aggregator_evidence_sha256: bytes = b""  # the aggregator's evidence bundle the site verified

    @classmethod
    def signed(
        cls,
        identity: SiteIdentity,
        *,
        site_id: str,
        challenge: bytes,
        evidence: bytes,
        site_keys: BoundKeys,
        aggregator_keys: BoundKeys,
        aggregator_evidence_sha256: bytes,
        certificate: bytes = b"",
    ) -> IdentityProof:
        """The site's proof: ``identity``'s signature over this handshake's transcript
        (:func:`protocol.formulas.identity_transcript`), as a site presents it in ``Admit``."""
        transcript = identity_transcript(
            site_id=site_id,
            challenge=challenge,
            evidence_sha256=hashlib.sha256(evidence).digest(),
            site_x25519=site_keys.x25519,
            site_ed25519=site_keys.ed25519,
            aggregator_x25519=aggregator_keys.x25519,
            aggregator_ed25519=aggregator_keys.ed25519,
            aggregator_evidence_sha256=aggregator_evidence_sha256,
        )
        return cls(identity.public, identity.sign(transcript), certificate, aggregator_evidence_sha256)


@dataclass(frozen=True)
class AdmissionRequest:
    """One admission attempt: what the peer sent, the aggregator's keys it answers, the time,
    and the challenge store's verdict on the challenge (None: fresh and issued to this site id)."""

    site_id: str
    challenge: bytes
    x25519: bytes
    ed25519: bytes
    evidence_format: str
    evidence: bytes
    identity: IdentityProof
    aggregator: BoundKeys
    at: datetime
    app_attest_key_id: bytes = b""
    challenge_reason: Reason | None = None


@dataclass(frozen=True)
class Evidence:
    """What appraising the evidence found. ``usable``: it parsed and was appraised, so the
    rule's pins apply to its claims."""

    format: str
    platform: str | None
    reasons: tuple[Reason, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict)
    usable: bool = False
    keys: BoundKeys | None = None  # the session keys a bundle binds
    warnings: tuple[str, ...] = ()
    collateral: dict[str, bytes] = field(default_factory=dict)  # the verifier's files used: path -> SHA-256


class AdmissionInputs:
    """What a check reads: the ``request``, the site's ``rule`` (None only in the request stage,
    for a site id not in the policy), the ``policy``, the handshake ``transcript`` the identity
    key signs (identity stage on) and the appraised ``evidence`` (evidence stage only: it is
    parsed on first use, never before the peer proved the site's identity)."""

    def __init__(self, policy: AdmissionPolicy, request: AdmissionRequest, rule: SiteRule | None) -> None:
        self.policy = policy
        self.request = request
        self.rule = rule
        self.stage: Stage = "request"

    def _require(self, name: str) -> None:
        if name not in STAGE_INPUTS[self.stage]:
            raise RuntimeError(f"a {self.stage}-stage check read {name!r}, which only later stages may read")

    @cached_property
    def _transcript(self) -> bytes:
        request = self.request
        return identity_transcript(
            site_id=request.site_id,
            challenge=request.challenge,
            evidence_sha256=hashlib.sha256(request.evidence).digest(),
            site_x25519=request.x25519,
            site_ed25519=request.ed25519,
            aggregator_x25519=request.aggregator.x25519,
            aggregator_ed25519=request.aggregator.ed25519,
            aggregator_evidence_sha256=request.identity.aggregator_evidence_sha256,
        )

    @property
    def transcript(self) -> bytes:
        self._require("transcript")
        return self._transcript

    @cached_property
    def _evidence(self) -> Evidence:
        assert self.rule is not None
        return _appraise_evidence(self.policy, self.rule, self.request)

    @property
    def evidence(self) -> Evidence:
        self._require("evidence")
        return self._evidence

    @property
    def known_rule(self) -> SiteRule:
        """The rule (identity and evidence stages, where there always is one)."""
        assert self.rule is not None, "no rule: the site id is not in the policy"
        return self.rule


class AdmissionCheck(abc.ABC):
    """One admission check: a stable ``id`` (dotted, e.g. ``example.hours``; ``admission.*`` is
    the built-in checks'), its ``stage`` (``request``: before the peer proved anything, for
    every peer, ``rule`` may be None; ``evidence``: after the identity proof), the ``inputs``
    it reads (names of :class:`AdmissionInputs` attributes its stage offers), and
    ``Parameters``: None, or the msgspec Struct of its ``checks."<id>"`` table in a site rule.

    :meth:`check` returns every failed condition as a :class:`Reason` (use the check's id as
    the reason's id, or a dotted name below it); an empty list passes. ``parameters`` is the
    site's parsed table, or None where the rule has none."""

    id: ClassVar[str] = ""
    stage: ClassVar[Stage] = "evidence"
    inputs: ClassVar[tuple[str, ...]] = ()
    Parameters: ClassVar[type[msgspec.Struct] | None] = None
    #: False: the reasons are logged but never sent to the peer (the roster stays hidden).
    told: ClassVar[bool] = True

    @abc.abstractmethod
    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        """Every reason this check refuses the site for (none: it passes)."""

    def __repr__(self) -> str:
        return f"<admission check {self.id} ({self.stage})>"


# ---- the policy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdmissionPolicy:
    sites: Mapping[str, SiteRule]
    attestation: Policy = field(default_factory=lambda: Policy(require_collateral=True))
    challenge_ttl: timedelta = timedelta(seconds=60)
    credential_ttl: timedelta = timedelta(hours=8)
    #: SHA-256 of the attestation policy's file (or "default"): the EAR appraisal-policy-id.
    policy_id: str = "default"
    #: The attestation policy file's bytes (None: the default policy), logged in full in the audit log.
    policy_text: bytes | None = field(default=None, repr=False)
    #: The verifier's collateral (None: none at all; the evidence's own is never used).
    collateral: CollateralStore | None = field(default=None, repr=False, compare=False)
    #: The checks, in the order they run within each stage: the built-in ones, then installed ones.
    checks: tuple[AdmissionCheck, ...] = field(default_factory=lambda: BUILTIN_CHECKS)
    _parameters: dict[tuple[str, str], msgspec.Struct] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        """Each site rule's check parameters are checked against the check's schema (and kept
        in their plain form, so the audit log records exactly what was parsed)."""
        by_id = {check.id: check for check in self.checks}
        sites = {}
        for site_id, rule in self.sites.items():
            plain = {}
            for check_id, table in rule.checks.items():
                where = f'admission.sites.{site_id}.checks."{check_id}"'
                check = by_id.get(check_id)
                if check is None or check.Parameters is None:
                    takes = sorted(c.id for c in self.checks if c.Parameters is not None)
                    raise PolicyError(
                        f"[{where}]: no admission check in force takes parameters under this id; "
                        "those that do: "
                        f"{', '.join(takes) or 'none (install one: entry points ' + CHECK_ENTRY_POINTS + ')'}"
                    )
                try:
                    parsed = read_struct(table, check.Parameters, where)
                except ConfigError as exc:
                    raise PolicyError(str(exc)) from None
                self._parameters[(site_id, check_id)] = parsed
                plain[check_id] = encode_plain(parsed)
            sites[site_id] = rule if plain == rule.checks else msgspec.structs.replace(rule, checks=plain)
        object.__setattr__(self, "sites", sites)

    def parameters(self, site_id: str, check: AdmissionCheck) -> msgspec.Struct | None:
        """The site rule's parsed parameters for ``check`` (None: the rule has none)."""
        return self._parameters.get((site_id, check.id))

    @property
    def extension_checks(self) -> tuple[AdmissionCheck, ...]:
        """The checks in force that are not built in (installed ones)."""
        return tuple(check for check in self.checks if check not in BUILTIN_CHECKS)

    @classmethod
    def from_table(cls, table: dict[str, Any], base_dir: Path) -> AdmissionPolicy:
        reject_unknown_keys(table, ADMISSION_KEYS, "admission")
        policy = Policy(require_collateral=True)
        policy_id = "default"
        policy_text = None
        if "policy" in table:
            try:
                policy, policy_text = load_site_attestation_policy(base_dir / str(table["policy"]))
            except PolicyError as exc:
                raise PolicyError(f"[admission] policy: {exc}") from None
            policy_id = "sha256:" + hashlib.sha256(policy_text).hexdigest()
        sites = {
            site_id: read_site_rule(site_id, rule, base_dir)
            for site_id, rule in read_table(table, "sites", "admission").items()
        }
        challenge_ttl = read_duration(table, "challenge_ttl", "admission")
        credential_ttl = read_duration(table, "credential_ttl", "admission")
        for name, value in (("challenge_ttl", challenge_ttl), ("credential_ttl", credential_ttl)):
            if value is not None and value.total_seconds() <= 0:
                raise PolicyError(f"[admission] {name}: must be longer than zero")
        return cls(
            sites=sites,
            attestation=policy,
            challenge_ttl=challenge_ttl or timedelta(seconds=60),
            credential_ttl=credential_ttl or timedelta(hours=8),
            policy_id=policy_id,
            policy_text=policy_text,
            collateral=read_collateral_store(table, base_dir),
            checks=admission_checks(),
        )

    @classmethod
    def load(cls, path: str | Path) -> AdmissionPolicy:
        path = Path(path)
        try:
            data = tomllib.loads(_read_file(path, MAX_POLICY_BYTES, "admission policy").decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise PolicyError(f"{path}: {exc}") from exc
        return cls.from_table(read_table(data, "admission", str(path)), path.parent)


# ---- evidence appraisal ------------------------------------------------------------------------------


def _claim_bytes(claims: dict[str, Any], name: str) -> bytes | None:
    value = claims.get(name)
    try:
        return bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _measurement_of(platform: str, claims: dict[str, Any]) -> bytes | None:
    return _claim_bytes(claims, "measurement")  # the neutral claim: SNP MEASUREMENT, TDX MRTD, ...


def _hardware_reasons(rule: SiteRule, site_id: str, platform: str, claims: dict[str, Any]) -> list[Reason]:
    """[admission.hardware]: the rule's optional chip and launch-configuration pins."""
    pins = (
        (rule.chip_ids, "chip_id", "CHIP_ID"),
        (rule.host_data, "host_data", "HOST_DATA"),
        (rule.mr_config_ids, "mr_config_id", "MRCONFIGID"),
    )
    reasons = []
    for allowed, claim, label in pins:
        if not allowed:
            continue
        value = _claim_bytes(claims, claim)  # a platform whose evidence has no such field reports no such claim
        if value not in allowed:
            shown = value.hex() if value else f"none ({platform} evidence has no {label})"
            reasons.append(
                Reason("admission.hardware", f"site {site_id!r} presented {label} {shown}, not one its rule pins")
            )
    return reasons


def _appraise_evidence(policy: AdmissionPolicy, rule: SiteRule, request: AdmissionRequest) -> Evidence:
    if request.evidence_format == "bundle":
        return _appraise_bundle(policy, request)
    if request.evidence_format == "app-attest":
        if "app-attest" not in rule.platforms:
            return Evidence("app-attest", "app-attest")  # refused by the platform check, never parsed
        return _appraise_app_attest(rule, request)
    return Evidence(
        request.evidence_format,
        None,
        (Reason("admission.evidence", f"unknown evidence format {request.evidence_format[:32]!r}"),),
    )


def _appraise_bundle(policy: AdmissionPolicy, request: AdmissionRequest) -> Evidence:
    try:
        bundle = parse_bundle(request.evidence)
    except AttestationError as exc:
        return Evidence("bundle", None, (Reason("admission.evidence", f"the evidence bundle is unusable: {exc}"),))
    store = policy.collateral if policy.collateral is not None else NO_COLLATERAL
    try:
        # The verifier's collateral, never the bundle's: a site cannot strip its CRL (or bring
        # an old one) to turn "revoked" into "admitted".
        with store.recording() as recorded:
            appraisal = appraise_bundle(
                bundle,
                expected_nonce=admission_nonce(request.site_id, request.challenge),
                policy=policy.attestation,
                at=request.at,
                collateral=store,
            )
    except AttestationError as exc:
        return Evidence("bundle", bundle.platform, (Reason("admission.evidence", f"the evidence is unusable: {exc}"),))
    return Evidence(
        "bundle",
        bundle.platform,
        tuple(appraisal.reasons),
        appraisal.claims,
        True,
        bundle.keys,
        tuple(appraisal.warnings),
        dict(recorded),
    )


def _appraise_app_attest(rule: SiteRule, request: AdmissionRequest) -> Evidence:
    site_id = request.site_id
    if rule.app_attest is None:
        return Evidence(
            "app-attest",
            "app-attest",
            (Reason("admission.platform", f"site {site_id!r} may not join with App Attest"),),
        )
    from pyattest.attestation import Attestation
    from pyattest.configs.apple import AppleConfig
    from pyattest.exceptions import PyAttestException

    config = AppleConfig(
        key_id=request.app_attest_key_id,
        app_id=rule.app_attest.app_id,
        production=rule.app_attest.production,
        root_ca=rule.app_attest.root_pem,
    )
    nonce = app_attest_client_data(site_id, request.challenge, request.x25519, request.ed25519)
    try:
        with warnings.catch_warnings():
            # pyhanko-certvalidator warns that pyattest passes only extra trust roots; attestfl
            # pins the configured root itself below, so the operating system's list never decides.
            warnings.filterwarnings(
                "ignore", message="Relying on the operating system's trust list", category=DeprecationWarning
            )
            attestation = Attestation(request.evidence, nonce, config)
            asyncio.run(attestation.verify())
    except PyAttestException as exc:
        reason = Reason(
            "admission.app_attest", f"App Attest verification failed: {type(exc).__name__} {exc}".strip()[:300]
        )
        return Evidence("app-attest", "app-attest", (reason,))
    except Exception as exc:  # noqa: BLE001 - malformed CBOR or certificates inside pyattest: a refusal
        return Evidence(
            "app-attest",
            "app-attest",
            (Reason("admission.app_attest", f"App Attest evidence is unusable: {type(exc).__name__}: {exc}"[:300]),),
        )
    claims = {
        "app_id": rule.app_attest.app_id,
        "key_id": request.app_attest_key_id.hex(),
        "production": rule.app_attest.production,
    }
    return Evidence("app-attest", "app-attest", tuple(_app_attest_root_reasons(request.evidence, config)), claims, True)


def _app_attest_root_reasons(evidence: bytes, config: Any) -> list[Reason]:
    """The x5c chain must end at the configured root (exact), not any OS-trusted CA."""
    import cbor2

    from attestation.abi.x509 import parse_certificate
    from attestation.verify.chain import certificate_signed_by

    try:
        chain = cbor2.loads(evidence)["attStmt"]["x5c"]
        certs = [parse_certificate(bytes(c)) for c in chain]
        root = parse_certificate(config.root_ca.dump())
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a refusal
        return [Reason("admission.app_attest", f"App Attest certificate chain is unusable: {exc}"[:300])]
    top = certs[-1]
    if top.der != root.der and not certificate_signed_by(top, root):
        return [Reason("admission.app_attest", "the App Attest chain does not end at the configured root")]
    return []


# ---- the identity proof ------------------------------------------------------------------------------


def _certificate_reasons(rule: SiteRule, site_id: str, identity: IdentityProof, at: datetime) -> list[Reason]:
    """[admission.identity.certificate]: the organisation CA certifies this identity key for this site id."""
    assert rule.organisation_ca is not None
    ca = rule.organisation_ca.certificate

    def refuse(why: str) -> list[Reason]:
        return [Reason("admission.identity.certificate", f"site {site_id!r}: {why}")]

    if not identity.certificate:
        return refuse("no identity certificate was presented, and the rule names an organisation CA")
    if len(identity.certificate) > MAX_IDENTITY_CERTIFICATE_BYTES:
        return refuse(f"the identity certificate is over {MAX_IDENTITY_CERTIFICATE_BYTES} bytes")
    try:
        leaf = x509.load_der_x509_certificate(identity.certificate)
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        return refuse(f"the identity certificate is not issued by the organisation CA ({type(exc).__name__})")
    if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
        return refuse(
            f"the identity certificate is not valid at {at.isoformat()} "
            f"({leaf.not_valid_before_utc.isoformat()} to {leaf.not_valid_after_utc.isoformat()})"
        )
    names = [a.value for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if names != [site_id]:
        return refuse(f"the identity certificate names {names!r}, not this site id")
    key = leaf.public_key()
    if not isinstance(key, Ed25519PublicKey) or not hmac.compare_digest(
        key.public_bytes(Encoding.Raw, PublicFormat.Raw), identity.public
    ):
        return refuse("the identity certificate certifies another key")
    return []


def _identity_reasons(
    rule: SiteRule, site_id: str, identity: IdentityProof, transcript: bytes, at: datetime
) -> list[Reason]:
    """Every identity check: the key is the site's, and it signed this handshake."""
    if len(identity.public) != 32 or len(identity.signature) != 64:
        return [
            Reason(
                "admission.identity.missing",
                f"site {site_id!r} did not prove its identity: no identity key and "
                "signature over the handshake (enrol the site with `attestfl site enroll`)",
            )
        ]
    reasons = []
    pinned = any(hmac.compare_digest(identity.public, key) for key in rule.identity_keys)
    if rule.identity_keys and not pinned and rule.organisation_ca is None:
        reasons.append(
            Reason(
                "admission.identity.key",
                f"site {site_id!r} presented identity key {identity.public.hex()}, not one its admission rule pins",
            )
        )
    if rule.organisation_ca is not None and not pinned:
        reasons.extend(_certificate_reasons(rule, site_id, identity, at))
    try:
        Ed25519PublicKey.from_public_bytes(identity.public).verify(identity.signature, transcript)
    except (InvalidSignature, ValueError):
        reasons.append(
            Reason(
                "admission.identity.signature",
                f"site {site_id!r}: the identity signature is not over this "
                "handshake's transcript (another challenge, evidence, keys or aggregator)",
            )
        )
    return reasons


def usable_x25519(public: bytes) -> bool:
    """False for keys an X25519 exchange refuses (low-order points: the shared secret would be zero)."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(bytes(public)))
    except ValueError:
        return False
    return True


# ---- the built-in checks, in the order they run -------------------------------------------------------


class ChallengeCheck(AdmissionCheck):
    """[admission.challenge] the challenge store's verdict: issued by this aggregator to this
    site id, fresh, and not used before (an HMAC, checked before anything else)."""

    id = "admission.challenge"
    stage = "request"
    inputs = ("request",)

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        reason = inputs.request.challenge_reason
        return [reason] if reason is not None else []


class SessionKeySizeCheck(AdmissionCheck):
    """[admission.keys] the session keys are 32 bytes each and the X25519 key is not a low-order point."""

    id = "admission.session_keys"
    stage = "request"
    inputs = ("request",)

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        request = inputs.request
        if len(request.x25519) != 32 or len(request.ed25519) != 32:
            return [Reason("admission.keys", "the site's public keys must be 32 bytes each")]
        if not usable_x25519(request.x25519):
            return [
                Reason(
                    "admission.keys",
                    "the site's X25519 key is a low-order point: no shared secret can be agreed with it",
                )
            ]
        return []


class SiteIdCheck(AdmissionCheck):
    """[admission.site_id] the site id has a rule. Logged, never told: the peer is answered as
    a known site with another identity key would be (no roster enumeration)."""

    id = "admission.site_id"
    stage = "request"
    inputs = ("request", "rule")
    told = False

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        if inputs.rule is not None:
            return []
        return [
            Reason(
                "admission.site_id", f"site id {inputs.request.site_id[:MAX_SITE_ID]!r} is not in the admission policy"
            )
        ]


class IdentityCheck(AdmissionCheck):
    """[admission.identity.*] the identity key is the site's (pinned, or certified by the
    organisation CA for this site id) and signed this handshake's transcript."""

    id = "admission.identity"
    stage = "identity"
    inputs = ("request", "rule", "transcript")

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        request = inputs.request
        return _identity_reasons(inputs.known_rule, request.site_id, request.identity, inputs.transcript, request.at)


class EvidenceCheck(AdmissionCheck):
    """[admission.evidence, admission.app_attest, the platform's own ids] the evidence parses and
    passes the attestation policy, bound to (site id, challenge, session keys)."""

    id = "admission.evidence"
    inputs = ("evidence",)

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        return list(inputs.evidence.reasons)


class PlatformCheck(AdmissionCheck):
    """[admission.platform] the evidence's platform is one the rule allows."""

    id = "admission.platform"
    inputs = ("request", "rule", "evidence")

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        evidence, rule, site_id = inputs.evidence, inputs.known_rule, inputs.request.site_id
        if evidence.format == "app-attest" and "app-attest" not in rule.platforms:
            return [Reason("admission.platform", f"site {site_id!r} may not join with App Attest")]
        if evidence.format == "bundle" and evidence.usable and evidence.platform not in rule.platforms:
            return [
                Reason(
                    "admission.platform",
                    f"site {site_id!r} may join on {', '.join(sorted(rule.platforms))}, not {evidence.platform}",
                )
            ]
        return []


class KeysBoundCheck(AdmissionCheck):
    """[admission.keys] the session keys presented are the ones the evidence binds."""

    id = "admission.keys_bound"
    inputs = ("request", "evidence")

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        evidence, request = inputs.evidence, inputs.request
        if evidence.format != "bundle" or not evidence.usable or evidence.keys is None:
            return []
        if hmac.compare_digest(evidence.keys.x25519, request.x25519) and hmac.compare_digest(
            evidence.keys.ed25519, request.ed25519
        ):
            return []
        return [Reason("admission.keys", "the keys presented are not the keys the evidence binds (substituted keys)")]


class MeasurementCheck(AdmissionCheck):
    """[admission.measurement] the code measured is one the rule lists (when it lists any)."""

    id = "admission.measurement"
    inputs = ("request", "rule", "evidence")

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        evidence, rule = inputs.evidence, inputs.known_rule
        if evidence.format != "bundle" or not evidence.usable or not rule.measurements or evidence.platform is None:
            return []
        measured = _measurement_of(evidence.platform, evidence.claims)
        if measured in rule.measurements:
            return []
        return [
            Reason(
                "admission.measurement",
                f"site {inputs.request.site_id!r} runs measurement "
                f"{measured.hex() if measured else 'unknown'}, not one the admission policy lists",
            )
        ]


class HardwareCheck(AdmissionCheck):
    """[admission.hardware] the rule's optional chip and launch-configuration pins."""

    id = "admission.hardware"
    inputs = ("request", "rule", "evidence")

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        evidence = inputs.evidence
        if evidence.format != "bundle" or not evidence.usable or evidence.platform is None:
            return []
        return _hardware_reasons(inputs.known_rule, inputs.request.site_id, evidence.platform, evidence.claims)


class PinnedSessionKeyCheck(AdmissionCheck):
    """[admission.keys] the per-session Ed25519 key is one the rule pins (when it pins any)."""

    id = "admission.pinned_session_keys"
    inputs = ("request", "rule")

    def check(self, inputs: AdmissionInputs, parameters: Any) -> list[Reason]:
        rule, request = inputs.known_rule, inputs.request
        if not rule.ed25519_keys or request.ed25519 in rule.ed25519_keys:
            return []
        return [
            Reason(
                "admission.keys",
                f"site {request.site_id!r} presented Ed25519 key {request.ed25519.hex()}, not a pinned one",
            )
        ]


BUILTIN_CHECKS: tuple[AdmissionCheck, ...] = (
    ChallengeCheck(),
    SessionKeySizeCheck(),
    SiteIdCheck(),
    IdentityCheck(),
    EvidenceCheck(),
    PlatformCheck(),
    KeysBoundCheck(),
    MeasurementCheck(),
    HardwareCheck(),
    PinnedSessionKeyCheck(),
)
#: The rule the identity stage runs against for a site id not in the policy, so the peer is
#: answered as a known site with another identity key would be.
DECOY_RULE = SiteRule(frozenset(), identity_keys=frozenset({bytes(32)}))


# ---- installed checks ----------------------------------------------------------------------------------

_CHECK_ID = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")


def validate_check(value: Any, where: str) -> AdmissionCheck:
    """``value`` (a check object, or a check class made with no arguments) if it is a usable
    third-party check; :class:`PolicyError` naming ``where`` and what is wrong otherwise."""
    check = value() if isinstance(value, type) and issubclass(value, AdmissionCheck) else value
    if not isinstance(check, AdmissionCheck):
        raise PolicyError(f"{where}: {value!r} is not an AdmissionCheck (protocol.admission)")
    if not isinstance(check.id, str) or not _CHECK_ID.match(check.id) or len(check.id) > 128:
        raise PolicyError(f"{where}: check id {check.id!r} is not dotted lowercase (like 'example.hours')")
    if check.id.startswith("admission."):
        raise PolicyError(f"{where}: check id {check.id!r}: the 'admission.' ids are the built-in checks'")
    if check.stage not in ("request", "evidence"):
        raise PolicyError(
            f"{where}: check {check.id}: stage {check.stage!r} is not 'request' or 'evidence' "
            "(the identity stage is the built-in identity proof)"
        )
    extra = sorted(set(check.inputs) - STAGE_INPUTS[check.stage])
    if extra:
        raise PolicyError(f"{where}: check {check.id}: a {check.stage}-stage check cannot read {', '.join(extra)}")
    if check.Parameters is not None and not (
        isinstance(check.Parameters, type) and issubclass(check.Parameters, msgspec.Struct)
    ):
        raise PolicyError(f"{where}: check {check.id}: Parameters is not a msgspec Struct (or None)")
    return check


def _load_entry_point(entry: metadata.EntryPoint) -> AdmissionCheck:
    where = f"entry point {entry.name} = {entry.value} (group {CHECK_ENTRY_POINTS})"
    try:
        loaded = entry.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin is a configuration error, not a traceback
        raise PolicyError(f"{where} cannot be loaded: {type(exc).__name__}: {exc}") from None
    check = validate_check(loaded, where)
    if check.id != entry.name:
        raise PolicyError(f"{where}: the check's id is {check.id!r}, not the entry point's name")
    return check


def admission_checks(extension_ids: Iterable[str] | None = None) -> tuple[AdmissionCheck, ...]:
    """The built-in checks, then the installed ones (entry points ``attestfl.admission_checks``,
    each named by its check id): all of them sorted by id, or (``extension_ids``) exactly those,
    in that order, as a logged policy names them. :class:`PolicyError` for one that is missing or
    unusable."""
    entries: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=CHECK_ENTRY_POINTS):
        entries.setdefault(entry.name, entry)
    wanted = sorted(entries) if extension_ids is None else list(extension_ids)
    checks = list(BUILTIN_CHECKS)
    for check_id in wanted:
        if check_id in (c.id for c in checks):
            raise PolicyError(f"admission check {check_id!r} is named twice")
        if check_id not in entries:
            raise PolicyError(
                f"admission check {check_id!r} is not installed here (no entry point of that name in group "
                f"{CHECK_ENTRY_POINTS}): install the distribution that provides it"
            )
        checks.append(_load_entry_point(entries[check_id]))
    return tuple(checks)


# ---- appraisal -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteAppraisal:
    site_id: str
    admitted: bool
    reasons: tuple[Reason, ...]
    claims: dict[str, Any]
    status: str  # EAR status: affirming, warning, contraindicated
    platform: str | None
    warnings: tuple[str, ...] = ()
    identity: bytes | None = None  # the identity key that was proven (admitted sites only)
    max_weight: float = 1.0
    #: The peer proved it holds the site's identity key (its evidence was then appraised).
    identity_proven: bool = False
    #: What the peer is told, when it differs from ``reasons`` (an unknown site id is answered
    #: like a known one: no roster enumeration).
    told: tuple[str, ...] | None = None
    #: The verifier's collateral files the appraisal used: {relative path: SHA-256}.
    collateral: dict[str, bytes] = field(default_factory=dict)

    @property
    def reply(self) -> tuple[str, ...]:
        return self.told if self.told is not None else tuple(str(r) for r in self.reasons)


def _run_stage(inputs: AdmissionInputs, stage: Stage) -> tuple[list[Reason], list[Reason]]:
    """Every check of ``stage`` in the policy's order: (all reasons, those the peer may be told).
    An installed check that raises refuses with its own id (fail closed), never a traceback."""
    inputs.stage = stage
    reasons: list[Reason] = []
    told: list[Reason] = []
    for check in inputs.policy.checks:
        if check.stage != stage:
            continue
        parameters = inputs.policy.parameters(inputs.request.site_id, check) if inputs.rule is not None else None
        if check in BUILTIN_CHECKS:
            found = check.check(inputs, parameters)
        else:
            try:
                found = list(check.check(inputs, parameters))
                if not all(isinstance(reason, Reason) for reason in found):
                    raise TypeError("check() returned something other than a list of Reason")
            except Exception as exc:  # noqa: BLE001 - a third party's failure is a refusal with its id
                found = [Reason(check.id, f"the check failed: {type(exc).__name__}: {exc}"[:300])]
        reasons.extend(found)
        if check.told:
            told.extend(found)
    return reasons, told


def appraise(policy: AdmissionPolicy, request: AdmissionRequest) -> SiteAppraisal:
    """Every admission check of ``policy.checks``, stage by stage, each stage a gate for the next:

    1. ``request``: the challenge (an HMAC), the session keys' sizes and X25519 point, the site
       id (then installed request-stage checks);
    2. ``identity``: the identity proof (one Ed25519 verification): until the peer has proven it
       holds the site's identity key, no evidence is parsed and no chain is verified;
    3. ``evidence``: the evidence (parsing, signatures, chains, collateral, policy) and the
       rule's pins (then installed evidence-stage checks).

    A peer that has not proven the identity learns only the reasons of the first stage that
    failed: an unknown site id is answered like a known one with another key (no roster
    enumeration); the logged reasons (``reasons``) say the truth."""
    site_id = request.site_id
    rule = policy.sites.get(site_id)
    inputs = AdmissionInputs(policy, request, rule)
    reasons, told = _run_stage(inputs, "request")
    if rule is None:
        if not told:
            told, _ = _run_stage(AdmissionInputs(policy, request, DECOY_RULE), "identity")
        return SiteAppraisal(
            site_id, False, tuple(reasons), {}, "contraindicated", None, told=tuple(str(r) for r in told)
        )
    if not reasons:
        reasons, _ = _run_stage(inputs, "identity")
    if reasons:
        return SiteAppraisal(site_id, False, tuple(reasons), {}, "contraindicated", None, max_weight=rule.max_weight)
    reasons, _ = _run_stage(inputs, "evidence")
    evidence = inputs.evidence
    admitted = not reasons
    status = "contraindicated" if not admitted else ("warning" if evidence.warnings else "affirming")
    return SiteAppraisal(
        site_id,
        admitted,
        tuple(reasons),
        evidence.claims,
        status,
        evidence.platform,
        evidence.warnings,
        request.identity.public if admitted else None,
        rule.max_weight,
        identity_proven=True,
        collateral=dict(evidence.collateral),
    )


def appraise_site(
    policy: AdmissionPolicy,
    *,
    site_id: str,
    challenge_reason: Reason | None,
    challenge: bytes,
    x25519: bytes,
    ed25519: bytes,
    evidence_format: str,
    evidence: bytes,
    app_attest_key_id: bytes,
    identity: IdentityProof,
    aggregator: BoundKeys,
    at: datetime,
) -> SiteAppraisal:
    """:func:`appraise` of the :class:`AdmissionRequest` these make (kept for callers that
    pass the fields one by one)."""
    return appraise(
        policy,
        AdmissionRequest(
            site_id=site_id,
            challenge=challenge,
            x25519=x25519,
            ed25519=ed25519,
            evidence_format=evidence_format,
            evidence=evidence,
            identity=identity,
            aggregator=aggregator,
            at=at,
            app_attest_key_id=app_attest_key_id,
            challenge_reason=challenge_reason,
        ),
    )


__all__ = [
    "BUILTIN_CHECKS",
    "CHECK_ENTRY_POINTS",
    "AdmissionCheck",
    "AdmissionInputs",
    "AdmissionPolicy",
    "AdmissionRequest",
    "AppAttestRule",
    "Evidence",
    "Hex",
    "IdentityProof",
    "OrganisationCa",
    "SiteAppraisal",
    "SiteRule",
    "admission_checks",
    "admission_nonce",
    "app_attest_client_data",
    "appraise",
    "appraise_site",
    "decode_plain",
    "encode_plain",
    "read_site_rule",
    "usable_x25519",
    "valid_site_id",
    "validate_check",
]

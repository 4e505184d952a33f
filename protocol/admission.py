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
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import tomllib
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from attestation.abi.bundle import cpu_platforms, parse_bundle
from attestation.binding import BoundKeys
from attestation.bundle import appraise_bundle
from attestation.collateral import CollateralFetcher, CollateralStore, FetchConfig, LoggedCollateralStore
from attestation.errors import AttestationError, PolicyError
from attestation.files import read_bounded
from attestation.findings import Reason
from attestation.policy import MAX_POLICY_BYTES, Policy
from attestation.validate.fields import read_duration, read_hex_set, read_str_set, read_table, reject_unknown_keys

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
RULE_KEYS = ("platforms", "identity_keys", "organisation_ca", "measurements", "chip_ids", "host_data", "mr_config_ids",
             "ed25519_keys", "max_weight", "app_id", "app_attest_root", "production")


@dataclass(frozen=True)
class AppAttestRule:
    app_id: str
    root_pem: bytes | None  # None: Apple's App Attestation root shipped by pyattest
    production: bool


@dataclass(frozen=True)
class OrganisationCa:
    """A CA whose certificates bind an identity key to a site id (the subject's common name)."""

    der: bytes
    certificate: x509.Certificate = field(repr=False, compare=False)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "OrganisationCa":
        try:
            certificate = x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----") else x509.load_der_x509_certificate(data)
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise PolicyError(f"{where}: the organisation CA certificate has no basicConstraints (CA:true required)") from None
        except ValueError as exc:
            raise PolicyError(f"{where}: not an X.509 certificate: {exc}") from None
        if not constraints.ca:
            raise PolicyError(f"{where}: the organisation CA certificate is not a CA (basicConstraints CA:false)")
        from cryptography.hazmat.primitives.serialization import Encoding

        return cls(certificate.public_bytes(Encoding.DER), certificate)


@dataclass(frozen=True)
class SiteRule:
    platforms: frozenset[str]
    identity_keys: frozenset[bytes] = frozenset()
    organisation_ca: OrganisationCa | None = None
    measurements: frozenset[bytes] = frozenset()
    chip_ids: frozenset[bytes] = frozenset()
    host_data: frozenset[bytes] = frozenset()
    mr_config_ids: frozenset[bytes] = frozenset()
    ed25519_keys: frozenset[bytes] = frozenset()
    max_weight: float = 1.0
    app_attest: AppAttestRule | None = None

    @property
    def pins_identity(self) -> bool:
        return bool(self.identity_keys) or self.organisation_ca is not None


def _read_file(path: Path, limit: int, where: str) -> bytes:
    try:
        return read_bounded(path, limit, where, PolicyError)
    except PolicyError as exc:
        raise PolicyError(str(exc)) from None


def read_site_rule(site_id: str, rule: Any, base_dir: Path) -> SiteRule:
    """One ``[admission.sites.<id>]`` table, every value checked; :class:`PolicyError` names the key."""
    where = f"admission.sites.{site_id}"
    if not valid_site_id(site_id):
        raise PolicyError(f"[{where}]: a site id is 1-{MAX_SITE_ID} letters, digits, '-', '_' or '.'")
    if not isinstance(rule, dict):
        raise PolicyError(f"[{where}]: expected a table")
    reject_unknown_keys(rule, RULE_KEYS, where)
    platforms = read_str_set(rule, "platforms", where, site_platforms())
    if not platforms:
        raise PolicyError(f"[{where}] platforms: name at least one of {', '.join(site_platforms())}")
    app_attest = None
    if "app-attest" in platforms:
        if not isinstance(rule.get("app_id"), str):
            raise PolicyError(f"[{where}] app_id: required for app-attest (TEAMID.bundle.id)")
        root = None
        if "app_attest_root" in rule:
            root = _read_file(base_dir / str(rule["app_attest_root"]), MAX_CA_BYTES, f"[{where}] app_attest_root")
        production = rule.get("production", True)
        if not isinstance(production, bool):
            raise PolicyError(f"[{where}] production: expected true or false")
        app_attest = AppAttestRule(rule["app_id"], root, production)
    ca = None
    if "organisation_ca" in rule:
        if not isinstance(rule["organisation_ca"], str):
            raise PolicyError(f"[{where}] organisation_ca: expected a file name")
        ca = OrganisationCa.from_bytes(_read_file(base_dir / rule["organisation_ca"], MAX_CA_BYTES, f"[{where}] organisation_ca"),
                                       f"[{where}] organisation_ca")
    max_weight = rule.get("max_weight", 1)
    if isinstance(max_weight, bool) or not isinstance(max_weight, (int, float)) or not math.isfinite(max_weight) \
            or not 0 < max_weight <= MAX_WEIGHT_LIMIT:
        raise PolicyError(f"[{where}] max_weight: expected a number in (0, {MAX_WEIGHT_LIMIT:g}], got {max_weight!r}")
    site_rule = SiteRule(
        platforms=platforms,
        identity_keys=read_hex_set(rule, "identity_keys", where, 32),
        organisation_ca=ca,
        measurements=read_hex_set(rule, "measurements", where, 48),
        chip_ids=read_hex_set(rule, "chip_ids", where, 64),
        host_data=read_hex_set(rule, "host_data", where, 32),
        mr_config_ids=read_hex_set(rule, "mr_config_ids", where, 48),
        ed25519_keys=read_hex_set(rule, "ed25519_keys", where, 32),
        max_weight=float(max_weight),
        app_attest=app_attest,
    )
    if not site_rule.pins_identity:
        raise PolicyError(
            f"[{where}]: the rule pins nothing only site {site_id!r} holds, so any TEE that passes the policy could join "
            "as this site: add identity_keys = [\"<hex>\"] (printed by `attestfl site enroll`) or organisation_ca = \"ca.pem\""
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
            raise PolicyError("[admission] collateral_fetch and the vendor URLs need collateral_dir (where fetched collateral is kept)")
        return None
    directory = table["collateral_dir"]
    if not isinstance(directory, str) or not directory:
        raise PolicyError(f"[admission] collateral_dir: expected a directory name, got {directory!r}")
    fetcher = None
    if fetch:
        config = FetchConfig(**{name: url for name, url in (("amd_base_url", urls.get("amd_kds_url")),
                                                            ("intel_base_url", urls.get("intel_pcs_url"))) if url})
        fetcher = CollateralFetcher(config)
    try:
        return CollateralStore(base_dir / directory, fetcher=fetcher)
    except AttestationError as exc:
        raise PolicyError(f"[admission] collateral_dir: {exc} (fill it with the vendors' collateral, `attestfl enclave collateral` "
                          "for the simulated TEE, or set collateral_fetch = true)") from None


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

    @classmethod
    def from_table(cls, table: dict[str, Any], base_dir: Path) -> "AdmissionPolicy":
        reject_unknown_keys(table, ("challenge_ttl", "credential_ttl", "policy", "sites", "collateral_dir", "collateral_fetch",
                                    "amd_kds_url", "intel_pcs_url"), "admission")
        policy = Policy(require_collateral=True)
        policy_id = "default"
        policy_text = None
        if "policy" in table:
            policy, policy_text = load_site_attestation_policy(base_dir / str(table["policy"]))
            policy_id = "sha256:" + hashlib.sha256(policy_text).hexdigest()
        sites = {site_id: read_site_rule(site_id, rule, base_dir) for site_id, rule in read_table(table, "sites", "admission").items()}
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
        )

    @classmethod
    def load(cls, path: str | Path) -> "AdmissionPolicy":
        path = Path(path)
        try:
            data = tomllib.loads(_read_file(path, MAX_POLICY_BYTES, "admission policy").decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise PolicyError(f"{path}: {exc}") from exc
        return cls.from_table(read_table(data, "admission", str(path)), path.parent)


@dataclass(frozen=True)
class IdentityProof:
    """What a site presents to prove it is the site it names."""

    public: bytes = b""
    signature: bytes = b""
    certificate: bytes = b""  # DER, under the rule's organisation CA
    aggregator_evidence_sha256: bytes = b""  # the aggregator's evidence bundle the site verified


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
    pins = ((rule.chip_ids, "chip_id", "CHIP_ID"), (rule.host_data, "host_data", "HOST_DATA"),
            (rule.mr_config_ids, "mr_config_id", "MRCONFIGID"))
    reasons = []
    for allowed, claim, label in pins:
        if not allowed:
            continue
        value = _claim_bytes(claims, claim)  # a platform whose evidence has no such field reports no such claim
        if value not in allowed:
            shown = value.hex() if value else f"none ({platform} evidence has no {label})"
            reasons.append(Reason("admission.hardware", f"site {site_id!r} presented {label} {shown}, not one its rule pins"))
    return reasons


def _appraise_bundle(rule: SiteRule, policy: AdmissionPolicy, site_id: str, challenge: bytes, x25519: bytes, ed25519: bytes,
                     evidence: bytes, at: datetime, used: dict[str, bytes]) -> tuple[list[Reason], dict[str, Any], str | None, tuple[str, ...]]:
    reasons: list[Reason] = []
    try:
        bundle = parse_bundle(evidence)
    except AttestationError as exc:
        return [Reason("admission.evidence", f"the evidence bundle is unusable: {exc}")], {}, None, ()
    store = policy.collateral if policy.collateral is not None else NO_COLLATERAL
    try:
        # The verifier's collateral, never the bundle's: a site cannot strip its CRL (or bring
        # an old one) to turn "revoked" into "admitted".
        with store.recording() as recorded:
            appraisal = appraise_bundle(bundle, expected_nonce=admission_nonce(site_id, challenge), policy=policy.attestation,
                                        at=at, collateral=store)
        used.update(recorded)
    except AttestationError as exc:
        return [Reason("admission.evidence", f"the evidence is unusable: {exc}")], {}, bundle.platform, ()
    reasons.extend(appraisal.reasons)
    if bundle.platform not in rule.platforms:
        reasons.append(Reason("admission.platform", f"site {site_id!r} may join on {', '.join(sorted(rule.platforms))}, not {bundle.platform}"))
    if not (hmac.compare_digest(bundle.keys.x25519, x25519) and hmac.compare_digest(bundle.keys.ed25519, ed25519)):
        reasons.append(Reason("admission.keys", "the keys presented are not the keys the evidence binds (substituted keys)"))
    if rule.measurements:
        measured = _measurement_of(bundle.platform, appraisal.claims)
        if measured not in rule.measurements:
            reasons.append(Reason("admission.measurement", f"site {site_id!r} runs measurement {measured.hex() if measured else 'unknown'}, not one the admission policy lists"))
    reasons.extend(_hardware_reasons(rule, site_id, bundle.platform, appraisal.claims))
    return reasons, appraisal.claims, bundle.platform, appraisal.warnings


def _appraise_app_attest(rule: SiteRule, site_id: str, challenge: bytes, x25519: bytes, ed25519: bytes,
                         evidence: bytes, key_id: bytes) -> tuple[list[Reason], dict[str, Any]]:
    if rule.app_attest is None:
        return [Reason("admission.platform", f"site {site_id!r} may not join with App Attest")], {}
    from pyattest.attestation import Attestation
    from pyattest.configs.apple import AppleConfig
    from pyattest.exceptions import PyAttestException

    config = AppleConfig(key_id=key_id, app_id=rule.app_attest.app_id, production=rule.app_attest.production,
                         root_ca=rule.app_attest.root_pem)
    nonce = app_attest_client_data(site_id, challenge, x25519, ed25519)
    try:
        with warnings.catch_warnings():
            # pyhanko-certvalidator warns that pyattest passes only extra trust roots; attestfl
            # pins the configured root itself below, so the operating system's list never decides.
            warnings.filterwarnings("ignore", message="Relying on the operating system's trust list", category=DeprecationWarning)
            attestation = Attestation(evidence, nonce, config)
            asyncio.run(attestation.verify())
    except PyAttestException as exc:
        return [Reason("admission.app_attest", f"App Attest verification failed: {type(exc).__name__} {exc}".strip()[:300])], {}
    except Exception as exc:  # noqa: BLE001 - malformed CBOR or certificates inside pyattest: a refusal
        return [Reason("admission.app_attest", f"App Attest evidence is unusable: {type(exc).__name__}: {exc}"[:300])], {}
    reasons = _app_attest_root_reasons(evidence, config)
    return reasons, {"app_id": rule.app_attest.app_id, "key_id": key_id.hex(), "production": rule.app_attest.production}


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
        return refuse(f"the identity certificate is not valid at {at.isoformat()} "
                      f"({leaf.not_valid_before_utc.isoformat()} to {leaf.not_valid_after_utc.isoformat()})")
    names = [a.value for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if names != [site_id]:
        return refuse(f"the identity certificate names {names!r}, not this site id")
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = leaf.public_key()
    if not isinstance(key, Ed25519PublicKey) or not hmac.compare_digest(key.public_bytes(Encoding.Raw, PublicFormat.Raw), identity.public):
        return refuse("the identity certificate certifies another key")
    return []


def _identity_reasons(rule: SiteRule, site_id: str, identity: IdentityProof, transcript: bytes, at: datetime) -> list[Reason]:
    """Every identity check: the key is the site's, and it signed this handshake."""
    if len(identity.public) != 32 or len(identity.signature) != 64:
        return [Reason("admission.identity.missing", f"site {site_id!r} did not prove its identity: no identity key and "
                       "signature over the handshake (enrol the site with `attestfl site enroll`)")]
    reasons = []
    pinned = any(hmac.compare_digest(identity.public, key) for key in rule.identity_keys)
    if rule.identity_keys and not pinned and rule.organisation_ca is None:
        reasons.append(Reason("admission.identity.key", f"site {site_id!r} presented identity key {identity.public.hex()}, "
                              "not one its admission rule pins"))
    if rule.organisation_ca is not None and not pinned:
        reasons.extend(_certificate_reasons(rule, site_id, identity, at))
    try:
        Ed25519PublicKey.from_public_bytes(identity.public).verify(identity.signature, transcript)
    except (InvalidSignature, ValueError):
        reasons.append(Reason("admission.identity.signature", f"site {site_id!r}: the identity signature is not over this "
                              "handshake's transcript (another challenge, evidence, keys or aggregator)"))
    return reasons


def usable_x25519(public: bytes) -> bool:
    """False for keys an X25519 exchange refuses (low-order points: the shared secret would be zero)."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(bytes(public)))
    except ValueError:
        return False
    return True


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
    """Every admission check, cheapest first, each stage a gate for the next:

    1. the challenge (an HMAC), the site id, the key sizes and the X25519 point;
    2. the identity proof (one Ed25519 verification): until the peer has proven it holds the
       site's identity key, no evidence is parsed and no chain is verified;
    3. the evidence (parsing, signatures, chains, collateral, policy) and the rule's pins.

    A peer that has not proven the identity learns only identity reasons: an unknown site id
    is answered like a known one with another key (no roster enumeration); the logged reasons
    (``reasons``) say the truth."""
    reasons: list[Reason] = []
    if challenge_reason is not None:
        reasons.append(challenge_reason)
    rule = policy.sites.get(site_id)
    if len(x25519) != 32 or len(ed25519) != 32:
        reasons.append(Reason("admission.keys", "the site's public keys must be 32 bytes each"))
    elif not usable_x25519(x25519):
        reasons.append(Reason("admission.keys", "the site's X25519 key is a low-order point: no shared secret can be agreed with it"))
    transcript = identity_transcript(
        site_id=site_id, challenge=challenge, evidence_sha256=hashlib.sha256(evidence).digest(), site_x25519=x25519,
        site_ed25519=ed25519, aggregator_x25519=aggregator.x25519, aggregator_ed25519=aggregator.ed25519,
        aggregator_evidence_sha256=identity.aggregator_evidence_sha256,
    )
    if rule is None:
        unknown = Reason("admission.site_id", f"site id {site_id[:MAX_SITE_ID]!r} is not in the admission policy")
        told = reasons + _identity_reasons(SiteRule(frozenset(), identity_keys=frozenset({bytes(32)})), site_id, identity,
                                           transcript, at)
        return SiteAppraisal(site_id, False, tuple(reasons + [unknown]), {}, "contraindicated", None,
                             told=tuple(str(r) for r in told))
    if not reasons:
        reasons.extend(_identity_reasons(rule, site_id, identity, transcript, at))
    if reasons:
        return SiteAppraisal(site_id, False, tuple(reasons), {}, "contraindicated", None, max_weight=rule.max_weight)

    warnings_: tuple[str, ...] = ()
    used: dict[str, bytes] = {}
    if evidence_format == "bundle":
        found, claims, platform, warnings_ = _appraise_bundle(rule, policy, site_id, challenge, x25519, ed25519, evidence, at, used)
    elif evidence_format == "app-attest":
        platform = "app-attest"
        if "app-attest" not in rule.platforms:
            found, claims = [Reason("admission.platform", f"site {site_id!r} may not join with App Attest")], {}
        else:
            found, claims = _appraise_app_attest(rule, site_id, challenge, x25519, ed25519, evidence, app_attest_key_id)
    else:
        found, claims, platform = [Reason("admission.evidence", f"unknown evidence format {evidence_format[:32]!r}")], {}, None
    reasons.extend(found)
    if rule.ed25519_keys and ed25519 not in rule.ed25519_keys:
        reasons.append(Reason("admission.keys", f"site {site_id!r} presented Ed25519 key {ed25519.hex()}, not a pinned one"))
    admitted = not reasons
    status = "contraindicated" if not admitted else ("warning" if warnings_ else "affirming")
    return SiteAppraisal(site_id, admitted, tuple(reasons), claims, status, platform, tuple(warnings_),
                         identity.public if admitted else None, rule.max_weight, identity_proven=True, collateral=used)


__all__ = [
    "AdmissionPolicy", "AppAttestRule", "IdentityProof", "OrganisationCa", "SiteAppraisal", "SiteRule",
    "admission_nonce", "app_attest_client_data", "appraise_site", "read_site_rule", "usable_x25519", "valid_site_id",
]

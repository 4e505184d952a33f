"""Admission: which sites may join, on what evidence, and the single-use challenges they answer.

The admission policy is the ``[admission]`` table of ``aggregator.toml``::

    [admission]
    challenge_ttl = "60s"          # a challenge is refused after this
    credential_ttl = "8h"          # lifetime of the session credential (EAR JWT)
    policy = "site-policy.toml"    # attestation policy for site evidence (roots, TCB, debug...)

    [admission.sites.hospital-a]   # one table per site id that may join
    platforms = ["sev-snp", "tdx"] # accepted: sev-snp, tdx (real or simulated), app-attest
    measurements = ["<hex>"]       # SNP MEASUREMENT / TDX MRTD the site must run (optional)
    ed25519_keys = ["<hex>"]       # pin the site's attested Ed25519 key(s) (optional)

    [admission.sites.wearable-7]
    platforms = ["app-attest"]
    app_id = "ABCDE12345.org.example.monitor"
    app_attest_root = "apple-app-attestation-root.pem"   # default: Apple's, shipped by pyattest
    production = true

What a site's evidence must bind (checked here, with ids ``admission.*``):

* bundle (SEV-SNP/TDX): the bundle's nonce is :func:`admission_nonce` of (site id,
  challenge), and its report_data binds the site's X25519 and Ed25519 keys to that nonce
  (:mod:`attestation.binding`); the keys in the request are the bundle's;
* App Attest: the attestation's client data hash is :func:`app_attest_client_data` of
  (site id, challenge, both keys), checked by ``pyattest`` against the configured root.

So evidence made for another site id, another challenge or other keys fails. The challenge
is consumed on first use, whatever the verdict: a replayed one is refused before any work.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping

from attestation.abi.bundle import parse_bundle
from attestation.bundle import appraise_bundle
from attestation.errors import AttestationError, PolicyError
from attestation.findings import Reason
from attestation.policy import Policy
from attestation.validate.fields import read_duration, read_hex_set, read_str_set, read_table, reject_unknown_keys

ADMISSION_NONCE_LABEL = b"attestfl/v1/site-admission\x00"
APP_ATTEST_LABEL = b"attestfl/v1/app-attest-client-data\x00"
SITE_PLATFORMS = ("sev-snp", "tdx", "app-attest")
MAX_SITE_ID = 128
MAX_OUTSTANDING_CHALLENGES = 4096


class AdmissionError(Exception):
    """The admission configuration is unusable."""


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def admission_nonce(site_id: str, challenge: bytes) -> bytes:
    """The nonce a site's evidence bundle must carry: SHA-256(label, site id, challenge)."""
    return hashlib.sha256(ADMISSION_NONCE_LABEL + _length_prefixed(site_id.encode(), challenge)).digest()


def app_attest_client_data(site_id: str, challenge: bytes, x25519: bytes, ed25519: bytes) -> bytes:
    """The client data (hashed into App Attest's nonce) binding site id, challenge and keys."""
    return hashlib.sha256(APP_ATTEST_LABEL + _length_prefixed(site_id.encode(), challenge, x25519, ed25519)).digest()


def valid_site_id(site_id: str) -> bool:
    return 0 < len(site_id) <= MAX_SITE_ID and all(ch.isalnum() or ch in "-_." for ch in site_id)


@dataclass(frozen=True)
class AppAttestRule:
    app_id: str
    root_pem: bytes | None  # None: Apple's App Attestation root shipped by pyattest
    production: bool


@dataclass(frozen=True)
class SiteRule:
    platforms: frozenset[str]
    measurements: frozenset[bytes] = frozenset()
    ed25519_keys: frozenset[bytes] = frozenset()
    app_attest: AppAttestRule | None = None


@dataclass(frozen=True)
class AdmissionPolicy:
    sites: Mapping[str, SiteRule]
    attestation: Policy = field(default_factory=Policy)
    challenge_ttl: timedelta = timedelta(seconds=60)
    credential_ttl: timedelta = timedelta(hours=8)
    #: SHA-256 of the attestation policy's file (or "default"): the EAR appraisal-policy-id.
    policy_id: str = "default"
    #: The attestation policy file's bytes (None: the default policy), logged in full in the audit log.
    policy_text: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_table(cls, table: dict[str, Any], base_dir: Path) -> "AdmissionPolicy":
        reject_unknown_keys(table, ("challenge_ttl", "credential_ttl", "policy", "sites"), "admission")
        policy = Policy()
        policy_id = "default"
        policy_text = None
        if "policy" in table:
            path = base_dir / str(table["policy"])
            policy = Policy.load(path)
            policy_text = path.read_bytes()
            policy_id = "sha256:" + hashlib.sha256(policy_text).hexdigest()
        sites: dict[str, SiteRule] = {}
        for site_id, rule in read_table(table, "sites", "admission").items():
            where = f"admission.sites.{site_id}"
            if not valid_site_id(site_id):
                raise PolicyError(f"[{where}]: a site id is 1-{MAX_SITE_ID} letters, digits, '-', '_' or '.'")
            if not isinstance(rule, dict):
                raise PolicyError(f"[{where}]: expected a table")
            reject_unknown_keys(rule, ("platforms", "measurements", "ed25519_keys", "app_id", "app_attest_root", "production"), where)
            platforms = read_str_set(rule, "platforms", where, SITE_PLATFORMS)
            if not platforms:
                raise PolicyError(f"[{where}] platforms: name at least one of {', '.join(SITE_PLATFORMS)}")
            app_attest = None
            if "app-attest" in platforms:
                if not isinstance(rule.get("app_id"), str):
                    raise PolicyError(f"[{where}] app_id: required for app-attest (TEAMID.bundle.id)")
                root = None
                if "app_attest_root" in rule:
                    try:
                        root = (base_dir / str(rule["app_attest_root"])).read_bytes()
                    except OSError as exc:
                        raise PolicyError(f"[{where}] app_attest_root: {exc.strerror or exc}") from exc
                production = rule.get("production", True)
                if not isinstance(production, bool):
                    raise PolicyError(f"[{where}] production: expected true or false")
                app_attest = AppAttestRule(rule["app_id"], root, production)
            sites[site_id] = SiteRule(
                platforms=platforms,
                measurements=read_hex_set(rule, "measurements", where, 48),
                ed25519_keys=read_hex_set(rule, "ed25519_keys", where, 32),
                app_attest=app_attest,
            )
        return cls(
            sites=sites,
            attestation=policy,
            challenge_ttl=read_duration(table, "challenge_ttl", "admission") or timedelta(seconds=60),
            credential_ttl=read_duration(table, "credential_ttl", "admission") or timedelta(hours=8),
            policy_id=policy_id,
            policy_text=policy_text,
        )

    @classmethod
    def load(cls, path: str | Path) -> "AdmissionPolicy":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise PolicyError(f"{path}: {exc}") from exc
        return cls.from_table(read_table(data, "admission", str(path)), path.parent)


@dataclass
class _Challenge:
    site_id: str
    expires: float


class ChallengeStore:
    """Single-use, expiring challenges, bounded in number (expired ones are evicted first)."""

    def __init__(self, ttl: timedelta, limit: int = MAX_OUTSTANDING_CHALLENGES) -> None:
        self._ttl = ttl.total_seconds()
        self._limit = limit
        self._challenges: dict[bytes, _Challenge] = {}

    def issue(self, site_id: str) -> tuple[bytes, float]:
        now = time.time()
        if len(self._challenges) >= self._limit:
            self._challenges = {k: v for k, v in self._challenges.items() if v.expires > now}
            while len(self._challenges) >= self._limit:  # still full: drop the oldest
                self._challenges.pop(next(iter(self._challenges)))
        challenge = os.urandom(32)
        expires = now + self._ttl
        self._challenges[challenge] = _Challenge(site_id, expires)
        return challenge, expires

    def consume(self, challenge: bytes, site_id: str) -> Reason | None:
        """Remove the challenge and say why it is unusable, if it is."""
        entry = self._challenges.pop(bytes(challenge), None)
        if entry is None:
            return Reason("admission.challenge", "the challenge is unknown or was already used (replayed)")
        if time.time() > entry.expires:
            return Reason("admission.challenge", "the challenge expired")
        if not hmac.compare_digest(entry.site_id.encode(), site_id.encode()):
            return Reason("admission.challenge", f"the challenge was issued to site {entry.site_id!r}, not {site_id!r}")
        return None


@dataclass(frozen=True)
class SiteAppraisal:
    site_id: str
    admitted: bool
    reasons: tuple[Reason, ...]
    claims: dict[str, Any]
    status: str  # EAR status: affirming, warning, contraindicated
    platform: str | None


def _measurement_of(platform: str, claims: dict[str, Any]) -> bytes | None:
    value = claims.get("measurement" if platform == "sev-snp" else "mr_td")
    return bytes.fromhex(value) if isinstance(value, str) else None


def _appraise_bundle(rule: SiteRule, policy: AdmissionPolicy, site_id: str, challenge: bytes,
                     x25519: bytes, ed25519: bytes, evidence: bytes, at: datetime) -> tuple[list[Reason], dict[str, Any], str | None, tuple[str, ...]]:
    reasons: list[Reason] = []
    try:
        bundle = parse_bundle(evidence)
    except AttestationError as exc:
        return [Reason("admission.evidence", f"the evidence bundle is unusable: {exc}")], {}, None, ()
    appraisal = appraise_bundle(bundle, expected_nonce=admission_nonce(site_id, challenge), policy=policy.attestation, at=at)
    reasons.extend(appraisal.reasons)
    if bundle.platform not in rule.platforms:
        reasons.append(Reason("admission.platform", f"site {site_id!r} may join on {', '.join(sorted(rule.platforms))}, not {bundle.platform}"))
    if not (hmac.compare_digest(bundle.keys.x25519, x25519) and hmac.compare_digest(bundle.keys.ed25519, ed25519)):
        reasons.append(Reason("admission.keys", "the keys presented are not the keys the evidence binds (substituted keys)"))
    if rule.measurements:
        measured = _measurement_of(bundle.platform, appraisal.claims)
        if measured not in rule.measurements:
            reasons.append(Reason("admission.measurement", f"site {site_id!r} runs measurement {measured.hex() if measured else 'unknown'}, not one the admission policy lists"))
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
        return [Reason("admission.app_attest", f"App Attest verification failed: {type(exc).__name__} {exc}".strip())], {}
    except Exception as exc:  # malformed CBOR or certificates inside pyattest
        return [Reason("admission.app_attest", f"App Attest evidence is unusable: {type(exc).__name__}: {exc}")], {}
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
        return [Reason("admission.app_attest", f"App Attest certificate chain is unusable: {exc}")]
    top = certs[-1]
    if top.der != root.der and not certificate_signed_by(top, root):
        return [Reason("admission.app_attest", "the App Attest chain does not end at the configured root")]
    return []


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
    at: datetime,
) -> SiteAppraisal:
    """Every admission check; cheap refusals (challenge, unknown site) come before any parsing."""
    reasons: list[Reason] = []
    if challenge_reason is not None:
        reasons.append(challenge_reason)
    rule = policy.sites.get(site_id)
    if rule is None:
        reasons.append(Reason("admission.site_id", f"site id {site_id!r} is not in the admission policy"))
    if len(x25519) != 32 or len(ed25519) != 32:
        reasons.append(Reason("admission.keys", "the site's public keys must be 32 bytes each"))
    if reasons or rule is None:
        return SiteAppraisal(site_id, False, tuple(reasons), {}, "contraindicated", None)

    warnings_: tuple[str, ...] = ()
    if evidence_format == "bundle":
        found, claims, platform, warnings_ = _appraise_bundle(rule, policy, site_id, challenge, x25519, ed25519, evidence, at)
    elif evidence_format == "app-attest":
        platform = "app-attest"
        if "app-attest" not in rule.platforms:
            found, claims = [Reason("admission.platform", f"site {site_id!r} may not join with App Attest")], {}
        else:
            found, claims = _appraise_app_attest(rule, site_id, challenge, x25519, ed25519, evidence, app_attest_key_id)
    else:
        found, claims, platform = [Reason("admission.evidence", f"unknown evidence format {evidence_format!r}")], {}, None
    reasons.extend(found)
    if rule.ed25519_keys and ed25519 not in rule.ed25519_keys:
        reasons.append(Reason("admission.keys", f"site {site_id!r} presented Ed25519 key {ed25519.hex()}, not a pinned one"))
    admitted = not reasons
    status = "contraindicated" if not admitted else ("warning" if warnings_ else "affirming")
    return SiteAppraisal(site_id, admitted, tuple(reasons), claims, status, platform)

"""What goes into audit entries: plain CBOR values, and the admission policy as data.

An entry's fields are CBOR-able values only (text, integers, floats, bytes, booleans,
null, lists, maps with text keys). :func:`plain` converts what events carry (numpy
scalars, datetimes, tuples, sets) and renders anything else as text.

The admission policy is logged in full in the ``config`` entry of every start
(:func:`admission_policy_record`) so an auditor re-runs each admission offline from the
log alone (:func:`admission_policy_from_record`): the attestation policy file's bytes
(whose SHA-256 is the ``policy_id`` admissions name) and every site rule, App Attest roots
included.
"""
from __future__ import annotations

import hashlib
import math
from datetime import date, datetime, timedelta
from enum import Enum
from pathlib import PurePath
from typing import Any

from attestation.errors import AttestflError
from attestation.policy import Policy

from protocol.admission import AdmissionPolicy, AppAttestRule, OrganisationCa, SiteRule


def plain(value: Any) -> Any:
    """``value`` as CBOR-able data (see the module docstring)."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((plain(v) for v in value), key=repr)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, PurePath):
        return str(value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        result = item()
        return result if not isinstance(result, float) or math.isfinite(result) else float(result)
    return str(value)


def policy_id_for(policy_text: bytes | None) -> str:
    return "default" if policy_text is None else "sha256:" + hashlib.sha256(policy_text).hexdigest()


def admission_policy_record(policy: AdmissionPolicy) -> dict[str, Any]:
    sites: dict[str, Any] = {}
    for site_id, rule in sorted(policy.sites.items()):
        app = None
        if rule.app_attest is not None:
            app = {"app_id": rule.app_attest.app_id, "root_pem": rule.app_attest.root_pem, "production": rule.app_attest.production}
        sites[site_id] = {
            "platforms": sorted(rule.platforms),
            "identity_keys": sorted(k.hex() for k in rule.identity_keys),
            "organisation_ca": rule.organisation_ca.der if rule.organisation_ca is not None else None,
            "measurements": sorted(m.hex() for m in rule.measurements),
            "chip_ids": sorted(m.hex() for m in rule.chip_ids),
            "host_data": sorted(m.hex() for m in rule.host_data),
            "mr_config_ids": sorted(m.hex() for m in rule.mr_config_ids),
            "ed25519_keys": sorted(k.hex() for k in rule.ed25519_keys),
            "max_weight": rule.max_weight,
            "app_attest": app,
        }
    return {
        "policy_id": policy.policy_id,
        "attestation_policy": policy.policy_text,
        "challenge_ttl_s": policy.challenge_ttl.total_seconds(),
        "credential_ttl_s": policy.credential_ttl.total_seconds(),
        "sites": sites,
    }


class PolicyRecordError(AttestflError, ValueError):
    """A logged admission policy cannot be rebuilt."""


def admission_policy_from_record(record: Any) -> AdmissionPolicy:
    """Rebuild the aggregator's admission policy from a ``config`` entry's ``admission`` map."""
    try:
        text = record["attestation_policy"]
        if text is not None and not isinstance(text, bytes):
            raise PolicyRecordError("attestation_policy is not bytes")
        if record["policy_id"] != policy_id_for(text):
            raise PolicyRecordError(f"policy_id {record['policy_id']!r} is not the digest of the logged policy text")
        attestation = Policy() if text is None else Policy.from_toml(text.decode("utf-8"))
        sites = {}
        for site_id, rule in record["sites"].items():
            app = rule["app_attest"]
            def hexes(name: str) -> frozenset[bytes]:
                return frozenset(bytes.fromhex(value) for value in rule[name])

            ca = rule["organisation_ca"]
            sites[site_id] = SiteRule(
                platforms=frozenset(rule["platforms"]),
                identity_keys=hexes("identity_keys"),
                organisation_ca=None if ca is None else OrganisationCa.from_bytes(ca, f"logged rule of {site_id}"),
                measurements=hexes("measurements"),
                chip_ids=hexes("chip_ids"),
                host_data=hexes("host_data"),
                mr_config_ids=hexes("mr_config_ids"),
                ed25519_keys=hexes("ed25519_keys"),
                max_weight=float(rule["max_weight"]),
                app_attest=None if app is None else AppAttestRule(app["app_id"], app["root_pem"], bool(app["production"])),
            )
        return AdmissionPolicy(
            sites=sites, attestation=attestation,
            challenge_ttl=timedelta(seconds=float(record["challenge_ttl_s"])),
            credential_ttl=timedelta(seconds=float(record["credential_ttl_s"])),
            policy_id=record["policy_id"], policy_text=text,
        )
    except PolicyRecordError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed logged policy is one error
        raise PolicyRecordError(f"the logged admission policy is unusable: {type(exc).__name__}: {exc}") from exc

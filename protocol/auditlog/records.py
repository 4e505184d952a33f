"""What goes into audit entries: plain CBOR values, and the admission policy as data.

An entry's fields are CBOR-able values only (text, integers, floats, bytes, booleans,
null, lists, maps with text keys). :func:`plain` converts what events carry (numpy
scalars, datetimes, tuples, sets) and renders anything else as text.

The admission policy is logged in full in the ``config`` entry of every start
(:func:`admission_policy_record`) so an auditor re-runs each admission offline from the
log alone (:func:`admission_policy_from_record`): the attestation policy file's bytes
(whose SHA-256 is the ``policy_id`` admissions name), every site rule (App Attest roots and
installed checks' parameters included) and the installed checks in force. Both directions
are one schema (:class:`PolicyRecord` over :class:`protocol.admission.SiteRule`), encoded
by :func:`protocol.admission.encode_plain` and decoded by
:func:`protocol.admission.decode_plain`.
"""

from __future__ import annotations

import hashlib
import math
from datetime import date, datetime, timedelta
from enum import Enum
from pathlib import PurePath
from typing import Any

import msgspec

from attestation.errors import AttestationError, AttestflError
from attestation.policy import Policy
from protocol.admission import (
    AdmissionPolicy,
    SiteRule,
    admission_checks,
    decode_plain,
    encode_plain,
)

#: The format of the entries this code writes, recorded as ``log_format`` in every ``config``
#: entry. 1 (no ``log_format``): the original; 2: the admission policy names the installed
#: checks in force (``extension_checks``) and site rules may carry their parameters (``checks``).
LOG_FORMAT = 2
#: The formats the verifier reads.
KNOWN_LOG_FORMATS = (1, 2)


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


class PolicyRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The admission policy as the ``config`` entry's ``admission`` map records it: one schema
    for both ways (:func:`admission_policy_record`, :func:`admission_policy_from_record`).
    A format-1 log's record is the same without ``extension_checks`` (and without the site
    rules' ``checks``)."""

    policy_id: str
    attestation_policy: bytes | None
    challenge_ttl_s: float
    credential_ttl_s: float
    sites: dict[str, SiteRule]
    #: The ids of the installed checks in force (after the built-in ones), in their order.
    extension_checks: list[str] = []


def admission_policy_record(policy: AdmissionPolicy) -> dict[str, Any]:
    """``policy`` as plain data for the audit log."""
    record = PolicyRecord(
        policy_id=policy.policy_id,
        attestation_policy=policy.policy_text,
        challenge_ttl_s=policy.challenge_ttl.total_seconds(),
        credential_ttl_s=policy.credential_ttl.total_seconds(),
        sites=dict(sorted(policy.sites.items())),
        extension_checks=[check.id for check in policy.extension_checks],
    )
    plain_record: dict[str, Any] = encode_plain(record)
    return plain_record


class PolicyRecordError(AttestflError, ValueError):
    """A logged admission policy cannot be rebuilt."""


def admission_policy_from_record(record: Any) -> AdmissionPolicy:
    """Rebuild the aggregator's admission policy from a ``config`` entry's ``admission`` map:
    the same rules, the same checks (installed ones must be installed here too)."""
    try:
        logged = decode_plain(record, PolicyRecord)
    except msgspec.ValidationError as exc:
        raise PolicyRecordError(f"the logged admission policy is unusable: {exc}") from None
    text = logged.attestation_policy
    if logged.policy_id != policy_id_for(text):
        raise PolicyRecordError(f"policy_id {logged.policy_id!r} is not the digest of the logged policy text")
    try:
        attestation = Policy() if text is None else Policy.from_toml(text.decode("utf-8"))
        checks = admission_checks(logged.extension_checks)
        return AdmissionPolicy(
            sites=logged.sites,
            attestation=attestation,
            challenge_ttl=timedelta(seconds=logged.challenge_ttl_s),
            credential_ttl=timedelta(seconds=logged.credential_ttl_s),
            policy_id=logged.policy_id,
            policy_text=text,
            checks=checks,
        )
    except (AttestationError, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise PolicyRecordError(f"the logged admission policy is unusable: {type(exc).__name__}: {exc}") from None

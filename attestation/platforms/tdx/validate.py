"""Appraisal of verified TDX evidence against a policy: the ``[tdx]`` section and the common keys.

Each policy key is one check with the check id ``tdx.policy.<key>``; every failed check
is reported. Byte values are written as lowercase or uppercase hex, exactly as they appear in
the quote (and in the claims): ``td_attributes`` and ``xfam`` are the 8 quote bytes, i.e. the
little-endian u64, so TD attributes bit 0 (DEBUG) is the low bit of the first byte.

Common keys (top of the policy file) that apply to TDX:

* ``allow_debug`` — TD attributes bit 0 (DEBUG) set is rejected unless true [tdx.policy.allow_debug].
* ``report_data`` — REPORTDATA must equal these 64 bytes [tdx.policy.report_data].
* ``require_collateral`` — TCB info (for the platform's FMSPC), QE identity, PCK CRL and
  root CA CRL must all be given, or found fresh in the verifier's collateral store
  [tdx.policy.require_collateral].
* ``max_collateral_age`` — the TCB info's and the QE identity's ``issueDate`` must be no
  older than this at the verification time [tdx.policy.max_collateral_age].

The ``[tdx]`` section: see :class:`TdxPolicy`; every key is optional and an absent key adds
no constraint, except the TCB statuses, which have defaults whenever collateral is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from ...errors import PolicyError
from ...findings import Reason
from ...validate.fields import (
    read_bool,
    read_hex,
    read_hex_set,
    read_int,
    read_str_set,
    reject_unknown_keys,
)
from ..base import AppraisalPolicy
from . import NAME
from .abi import TdReportBody, TdxQuote
from .verify import TdxVerification

SECTION = NAME

#: Platform TCB statuses a policy may allow. "Revoked" and "NotSupported" (no TCB level
#: matches the platform) can never be allowed.
ALLOWABLE_TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "TDRelaunchAdvised",
    "TDRelaunchAdvisedConfigurationNeeded",
)
#: Used when collateral is given and the policy sets no ``allowed_tcb_statuses``: the
#: platform is patched; SW hardening or configuration steps may still be advised.
DEFAULT_TCB_STATUSES = frozenset(
    {"UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"}
)
#: QE TCB statuses a policy may allow ("Revoked" and "NotSupported" never).
ALLOWABLE_QE_TCB_STATUSES = ("UpToDate", "OutOfDate")
#: Used when a QE identity is given and the policy sets no ``allowed_qe_tcb_statuses``.
DEFAULT_QE_TCB_STATUSES = frozenset({"UpToDate"})

_MEASUREMENT_KEYS = (
    "mr_td",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mr_config_id",
    "mr_owner",
    "mr_owner_config",
    "mr_seam",
    "mr_signer_seam",
)
_MEASUREMENT_NAMES = {
    "mr_td": "MRTD",
    "rtmr0": "RTMR0",
    "rtmr1": "RTMR1",
    "rtmr2": "RTMR2",
    "rtmr3": "RTMR3",
    "mr_config_id": "MRCONFIGID",
    "mr_owner": "MROWNER",
    "mr_owner_config": "MROWNERCONFIG",
    "mr_seam": "MRSEAM",
    "mr_signer_seam": "MRSIGNERSEAM",
}

TD_ATTRIBUTE_SEPT_VE_DISABLE_BIT = 28
TD_ATTRIBUTE_PERFMON_BIT = 63


@dataclass(frozen=True)
class TdxPolicy:
    """The ``[tdx]`` section of a policy. Every field is one check, ``tdx.policy.<field>``."""

    #: Allowed MRTD values (48-byte hex each): the measurement of the TD's initial contents.
    mr_td: frozenset[bytes] = frozenset()
    #: Allowed RTMR0 values (48 bytes): firmware configuration measured at boot.
    rtmr0: frozenset[bytes] = frozenset()
    #: Allowed RTMR1 values (48 bytes): OS loader / kernel.
    rtmr1: frozenset[bytes] = frozenset()
    #: Allowed RTMR2 values (48 bytes): kernel command line, initrd.
    rtmr2: frozenset[bytes] = frozenset()
    #: Allowed RTMR3 values (48 bytes): runtime measurements.
    rtmr3: frozenset[bytes] = frozenset()
    #: Allowed MRCONFIGID values (48 bytes): software-defined configuration ID set by the host.
    mr_config_id: frozenset[bytes] = frozenset()
    #: Allowed MROWNER values (48 bytes): the TD owner's ID.
    mr_owner: frozenset[bytes] = frozenset()
    #: Allowed MROWNERCONFIG values (48 bytes): owner-defined configuration.
    mr_owner_config: frozenset[bytes] = frozenset()
    #: Allowed MRSEAM values (48 bytes): the measurement of the TDX module.
    mr_seam: frozenset[bytes] = frozenset()
    #: Allowed MRSIGNERSEAM values (48 bytes): the TDX module's signer (zero for Intel's module).
    mr_signer_seam: frozenset[bytes] = frozenset()
    #: Minimum TEE_TCB_SVN (16-byte hex), compared component by component (every byte of
    #: the quote's TEE_TCB_SVN must be >= the corresponding byte).
    minimum_tee_tcb_svn: bytes | None = None
    #: Platform TCB statuses accepted (Intel's TDX TCB status from the TCB info). Unset:
    #: when collateral is given, UpToDate, SWHardeningNeeded, ConfigurationNeeded and
    #: ConfigurationAndSWHardeningNeeded are accepted; without collateral nothing is
    #: checked. Set explicitly, a TCB status is required (a quote without a TCB info for its
    #: platform is rejected). Revoked and NotSupported are never accepted.
    allowed_tcb_statuses: frozenset[str] | None = None
    #: QE TCB statuses accepted (from the QE identity). Unset: UpToDate when a QE identity
    #: is given, nothing checked without one. Set explicitly, a QE identity is required.
    allowed_qe_tcb_statuses: frozenset[str] | None = None
    #: Allowed TD attributes values (8-byte hex, quote byte order).
    td_attributes: frozenset[bytes] = frozenset()
    #: TD attributes bits that must be zero (8-byte hex mask, quote byte order).
    td_attributes_forbidden: bytes | None = None
    #: Accept TD attributes bit 63 (PERFMON: the TD may use performance monitoring).
    allow_perfmon: bool = True
    #: Require TD attributes bit 28 (SEPT_VE_DISABLE: no #VE on pending private pages).
    require_sept_ve_disable: bool = False
    #: Allowed XFAM values (8-byte hex, quote byte order): the extended features the TD may use.
    xfam: frozenset[bytes] = frozenset()
    #: XFAM bits that must be zero (8-byte hex mask, quote byte order).
    xfam_forbidden: bytes | None = None
    #: Allowed FMSPC values (6-byte hex) from the PCK certificate: the platform family.
    fmspc: frozenset[bytes] = frozenset()
    #: Minimum quote version (4 or 5).
    minimum_quote_version: int | None = None
    #: Required QE vendor ID (16-byte hex); Intel's QE is 939a7233f79c4ca9940a0db3957f0607.
    qe_vendor_id: bytes | None = None

    def __post_init__(self) -> None:
        if self.allowed_tcb_statuses is not None:
            bad = sorted(set(self.allowed_tcb_statuses) - set(ALLOWABLE_TCB_STATUSES))
            if bad:
                raise PolicyError(
                    f"[{SECTION}] allowed_tcb_statuses: {', '.join(bad)} can never be allowed; "
                    f"allowed: {', '.join(ALLOWABLE_TCB_STATUSES)}"
                )
        if self.allowed_qe_tcb_statuses is not None:
            bad = sorted(set(self.allowed_qe_tcb_statuses) - set(ALLOWABLE_QE_TCB_STATUSES))
            if bad:
                raise PolicyError(
                    f"[{SECTION}] allowed_qe_tcb_statuses: {', '.join(bad)} can never be allowed; "
                    f"allowed: {', '.join(ALLOWABLE_QE_TCB_STATUSES)}"
                )
        if self.minimum_quote_version is not None and self.minimum_quote_version not in (4, 5):
            raise PolicyError(f"[{SECTION}] minimum_quote_version: expected 4 or 5, got {self.minimum_quote_version}")

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> TdxPolicy:
        keys = tuple(f.name for f in fields(cls))
        reject_unknown_keys(table, keys, SECTION)
        measurements = {key: read_hex_set(table, key, SECTION, 48) for key in _MEASUREMENT_KEYS}
        tcb_statuses = None
        if "allowed_tcb_statuses" in table:
            tcb_statuses = read_str_set(table, "allowed_tcb_statuses", SECTION, ALLOWABLE_TCB_STATUSES)
            if not tcb_statuses:
                raise PolicyError(f"[{SECTION}] allowed_tcb_statuses: the list is empty, which accepts nothing")
        qe_statuses = None
        if "allowed_qe_tcb_statuses" in table:
            qe_statuses = read_str_set(table, "allowed_qe_tcb_statuses", SECTION, ALLOWABLE_QE_TCB_STATUSES)
            if not qe_statuses:
                raise PolicyError(f"[{SECTION}] allowed_qe_tcb_statuses: the list is empty, which accepts nothing")
        return cls(
            **measurements,
            minimum_tee_tcb_svn=read_hex(table, "minimum_tee_tcb_svn", SECTION, 16),
            allowed_tcb_statuses=tcb_statuses,
            allowed_qe_tcb_statuses=qe_statuses,
            td_attributes=read_hex_set(table, "td_attributes", SECTION, 8),
            td_attributes_forbidden=read_hex(table, "td_attributes_forbidden", SECTION, 8),
            allow_perfmon=read_bool(table, "allow_perfmon", SECTION, True),
            require_sept_ve_disable=read_bool(table, "require_sept_ve_disable", SECTION, False),
            xfam=read_hex_set(table, "xfam", SECTION, 8),
            xfam_forbidden=read_hex(table, "xfam_forbidden", SECTION, 8),
            fmspc=read_hex_set(table, "fmspc", SECTION, 6),
            minimum_quote_version=read_int(table, "minimum_quote_version", SECTION, None, minimum=4, maximum=5),
            qe_vendor_id=read_hex(table, "qe_vendor_id", SECTION, 16),
        )


def _allowed_list(values: frozenset[bytes]) -> str:
    return ", ".join(sorted(v.hex() for v in values))


def _bits_set(value: bytes, mask: bytes) -> list[int]:
    combined = int.from_bytes(value, "little") & int.from_bytes(mask, "little")
    return [bit for bit in range(64) if combined >> bit & 1]


@dataclass(frozen=True)
class TdxFacts:
    """What the checks look at: the verified quote, what verification established, the
    policy (common keys) and its ``[tdx]`` section, the verification time."""

    quote: TdxQuote
    verification: TdxVerification
    policy: AppraisalPolicy
    section: TdxPolicy
    at: datetime

    @property
    def body(self) -> TdReportBody:
        return self.quote.body


#: One check: the messages of its failures (none: passed).
Check = Callable[[TdxFacts], Iterator[str]]


# Common keys.


def _allow_debug(f: TdxFacts) -> Iterator[str]:
    # TD attributes bit 0.
    if f.body.debug and not f.policy.allow_debug:
        yield "the TD runs in debug mode (TD attributes bit 0 DEBUG is set) and the policy forbids debug"


def _report_data(f: TdxFacts) -> Iterator[str]:
    # The binding of the quote to the relying party's key/nonce.
    required = f.policy.report_data
    if required is not None and f.body.report_data != required:
        yield f"REPORTDATA {f.body.report_data.hex()} differs from the required {required.hex()}"


def _require_collateral(f: TdxFacts) -> Iterator[str]:
    # Every part of the collateral must be there.
    missing, notes = f.verification.missing_collateral, f.verification.collateral_notes
    if f.policy.require_collateral and missing:
        why = f" ({'; '.join(notes)})" if notes else ""
        yield f"the policy requires collateral, but these parts are missing: {', '.join(missing)}{why}"


def _max_collateral_age(f: TdxFacts) -> Iterator[str]:
    # issueDate of the TCB info and the QE identity.
    limit = f.policy.max_collateral_age
    if limit is None:
        return
    for name, issued in f.verification.collateral_issue_dates:
        age = f.at - issued
        if age > limit:
            yield (
                f"the {name} was issued {issued.isoformat()}, {age} before the verification time, "
                f"older than the allowed {limit}"
            )


# Measurements and TCB.


def _measurement(key: str) -> Check:
    def check(f: TdxFacts) -> Iterator[str]:
        allowed: frozenset[bytes] = getattr(f.section, key)
        value: bytes = getattr(f.body, key)
        if allowed and value not in allowed:
            yield f"{_MEASUREMENT_NAMES[key]} {value.hex()} is not among the allowed values ({_allowed_list(allowed)})"

    return check


def _minimum_tee_tcb_svn(f: TdxFacts) -> Iterator[str]:
    minimum = f.section.minimum_tee_tcb_svn
    if minimum is None:
        return
    have = f.body.tee_tcb_svn
    low = [i for i in range(16) if have[i] < minimum[i]]
    if low:
        yield (
            f"TEE_TCB_SVN {have.hex()} is below the minimum {minimum.hex()} in component(s) {', '.join(map(str, low))}"
        )


def _allowed_tcb_statuses(f: TdxFacts) -> Iterator[str]:
    tcb, wanted = f.verification.tcb, f.section.allowed_tcb_statuses
    if tcb is None:
        if wanted is not None:
            yield (
                "the policy requires a TCB status, but no TCB info for this platform was given, "
                "so the TCB cannot be appraised"
            )
        return
    allowed = wanted if wanted is not None else DEFAULT_TCB_STATUSES
    if tcb.status not in allowed:
        yield f"platform TCB status {tcb.status} is not allowed (allowed: {', '.join(sorted(allowed))}): {tcb.detail}"


def _allowed_qe_tcb_statuses(f: TdxFacts) -> Iterator[str]:
    status, wanted = f.verification.qe_tcb_status, f.section.allowed_qe_tcb_statuses
    if status is None:
        if wanted is not None:
            yield "the policy requires a QE TCB status, but no QE identity was given"
        return
    allowed = wanted if wanted is not None else DEFAULT_QE_TCB_STATUSES
    if status not in allowed:
        yield (
            f"QE TCB status {status} (QE ISVSVN {f.quote.qe_report.isv_svn}) is not allowed "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


# TD attributes and XFAM.


def _td_attributes(f: TdxFacts) -> Iterator[str]:
    allowed = f.section.td_attributes
    if allowed and f.body.td_attributes not in allowed:
        yield f"TD attributes {f.body.td_attributes.hex()} are not among the allowed values ({_allowed_list(allowed)})"


def _td_attributes_forbidden(f: TdxFacts) -> Iterator[str]:
    mask = f.section.td_attributes_forbidden
    bits = _bits_set(f.body.td_attributes, mask) if mask is not None else []
    if bits:
        yield f"TD attributes {f.body.td_attributes.hex()} set forbidden bit(s) {', '.join(map(str, bits))}"


def _allow_perfmon(f: TdxFacts) -> Iterator[str]:
    if not f.section.allow_perfmon and f.body.td_attributes_value >> TD_ATTRIBUTE_PERFMON_BIT & 1:
        yield "TD attributes bit 63 (PERFMON) is set and the policy forbids it"


def _require_sept_ve_disable(f: TdxFacts) -> Iterator[str]:
    if f.section.require_sept_ve_disable and not f.body.td_attributes_value >> TD_ATTRIBUTE_SEPT_VE_DISABLE_BIT & 1:
        yield "TD attributes bit 28 (SEPT_VE_DISABLE) is clear and the policy requires it"


def _xfam(f: TdxFacts) -> Iterator[str]:
    allowed = f.section.xfam
    if allowed and f.body.xfam not in allowed:
        yield f"XFAM {f.body.xfam.hex()} is not among the allowed values ({_allowed_list(allowed)})"


def _xfam_forbidden(f: TdxFacts) -> Iterator[str]:
    mask = f.section.xfam_forbidden
    bits = _bits_set(f.body.xfam, mask) if mask is not None else []
    if bits:
        yield f"XFAM {f.body.xfam.hex()} sets forbidden bit(s) {', '.join(map(str, bits))}"


# Platform and quote.


def _fmspc(f: TdxFacts) -> Iterator[str]:
    allowed, fmspc = f.section.fmspc, f.verification.fmspc
    if not allowed:
        return
    if fmspc is None:
        yield "the platform's FMSPC is unknown (no usable PCK certificate)"
    elif fmspc not in allowed:
        yield f"FMSPC {fmspc.hex()} is not among the allowed values ({_allowed_list(allowed)})"


def _minimum_quote_version(f: TdxFacts) -> Iterator[str]:
    minimum = f.section.minimum_quote_version
    if minimum is not None and f.quote.version < minimum:
        yield f"quote version {f.quote.version} is below the minimum {minimum}"


def _qe_vendor_id(f: TdxFacts) -> Iterator[str]:
    required, have = f.section.qe_vendor_id, f.quote.header.qe_vendor_id
    if required is not None and have != required:
        yield f"QE vendor ID {have.hex()} differs from the required {required.hex()}"


#: Every check, in the order reasons are reported: ``(policy key, check)``; a failure is filed
#: as ``tdx.policy.<key>``. The common keys come first, then each :class:`TdxPolicy` field.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("allow_debug", _allow_debug),
    ("report_data", _report_data),
    ("require_collateral", _require_collateral),
    ("max_collateral_age", _max_collateral_age),
    *((key, _measurement(key)) for key in _MEASUREMENT_KEYS),
    ("minimum_tee_tcb_svn", _minimum_tee_tcb_svn),
    ("allowed_tcb_statuses", _allowed_tcb_statuses),
    ("allowed_qe_tcb_statuses", _allowed_qe_tcb_statuses),
    ("td_attributes", _td_attributes),
    ("td_attributes_forbidden", _td_attributes_forbidden),
    ("allow_perfmon", _allow_perfmon),
    ("require_sept_ve_disable", _require_sept_ve_disable),
    ("xfam", _xfam),
    ("xfam_forbidden", _xfam_forbidden),
    ("fmspc", _fmspc),
    ("minimum_quote_version", _minimum_quote_version),
    ("qe_vendor_id", _qe_vendor_id),
)


def validate_tdx(
    quote: TdxQuote, verification: TdxVerification, policy: AppraisalPolicy, *, at: datetime
) -> list[Reason]:
    """Every policy check on a verified quote (:data:`CHECKS`, in order); returns every
    failure (empty: accepted by policy)."""
    facts = TdxFacts(quote, verification, policy, policy.section(NAME, TdxPolicy), at)
    return [Reason(f"tdx.policy.{key}", message) for key, check in CHECKS for message in check(facts)]

"""A second opinion on TDX evidence: Phala's ``dcap-qvl`` (Rust, Python bindings from the
package index: an offline wheel) beside attestfl's verifier, on the same quote, the same
collateral files and the same time.

What "agree" means (``docs/attestation.md``, "A second opinion"): dcap-qvl's ``verify``
either returns a report (accepted, with Intel's TCB status merged with the QE's) or raises
(rejected: it stops at the first failure). attestfl separates authenticity from policy, so
its verdict is taken under the policy that encodes what dcap-qvl always enforces
(:func:`dcap_equivalent_policy`): every collateral part present and fresh, any TCB status
but Revoked and "not supported" (no matching TCB level), debug off, SEPT_VE_DISABLE on, no
reserved TD attribute bit, Intel's QE vendor ID. The two agree when both accept with the
same TCB status, or both reject. For the shipped vectors the tests also pin why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import dcap_qvl

from attestation.errors import AttestationError
from attestation.platforms.tdx.abi import INTEL_QE_VENDOR_ID
from attestation.platforms.tdx.appraise import appraise_tdx
from attestation.platforms.tdx.collateral import (
    PCK_CRL_FILES,
    TCB_INFO_FMSPC_PATTERN,
    collateral_from_files,
)
from attestation.platforms.tdx.validate import (
    ALLOWABLE_QE_TCB_STATUSES,
    ALLOWABLE_TCB_STATUSES,
    TdxPolicy,
)
from attestation.policy import Policy

#: TD attribute bits dcap-qvl refuses when set: TUD bits 7:1, SEC bits 27:8 and 29, OTHER
#: bits 62:32 (its OTHER mask also covers bit 63, PERFMON: see ``allow_perfmon`` below).
RESERVED_TD_ATTRIBUTES = bytes.fromhex("feffff2fffffff7f")


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    status: str | None  # the TCB status of an accepted quote
    why: str  # dcap-qvl's error, or attestfl's failed check ids

    def agrees_with(self, other: Verdict) -> bool:
        return self.accepted == other.accepted and (not self.accepted or self.status == other.status)


def dcap_equivalent_policy(trusted_simulated_roots: frozenset[str] = frozenset()) -> Policy:
    tdx = TdxPolicy(
        allowed_tcb_statuses=frozenset(ALLOWABLE_TCB_STATUSES),
        allowed_qe_tcb_statuses=frozenset(ALLOWABLE_QE_TCB_STATUSES),
        require_sept_ve_disable=True,
        allow_perfmon=False,
        td_attributes_forbidden=RESERVED_TD_ATTRIBUTES,
        qe_vendor_id=INTEL_QE_VENDOR_ID,
    )
    return Policy(require_collateral=True, trusted_simulated_roots=trusted_simulated_roots, tdx=tdx)


def ours(
    quote: bytes, files: Mapping[str, bytes], at: datetime, trusted_simulated_roots: frozenset[str] = frozenset()
) -> Verdict:
    """attestfl's verdict under :func:`dcap_equivalent_policy`; unusable input is a rejection."""
    try:
        appraisal = appraise_tdx(
            quote,
            collateral=collateral_from_files(files),
            policy=dcap_equivalent_policy(trusted_simulated_roots),
            at=at,
        )
    except AttestationError as exc:
        return Verdict(False, None, f"unusable: {exc}")
    if not appraisal.accepted:
        return Verdict(False, None, " ".join(sorted({r.check for r in appraisal.reasons})))
    return Verdict(True, appraisal.claims["tcb_status"], "")


_SIGNED = re.compile(
    rb'\A\{"(tcbInfo|enclaveIdentity)":(?P<body>.*),"signature":"(?P<signature>[0-9a-fA-F]*)"\}\s*\Z', re.S
)


def _signed_document(data: bytes) -> tuple[str, bytes]:
    """(signed body, signature) of an Intel PCS document, split as dcap-qvl's collateral
    holds them (without judging the JSON: dcap-qvl does that)."""
    match = _SIGNED.match(data)
    if match is None:
        raise ValueError("not an Intel PCS signed document")
    return match["body"].decode("utf-8", "replace"), bytes.fromhex(match["signature"].decode())


def dcap_collateral(files: Mapping[str, bytes], fmspc: str) -> dcap_qvl.QuoteCollateralV3:
    """dcap-qvl's collateral from the files of an attestfl collateral directory: the TCB info
    for ``fmspc`` (else the only one), the QE identity, the PCK CRL and its chain, the root CA CRL."""
    tcb_names = sorted(n for n in files if TCB_INFO_FMSPC_PATTERN.fullmatch(n) or n == "tcb-info.json")
    tcb_name = next((n for n in tcb_names if fmspc.lower() in n.lower()), tcb_names[0] if tcb_names else None)
    crl_name = next(n for n in PCK_CRL_FILES if n in files)
    if tcb_name is None:
        raise ValueError("no TCB info")
    tcb_info, tcb_signature = _signed_document(files[tcb_name])
    qe_identity, qe_signature = _signed_document(files["qe-identity.json"])
    return dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=files["pck-crl-issuer-chain.pem"].decode("ascii", "replace"),
        root_ca_crl=files["root-ca-crl.der"],
        pck_crl=files[crl_name],
        tcb_info_issuer_chain=files["tcb-info-issuer-chain.pem"].decode("ascii", "replace"),
        tcb_info=tcb_info,
        tcb_info_signature=tcb_signature,
        qe_identity_issuer_chain=files["qe-identity-issuer-chain.pem"].decode("ascii", "replace"),
        qe_identity=qe_identity,
        qe_identity_signature=qe_signature,
    )


def theirs(
    quote: bytes, files: Mapping[str, bytes], at: datetime, *, fmspc: str, root_der: bytes | None = None
) -> Verdict:
    """dcap-qvl's verdict (Intel's root, or ``root_der``); collateral it cannot even hold is a rejection."""
    try:
        collateral = dcap_collateral(files, fmspc)
    except (ValueError, KeyError, StopIteration) as exc:
        return Verdict(False, None, f"unusable collateral: {exc}")
    now = int(at.timestamp())
    try:
        report = (
            dcap_qvl.verify(quote, collateral, now)
            if root_der is None
            else dcap_qvl.verify_with_root_ca(quote, collateral, root_der, now)
        )
    except ValueError as exc:
        return Verdict(False, None, str(exc).splitlines()[0])
    return Verdict(True, report.status, "")

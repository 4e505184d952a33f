"""Offline verification of an audit log: the auditor's (relying party's) side.

It lives beside the writer (not in :mod:`attestation`) because re-running admissions needs
the aggregator's own admission function, :func:`protocol.admission.appraise_site`, and the
log format of :mod:`aggregator.audit.log`; it uses only public data from the log directory
and the auditor's policy, never the aggregator's configuration or keys.

:func:`verify_log` checks, reporting every problem with the index of the entry it names:

1. framing: every record is whole and passes its checksum [entry.framing]; entries decode
   [entry.decode] and carry their position as index (a deleted, inserted or swapped entry
   shows here) [entry.index];
2. signed tree heads: sizes increase and timestamps do not go back [head.order]; each
   signature verifies [head.signature] under the key bound by the latest
   ``aggregator_start``/``handover`` entry the head covers [head.key]; each root equals
   the RFC 9162 root recomputed from the entries (consistency of successive heads
   follows) [head.root]; no head covers entries that are absent [entry.missing]; every
   entry is covered by a head [entry.unsigned];
3. the aggregator's evidence in each start/handover entry: bundle made for the log's key
   binding nonce, binding the logged key, appraised under the auditor's policy (pinned
   roots, measurements, TCB) [aggregator.evidence]; a handover names the previous run's
   last head [handover.previous_head]. When the evidence is authentic and only the auditor's
   policy does not accept it (a simulated root it does not list, a policy check such as the
   measurement), the problem is marked ``untrusted``: the verdict is then ``not_trusted``
   (exit 4), not ``invalid`` (:attr:`Verification.verdict`, :mod:`auditor.verdict`);
4. admissions re-run from the logged evidence, challenge, keys and time under the logged
   policy; verdict and reasons must be the logged ones [admission.rerun];
5. sessions, receipts and rounds: a session or update only for a site admitted in that
   run [session.site, update.site], each receipt signature valid under the run's key
   [update.receipt], each round's participants admitted and each one's update digest and
   weight those of an accepted, logged receipt [round.participant, round.receipt];
6. rollback of the aggregator's state that the log reveals: a ``restart`` that resumes
   from a checkpoint behind (or ahead of) the rounds the log closed [restart.round], or
   whose checkpointed model is not the one the log's last round produced [restart.model];
   a round closed again without such a restart (the sealed checkpoint was lost or rolled
   back) [round.order]; a DP ε lower than one the log already recorded [dp.epsilon]; a
   handover whose previous head is not the validly signed head, by the previous run's key,
   of the entries before it [handover.previous_head]. A ``no_sealing`` entry (training
   starts afresh) begins a new training for these checks.

Malformed input never raises: a value of the wrong type, out of range or unparsable in an
entry or a head is a Problem naming it [entry.decode, head.decode, KIND.fields,
admission.evidence]; files that are not regular files, or too large, make the log
unusable (:class:`UnusableLog`, exit 2), naming the file.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from attestation.binding import BoundKeys
from attestation.bundle import appraise_bundle
from attestation.bundle_abi import EvidenceBundle, parse_bundle
from attestation.errors import AttestationError, AttestflError
from attestation.findings import Reason
from attestation.policy import Policy
from protocol.admission import AdmissionPolicy, AdmissionRequest, IdentityProof, appraise
from protocol.auditlog import merkle
from protocol.auditlog.format import (
    ENTRIES_FILE,
    HEADS_FILE,
    MAX_LOG_FILE_BYTES,
    AuditFileError,
    key_binding_nonce,
    read_regular_file,
    scan_records,
)
from protocol.auditlog.heads import TreeHead, head_message
from protocol.auditlog.records import KNOWN_LOG_FORMATS, PolicyRecordError, admission_policy_from_record
from protocol.cards import CardError, card_message, parse_card
from protocol.formulas import receipt_message

START_KINDS = ("aggregator_start", "handover")
CHECKED_KINDS: tuple[str, ...] = START_KINDS + (
    "config",
    "collateral",
    "admission",
    "session",
    "update_accepted",
    "round",
    "restart",
    "no_sealing",
    "vendor_submission",
    "vendor_evaluation",
    "vendor_release",
    "vendor_restored",
    "vendor_deadline",
    "async_version",
    "config_bundle",
    "model_initial",
    "model_released",
    "model_delivered",
    "upload_parked",
    "upload_resumed",
    "drift_alert",
    "quarantine",
    "contribution_release",
    "dataset_card",
)
MAX_PROBLEMS = 200
MAX_TIME_MS = 253402300799999  # 9999-12-31T23:59:59.999Z: the last instant a datetime holds


class UnusableLog(AttestflError):
    """The directory is not an audit log that can be read at all (exit 2)."""


class DigestArgumentError(AttestflError):
    """An update digest given to ``audit prove`` is not hex, too short, or a prefix of several (exit 2)."""


#: The shortest update digest prefix ``audit prove`` accepts (sites are shown 12 hex digits).
MIN_DIGEST_PREFIX = 8


@dataclass(frozen=True)
class Problem:
    index: int  # the entry this names (for a head: the first entry it puts in doubt)
    check: str
    message: str
    head: int | None = None  # position of the tree head in heads.log, when a head is at fault
    #: True when the problem is only that the auditor's policy does not trust authentic evidence
    #: (a root, measurement, TCB or platform it does not accept), not that anything was altered.
    untrusted: bool = False

    def __str__(self) -> str:
        where = f"entry {self.index}" + (f" (tree head #{self.head})" if self.head is not None else "")
        return f"{where}: {self.check}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "head": self.head,
            "check": self.check,
            "message": self.message,
            "class": "not_trusted" if self.untrusted else "tampered",
        }


@dataclass(frozen=True)
class Entry:
    index: int
    kind: str
    time: int  # unix ms
    fields: dict[str, Any]

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.time / 1000, UTC)


@dataclass(frozen=True)
class AggregatorRun:
    index: int
    kind: str
    time: int
    key: str
    platform: str | None
    claims: dict[str, Any]
    reasons: tuple[str, ...]
    tee: str
    #: Non-empty when the evidence is authentic but the auditor's policy does not trust it: what it
    #: does not accept ("simulated root <fingerprint>", a failed policy check).
    not_trusted: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdmissionDecision:
    index: int
    time: int
    site: str
    admitted: bool
    reasons: tuple[str, ...]
    platform: str | None
    policy_id: str
    confirmed: bool  # the re-run gave the same verdict and reasons
    #: The claims of the site's evidence as the offline re-run appraised them (empty when it was not re-run).
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class RoundOutcome:
    index: int
    time: int
    round: int
    attempt: int
    participants: dict[str, Any]
    model_sha256: str
    strategy: Any
    clip_norm: Any
    dp: Any
    epsilon: Any


@dataclass
class Verification:
    directory: Path
    entries: list[Entry] = field(default_factory=list)
    records: int = 0
    heads: list[TreeHead] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    runs: list[AggregatorRun] = field(default_factory=list)
    admissions: list[AdmissionDecision] = field(default_factory=list)
    rounds: list[RoundOutcome] = field(default_factory=list)
    configs: list[Entry] = field(default_factory=list)
    omitted_problems: int = 0
    #: Model delivery: the initial model's digest and each released model's (round -> SHA-256 hex).
    models: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.problems and not self.omitted_problems

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    @property
    def first_tampering(self) -> Problem | None:
        """The first problem that is not merely the auditor's policy not trusting authentic evidence."""
        return next((p for p in self.problems if not p.untrusted), None)

    @property
    def tampered(self) -> bool:
        """Something is altered, inconsistent or forged (not merely untrusted by the auditor's policy)."""
        return bool(self.omitted_problems) or any(not p.untrusted for p in self.problems)

    @property
    def simulated(self) -> bool:
        """The aggregator's or an admitted site's evidence comes from the simulated TEE."""
        return any(run.claims.get("simulated") for run in self.runs) or any(
            a.admitted and a.claims.get("simulated") for a in self.admissions
        )

    @property
    def not_trusted(self) -> list[str]:
        """What the auditor's policy does not trust in authentic evidence, per aggregator run."""
        return [f"{item} (entry {run.index}, {run.kind})" for run in self.runs for item in run.not_trusted]

    @property
    def verdict(self) -> str:
        """``"invalid"`` (tampered, inconsistent or forged: exit 1), ``"not_trusted"`` (authentic,
        but the auditor's policy does not trust its evidence: exit 4), ``"simulated"`` (valid under a
        policy that trusts the simulated TEE: proves nothing about hardware) or ``"valid"``."""
        if self.tampered:
            return "invalid"
        if self.problems:
            return "not_trusted"
        return "simulated" if self.simulated else "valid"

    def add(self, problem: Problem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.omitted_problems += 1

    def to_json(self) -> dict[str, Any]:
        first = self.first_problem
        return {
            "valid": self.valid,
            "verdict": self.verdict,
            "simulated": self.simulated,
            "not_trusted": self.not_trusted,
            "log": str(self.directory),
            "entries": self.records,
            "tree_heads": len(self.heads),
            "latest_head": self.heads[-1].to_json() if self.heads else None,
            "first_problem": first.to_json() if first else None,
            "problems": [p.to_json() for p in self.problems],
            "more_problems": self.omitted_problems,
            "warnings": list(self.warnings),
            "aggregator_runs": [
                {
                    "index": r.index,
                    "kind": r.kind,
                    "key": r.key,
                    "platform": r.platform,
                    "evidence_accepted": not r.reasons,
                    "reasons": list(r.reasons),
                    "not_trusted": list(r.not_trusted),
                    "simulated": bool(r.claims.get("simulated")),
                    "measurement": r.claims.get("measurement"),
                }
                for r in self.runs
            ],
            "admissions": {
                "admitted": sum(a.admitted for a in self.admissions),
                "refused": sum(not a.admitted for a in self.admissions),
            },
            "rounds": len(self.rounds),
            "models": self.models,
        }


class _Keys:
    """Ed25519 verification with the public key objects cached."""

    def __init__(self) -> None:
        self._cache: dict[bytes, Ed25519PublicKey | None] = {}

    def verify(self, key: bytes, signature: bytes, message: bytes) -> bool:
        if key not in self._cache:
            try:
                self._cache[key] = Ed25519PublicKey.from_public_bytes(key)
            except ValueError:
                self._cache[key] = None
        public = self._cache[key]
        if public is None:
            return False
        try:
            public.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def _read(directory: Path, name: str) -> bytes:
    try:
        return read_regular_file(directory / name, MAX_LOG_FILE_BYTES, "audit log file")
    except FileNotFoundError:
        raise UnusableLog(f"{directory}: no {name}: not an attestfl audit log directory") from None
    except AuditFileError as exc:
        raise UnusableLog(str(exc)) from None


def _decode_entry(position: int, payload: bytes) -> Entry | Problem:
    try:
        data = cbor2.loads(payload)
    except Exception as exc:  # noqa: BLE001 - cbor2 raises several types on garbage
        return Problem(position, "entry.decode", f"the entry is not CBOR: {exc}")
    if not isinstance(data, dict) or set(data) != {"index", "kind", "time", "fields"}:
        return Problem(position, "entry.decode", "the entry is not a map of index, kind, time and fields")
    index, kind, time_ms, fields_ = data["index"], data["kind"], data["time"], data["fields"]
    if type(index) is not int or not isinstance(kind, str) or type(time_ms) is not int or not isinstance(fields_, dict):
        return Problem(position, "entry.decode", "index, kind, time or fields has the wrong type")
    if not 0 <= time_ms <= MAX_TIME_MS:
        return Problem(
            position, "entry.decode", f"the entry's time {time_ms} is not a unix time in milliseconds up to year 9999"
        )
    if index != position:
        return Problem(
            position,
            "entry.index",
            f"position {position} holds the entry numbered {index}: entries were deleted, inserted or reordered",
        )
    return Entry(index, kind, time_ms, fields_)


def read_log(directory: str | Path) -> tuple[list[bytes], list[TreeHead], list[Any], list[Problem], list[str]]:
    """Records (payloads), heads, and the framing problems of both files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UnusableLog(f"{directory}: no such log directory")
    entries_data, heads_data = _read(directory, ENTRIES_FILE), _read(directory, HEADS_FILE)
    problems: list[Problem] = []
    warnings: list[str] = []
    scan = scan_records(entries_data)
    payloads = [r.payload for r in scan.records]
    heads: list[TreeHead] = []
    raw_heads: list[Any] = []
    head_scan = scan_records(heads_data)
    for number, record in enumerate(head_scan.records):
        try:
            heads.append(TreeHead.from_map(cbor2.loads(record.payload)))
            raw_heads.append(number)
        except Exception as exc:  # noqa: BLE001 - a tree head unreadable in any way is a Problem, never a traceback
            problems.append(
                Problem(
                    heads[-1].tree_size if heads else 0,
                    "head.decode",
                    f"tree head #{number} is unreadable: {exc}",
                    number,
                )
            )
    covered = max((h.tree_size for h in heads), default=0)
    if scan.torn is not None:
        position = len(payloads)
        if scan.torn_at_end and covered <= position:
            warnings.append(
                f"entries.log ends with a torn, unacknowledged record at byte {scan.good_end} "
                "(an append cut short; the aggregator truncates it on restart)"
            )
        else:
            problems.append(
                Problem(
                    position,
                    "entry.framing",
                    f"{scan.torn} (byte {scan.good_end} of entries.log): the entry was altered or the file was cut",
                )
            )
    if head_scan.torn is not None:
        number = len(head_scan.records)
        if head_scan.torn_at_end:
            warnings.append(f"heads.log ends with a torn record at byte {head_scan.good_end} (an append cut short)")
        else:
            problems.append(
                Problem(
                    heads[-1].tree_size if heads else 0,
                    "head.framing",
                    f"tree head #{number}: {head_scan.torn} (byte {head_scan.good_end} of heads.log)",
                    number,
                )
            )
    if not payloads and not heads:
        raise UnusableLog(f"{directory}: the log is empty")
    return payloads, heads, raw_heads, problems, warnings


def verify_log(directory: str | Path, policy: Policy | None = None) -> Verification:
    """Verify the log in ``directory``; ``policy`` appraises the aggregator's evidence
    (default: :class:`~attestation.policy.Policy`, real vendor roots only)."""
    directory = Path(directory)
    policy = policy or Policy()
    payloads, heads, _, framing, warnings = read_log(directory)
    result = Verification(directory, records=len(payloads), heads=heads, warnings=warnings)
    for problem in framing:
        result.add(problem)
    roots = _roots(payloads)
    entries = _decode_entries(result, payloads)
    keys = _Keys()
    _check_heads(result, heads, roots, len(payloads), keys)
    _check_semantics(result, entries, roots, policy, keys)
    result.problems.sort(key=lambda p: p.index)
    return result


def _roots(payloads: list[bytes]) -> list[bytes]:
    """The RFC 9162 root of every prefix of the log: ``roots[n]`` covers entries 0..n-1."""
    roots = [merkle.EMPTY_ROOT]
    frontier = merkle.Frontier()
    for payload in payloads:
        frontier.append(merkle.leaf_hash(payload))
        roots.append(frontier.root())
    return roots


def _decode_entries(result: Verification, payloads: list[bytes]) -> list[Entry | None]:
    """Each record decoded (None where it cannot be: a Problem says why); the good ones are
    kept in ``result.entries``."""
    entries: list[Entry | None] = []
    for position, payload in enumerate(payloads):
        decoded = _decode_entry(position, payload)
        if isinstance(decoded, Problem):
            result.add(decoded)
            entries.append(None)
        else:
            entries.append(decoded)
    result.entries = [e for e in entries if e is not None]
    return entries


def _bound_keys(entries: list[Entry]) -> list[tuple[int, bytes]]:
    """Keys bound by start/handover entries, by index (checked for their evidence later)."""
    return [
        (entry.index, entry.fields["ed25519"])
        for entry in entries
        if entry.kind in START_KINDS and isinstance(entry.fields.get("ed25519"), bytes)
    ]


def _key_at(bound: list[tuple[int, bytes]], tree_size: int) -> bytes | None:
    """The key the log binds at ``tree_size``: that of the latest start/handover it covers."""
    key = None
    for index, candidate in bound:
        if index < tree_size:
            key = candidate
        else:
            break
    return key


def _head_order_problem(number: int, head: TreeHead, previous: TreeHead | None) -> Problem | None:
    """Each head must be larger and no older than the one before it."""
    if previous is not None and (head.tree_size <= previous.tree_size or head.timestamp < previous.timestamp):
        return Problem(
            max(0, head.tree_size - 1),
            "head.order",
            f"tree head #{number} (size {head.tree_size}, time {head.timestamp}) does not "
            f"follow the previous one (size {previous.tree_size}, time {previous.timestamp})",
            number,
        )
    return None


def _head_trust_problem(
    number: int, head: TreeHead, bound: list[tuple[int, bytes]], keys: _Keys, size: int
) -> Problem | None:
    """Signature, signing key, entries present: the first that fails (the later checks are then moot)."""
    last = max(0, head.tree_size - 1)
    message = head_message(head.tree_size, head.root_hash, head.timestamp, head.key)
    if not keys.verify(head.key, head.signature, message):
        return Problem(
            last,
            "head.signature",
            f"tree head #{number} (size {head.tree_size}): the signature does not "
            f"verify under key {head.key.hex()}: a forged or altered tree head",
            number,
        )
    expected_key = _key_at(bound, head.tree_size)
    if expected_key != head.key:
        bound_by = "no key" if expected_key is None else f"key {expected_key.hex()}"
        return Problem(
            last,
            "head.key",
            f"tree head #{number} (size {head.tree_size}) is signed by {head.key.hex()}, "
            f"but the log's evidence entries bind {bound_by} at that size: "
            "a key whose evidence is not in the log",
            number,
        )
    if head.tree_size > size:
        return Problem(
            size,
            "entry.missing",
            f"tree head #{number} covers {head.tree_size} entries, but only "
            f"{size} are present: entries {size}..{head.tree_size - 1} were deleted or cut off",
            number,
        )
    return None


def _head_root_problem(number: int, head: TreeHead, good_size: int) -> Problem:
    """The first head whose root does not match: the entries after the last matching head were changed."""
    culprit = good_size if head.tree_size - good_size == 1 else f"{good_size}..{head.tree_size - 1}"
    return Problem(
        good_size,
        "head.root",
        f"tree head #{number} (size {head.tree_size}) does not match the "
        f"entries: entry {culprit} was altered, replaced or reordered since it was signed",
        number,
    )


def _check_heads(result: Verification, heads: list[TreeHead], roots: list[bytes], size: int, keys: _Keys) -> None:
    """Signed tree heads: order, signature, signing key, root; then the entries no head covers."""
    bound = _bound_keys(result.entries)
    previous: TreeHead | None = None
    good_size = 0
    root_failed = 0
    for number, head in enumerate(heads):
        order = _head_order_problem(number, head, previous)
        if order is not None:
            result.add(order)
        previous = head
        problem = _head_trust_problem(number, head, bound, keys, size)
        if problem is not None:
            result.add(problem)
            continue
        if roots[head.tree_size] != head.root_hash:
            if not root_failed:
                result.add(_head_root_problem(number, head, good_size))
            root_failed += 1
            continue
        if not root_failed:
            good_size = head.tree_size
    if root_failed > 1:
        result.warnings.append(
            f"{root_failed - 1} later tree heads do not match the entries either (consequence of the first)"
        )
    covered = max((h.tree_size for h in heads), default=0)
    if covered < size:
        result.add(
            Problem(covered, "entry.unsigned", f"entries {covered}..{size - 1} are not covered by any signed tree head")
        )


def _reason_from_text(text: str) -> Reason:
    check, _, message = text.partition(": ")
    return Reason(check, message)


def _bytes(fields_: dict[str, Any], name: str) -> bytes:
    value = fields_.get(name)
    if not isinstance(value, bytes):
        raise KeyError(name)
    return value


@dataclass
class _RunState:
    """What the semantic checks carry from entry to entry."""

    run_key: bytes | None = None
    admitted: dict[str, int] = field(default_factory=dict)  # site -> index of the admission in this run
    receipts: dict[tuple[str, int], Entry] = field(default_factory=dict)
    policies: dict[str, AdmissionPolicy] = field(default_factory=dict)
    collateral: dict[bytes, bytes] = field(
        default_factory=dict
    )  # SHA-256 -> bytes of the verifier's collateral files logged
    training: _Training = field(default_factory=lambda: _Training())
    vendor_jobs: dict[str, str] = field(default_factory=dict)  # job id -> vendor (vendor evaluation)
    vendor_submitted: dict[str, str] = field(default_factory=dict)  # every run's submissions (vendor_restored)
    delivery: dict[str, Any] = field(default_factory=dict)  # model delivery (see _on_model_initial)
    quarantined: dict[tuple[int, int], list[str]] = field(default_factory=dict)  # (round, attempt) -> sites
    session_identities: dict[tuple[str, str], str] = field(default_factory=dict)  # (site, session) -> identity key


def _check_semantics(
    result: Verification, entries: list[Entry | None], roots: list[bytes], policy: Policy, keys: _Keys
) -> None:
    state = _RunState()
    for entry in entries:
        if entry is None:
            continue
        try:
            if entry.kind in START_KINDS:
                state.run_key = _check_start(result, entry, roots, policy, state.run_key)
                state.admitted, state.receipts = {}, {}
                state.vendor_jobs = {}
            elif state.run_key is None:
                result.add(
                    Problem(
                        entry.index,
                        "entry.run",
                        f"a {entry.kind!r} entry before any aggregator_start entry binds a key",
                    )
                )
            elif entry.kind in _HANDLERS:
                _HANDLERS[entry.kind](result, entry, state, keys)
        except Exception as exc:  # noqa: BLE001 - whatever a malformed entry makes a check raise is a Problem
            kind = entry.kind if entry.kind in CHECKED_KINDS else "entry"
            result.add(
                Problem(
                    entry.index,
                    f"{kind}.fields",
                    f"the {entry.kind[:64]!r} entry lacks a field or has one of the wrong type "
                    f"or out of range ({type(exc).__name__}: {str(exc)[:300]})",
                )
            )


def _on_collateral(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    f, i = entry.fields, entry.index
    data = _bytes(f, "data")
    if hashlib.sha256(data).hexdigest() != _text(f, "sha256"):
        result.add(
            Problem(
                i,
                "collateral.sha256",
                f"the logged collateral file {_text(f, 'path')[:200]!r} is not the bytes its sha256 names",
            )
        )
    else:
        state.collateral[hashlib.sha256(data).digest()] = data


def _on_config(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    f, i = entry.fields, entry.index
    result.configs.append(entry)
    log_format = f.get("log_format", 1)  # format 1 wrote no log_format
    if type(log_format) is not int or log_format not in KNOWN_LOG_FORMATS:
        result.add(
            Problem(
                i,
                "config.log_format",
                f"this run's entries are in log format {str(log_format)[:40]}, which this "
                f"verifier does not read (it reads formats {', '.join(map(str, KNOWN_LOG_FORMATS))}): verify the log "
                "with the attestfl version that wrote it",
            )
        )
        return
    if "admission" in f:
        try:
            admission = admission_policy_from_record(f["admission"])
            state.policies[admission.policy_id] = admission
        except PolicyRecordError as exc:
            result.add(Problem(i, "config.admission", str(exc)))
    if isinstance(f.get("aggregator_toml"), bytes) and hashlib.sha256(f["aggregator_toml"]).hexdigest() != f.get(
        "aggregator_toml_sha256"
    ):
        result.add(
            Problem(i, "config.digest", "aggregator_toml_sha256 is not the digest of the logged aggregator.toml")
        )


def _on_admission(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    # A refusal logged before the peer proved an identity key carries only digests and bounded
    # fields (no evidence, no aggregator keys): nothing was signed for this aggregator to check.
    unproven_refusal = entry.fields.get("admitted") is False and "evidence" not in entry.fields
    if not unproven_refusal and entry.fields.get("aggregator_ed25519") != state.run_key:
        result.add(
            Problem(
                entry.index,
                "admission.aggregator",
                "the admission names aggregator keys other than this run's: "
                "the site's identity signature was not made for this aggregator",
            )
        )
    decision = _check_admission(result, entry, state.policies, state.collateral)
    if decision is not None:
        result.admissions.append(decision)
        if decision.admitted:  # a refused re-admission leaves an earlier session live (as the service does)
            state.admitted[decision.site] = entry.index


def _on_session(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    site = entry.fields.get("site")
    if site not in state.admitted:
        result.add(
            Problem(
                entry.index, "session.site", f"a session for site {site!r}, which no admission in this run admitted"
            )
        )


def _on_update(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    f, i = entry.fields, entry.index
    site, round_number = _text(f, "site"), _uint(f, "round")
    if site not in state.admitted:
        result.add(
            Problem(i, "update.site", f"an update accepted from site {site!r}, which no admission in this run admitted")
        )
    message = receipt_message(
        round_number=round_number,
        attempt=_uint(f, "attempt"),
        site_id=site,
        update_sha256=bytes.fromhex(_text(f, "update_sha256")),
        weight=_number(f, "weight"),
        accepted_unix_ms=_uint(f, "accepted_unix_ms"),
        session_id=bytes.fromhex(_text(f, "session")),
        call=_uint(f, "call"),
    )
    assert state.run_key is not None
    if not keys.verify(state.run_key, bytes.fromhex(_text(f, "receipt_signature")), message):
        result.add(
            Problem(
                i,
                "update.receipt",
                f"the receipt of site {site!r} for round {round_number} is not signed by this run's key",
            )
        )
    state.receipts[(site, round_number)] = entry


def _on_round(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    outcome = _check_round(result, entry, state.admitted, state.receipts)
    _check_quarantined(result, entry, state)
    state.training.round(result, outcome)


def _on_restart(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    state.training.restart(result, entry)


def _on_no_sealing(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    state.training = _Training()


_HANDLERS: dict[str, Callable[[Verification, Entry, _RunState, _Keys], None]] = {
    "collateral": _on_collateral,
    "config": _on_config,
    "admission": _on_admission,
    "session": _on_session,
    "update_accepted": _on_update,
    "round": _on_round,
    "restart": _on_restart,
    "no_sealing": _on_no_sealing,
}


# --- vendor evaluation (aggregator/evaluation_jobs.py) ------------------------------------------


def _on_vendor_submission(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    """The vendor's signature binds its manifest to this run's keys and the logged artefact."""
    from protocol.vendor import VendorManifest, submission_message

    f, i = entry.fields, entry.index
    manifest = VendorManifest.from_bytes(_bytes(f, "manifest"))
    assert state.run_key is not None
    message = submission_message(
        _bytes(f, "manifest"),
        aggregator_x25519=_bytes(f, "aggregator_x25519"),
        aggregator_ed25519=state.run_key,
        sealed_key=_bytes(f, "sealed_key"),
        header=_bytes(f, "header"),
    )
    if not keys.verify(_bytes(f, "vendor_public"), _bytes(f, "signature"), message):
        result.add(
            Problem(
                i,
                "vendor_submission.signature",
                f"the submission of vendor {manifest.vendor!r} is not signed by the logged vendor key over its "
                "manifest and this run's keys",
            )
        )
    task = result.configs[-1].fields.get("task") if result.configs else None
    policy = task.get("vendors") if isinstance(task, dict) else None
    if isinstance(policy, dict) and policy.get("keys", {}).get(manifest.vendor) != _bytes(f, "vendor_public").hex():
        result.add(
            Problem(
                i,
                "vendor_submission.policy",
                f"vendor {manifest.vendor!r} with this key is not in the run's logged vendor policy",
            )
        )
    if manifest.job_id != _text(f, "job") or manifest.vendor != _text(f, "vendor"):
        result.add(Problem(i, "vendor_submission.job", "the logged job id or vendor is not the manifest's"))
    state.vendor_jobs[manifest.job_id] = manifest.vendor
    state.vendor_submitted[manifest.job_id] = manifest.vendor


def _on_vendor_evaluation(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    f, i = entry.fields, entry.index
    job, site = _text(f, "job"), _text(f, "site")
    if job not in state.vendor_jobs:
        result.add(Problem(i, "vendor_evaluation.job", f"metrics for job {job[:40]!r}, which no submission logged"))
    if site not in state.admitted:
        result.add(Problem(i, "vendor_evaluation.site", f"metrics from site {site!r}, which no admission admitted"))


def _on_vendor_release(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    f, i = entry.fields, entry.index
    jobs = f["jobs"]
    unknown = [str(j)[:40] for j in jobs if j not in state.vendor_jobs]
    if unknown:
        result.add(Problem(i, "vendor_release.job", f"a release of job(s) {unknown[:4]} that no submission logged"))
    vendor = f.get("vendor")
    if f.get("to") == "vendor" and any(state.vendor_jobs.get(j) != vendor for j in jobs):
        result.add(Problem(i, "vendor_release.vendor", f"vendor {str(vendor)[:64]!r} was sent another vendor's job"))


def _on_vendor_restored(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    """A restart restores only jobs an earlier run of this log accepted (aggregator/vendor_state.py)."""
    for item in entry.fields["jobs"]:
        job, vendor = _text(item, "job"), _text(item, "vendor")
        if state.vendor_submitted.get(job) != vendor:
            result.add(
                Problem(
                    entry.index,
                    "vendor_restored.job",
                    f"restored job {job[:40]!r} of vendor {vendor[:64]!r}, which no earlier run's submission logged",
                )
            )
            continue
        state.vendor_jobs[job] = vendor


def _on_vendor_deadline(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    f = entry.fields
    if _text(f, "job") not in state.vendor_jobs:
        result.add(
            Problem(entry.index, "vendor_deadline.job", f"a deadline of job {_text(f, 'job')[:40]!r} never submitted")
        )


def _on_async_version(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    """An async version (aggregator/async_rounds.py) aggregates only logged receipts, on their base versions."""
    for participant in entry.fields["participants"]:
        site, base = _text(participant, "site"), _uint(participant, "base_version")
        receipt = state.receipts.get((site, base))
        if receipt is None or receipt.fields.get("update_sha256") != participant.get("update_sha256"):
            result.add(
                Problem(
                    entry.index,
                    "async_version.receipt",
                    f"version {entry.fields.get('version')!r} aggregates an update of site {site!r} on base version "
                    f"{base} that no logged receipt accepted",
                )
            )
    # Version v closes base v - 1, as a synchronous round r produces the model of round r + 1: the
    # restart and rollback checks read both alike.
    base = _uint(entry.fields, "base")
    outcome = RoundOutcome(
        entry.index, entry.time, base, 1, {}, _text(entry.fields, "model_sha256"), "async", None, None, None
    )
    state.training.round(result, outcome)


_HANDLERS.update(
    vendor_submission=_on_vendor_submission,
    vendor_evaluation=_on_vendor_evaluation,
    vendor_release=_on_vendor_release,
    vendor_restored=_on_vendor_restored,
    vendor_deadline=_on_vendor_deadline,
    async_version=_on_async_version,
)


# --- federation intelligence (aggregator/surveillance.py) ---------------------------------------


def _on_drift_alert(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    f = entry.fields
    site, round_number, rule, value = _text(f, "site"), _uint(f, "round"), _text(f, "rule"), _number(f, "value")
    if type(f.get("quarantined")) is not bool or not math.isfinite(value):
        raise TypeError("quarantined is not a boolean or value is not finite")
    if site not in state.admitted:
        result.add(
            Problem(
                entry.index,
                "drift_alert.site",
                f"a {rule[:40]!r} alert of round {round_number} names "
                f"site {site[:80]!r}, which no admission in this run admitted",
            )
        )


def _on_quarantine(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    f = entry.fields
    round_number, attempt, sites = _uint(f, "round"), _uint(f, "attempt"), f["sites"]
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites) or not isinstance(f["reasons"], dict):
        raise TypeError("sites is not a list of site ids or reasons is not a map")
    for site in sites:
        if (site, round_number) not in state.receipts or not f["reasons"].get(site):
            result.add(
                Problem(
                    entry.index,
                    "quarantine.site",
                    f"round {round_number}: site {site[:80]!r} is "
                    "quarantined without a logged, accepted update or without a reason",
                )
            )
    state.quarantined[(round_number, attempt)] = list(sites)


def _check_quarantined(result: Verification, entry: Entry, state: _RunState) -> None:
    """A quarantine logged for a round's attempt is applied: the round aggregated none of those sites."""
    f = entry.fields
    excluded = state.quarantined.get((_uint(f, "round"), f.get("attempt", 1)), [])
    for site in excluded:
        if site in f["participants"]:
            result.add(
                Problem(
                    entry.index,
                    "round.quarantine",
                    f"round {f['round']} aggregated the update of site "
                    f"{site[:80]!r}, which the log quarantined for that round",
                )
            )


def _on_contribution_release(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    values, ranking = entry.fields["values"], entry.fields["ranking"]
    if not isinstance(values, dict) or not all(type(v) in (int, float) and math.isfinite(v) for v in values.values()):
        raise TypeError("values is not a map of finite numbers")
    if (
        not isinstance(ranking, list)
        or sorted(ranking) != sorted(values)
        or any(values[a] < values[b] for a, b in itertools.pairwise(ranking))
    ):
        result.add(
            Problem(
                entry.index,
                "contribution_release.ranking",
                "the released ranking is not the released values in decreasing order",
            )
        )
    for site in values:
        if site not in state.admitted:
            result.add(
                Problem(
                    entry.index,
                    "contribution_release.site",
                    f"a contributor value for site {site[:80]!r}, which no admission in this run admitted",
                )
            )


_HANDLERS.update(
    {"drift_alert": _on_drift_alert, "quarantine": _on_quarantine, "contribution_release": _on_contribution_release}
)


def _on_session_keys(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    """The session check, then the identity key each session was opened for (dataset cards are signed by it)."""
    _on_session(result, entry, state, keys)
    f = entry.fields
    if isinstance(f.get("site"), str) and isinstance(f.get("session"), str) and isinstance(f.get("identity"), str):
        state.session_identities[(f["site"], f["session"])] = f["identity"]


def _on_dataset_card(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    f = entry.fields
    site, session, text = _text(f, "site"), _text(f, "session"), _text(f, "card")
    identity = state.session_identities.get((site, session))
    problem = None
    if identity is None:
        problem = f"a dataset card of site {site[:80]!r} for session {session[:32]}, which this run did not open for it"
    else:
        try:
            card = parse_card(text)
            signed = keys.verify(
                bytes.fromhex(identity)[:32],
                bytes.fromhex(_text(f, "signature")),
                card_message(bytes.fromhex(session), text.encode()),
            )
        except (CardError, ValueError) as exc:
            problem = f"the dataset card of site {site[:80]!r} is unreadable: {str(exc)[:200]}"
        else:
            if card.site != site or not signed:
                problem = f"the dataset card of site {site[:80]!r} is not signed by its identity key for its session"
    if problem is not None:
        result.add(Problem(entry.index, "dataset_card.signature", problem))


_HANDLERS.update({"session": _on_session_keys, "dataset_card": _on_dataset_card})


def _text(fields_: dict[str, Any], name: str) -> str:
    value = fields_[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} is not text")
    return value


def _uint(fields_: dict[str, Any], name: str) -> int:
    value = fields_[name]
    if type(value) is not int or not 0 <= value < 1 << 63:
        raise ValueError(f"{name} is not a non-negative 63-bit integer")
    return value


def _number(fields_: dict[str, Any], name: str) -> float:
    value = fields_[name]
    if type(value) not in (int, float):
        raise TypeError(f"{name} is not a number")
    return float(value)


class _Training:
    """What the log says of one training (from a start, or a no_sealing fresh start): the
    last round it closed, and the highest DP epsilon recorded; for the rollback checks."""

    def __init__(self) -> None:
        self.closed: int | None = None  # the last closed round (or where a restart said it resumes, less one)
        self.last: RoundOutcome | None = None
        self.epsilon: tuple[float, RoundOutcome] | None = None

    def round(self, result: Verification, outcome: RoundOutcome | None) -> None:
        if outcome is None:
            return
        i = outcome.index
        if self.closed is not None and outcome.round <= self.closed:
            where = f" (entry {self.last.index})" if self.last is not None and self.last.round == self.closed else ""
            result.add(
                Problem(
                    i,
                    "round.order",
                    f"round {outcome.round} is closed again after the log closed round {self.closed}{where} "
                    "with no restart from a checkpoint: the aggregator's sealed state was lost or rolled back, "
                    "and sites' data were aggregated again",
                )
            )
        epsilon = outcome.epsilon
        if epsilon is not None:
            if type(epsilon) not in (int, float):
                result.add(Problem(i, "dp.epsilon", f"round {outcome.round}: epsilon {epsilon!r} is not a number"))
            elif self.epsilon is not None and epsilon < self.epsilon[0]:
                before, at = self.epsilon
                result.add(
                    Problem(
                        i,
                        "dp.epsilon",
                        f"round {outcome.round} reports DP epsilon {epsilon:.6g}, below the {before:.6g} the "
                        f"log recorded at round {at.round} (entry {at.index}): the privacy accounting was rolled back",
                    )
                )
            elif epsilon == epsilon:  # not NaN
                self.epsilon = (float(epsilon), outcome)
        self.closed = outcome.round if self.closed is None else max(self.closed, outcome.round)
        self.last = outcome

    def restart(self, result: Verification, entry: Entry) -> None:
        f, i = entry.fields, entry.index
        resumed = _uint(f, "resumed_round")
        if resumed < 1:
            raise ValueError("resumed_round is below 1")
        closed = self.closed or 0
        if resumed <= closed:
            where = f" (entry {self.last.index})" if self.last is not None else ""
            result.add(
                Problem(
                    i,
                    "restart.round",
                    f"the aggregator resumed at round {resumed}, but the log already closed round {closed}{where}: "
                    "its checkpoint was rolled back "
                    "(or it stopped between logging that round and sealing its checkpoint); "
                    f"round(s) {resumed}..{closed} are aggregated again",
                )
            )
        elif resumed > closed + 1:
            result.add(
                Problem(
                    i,
                    "restart.round",
                    f"the aggregator resumed at round {resumed} from a checkpoint, but the log shows "
                    f"{'no closed round' if not closed else f'round {closed} as the last closed'}: rounds "
                    f"{closed + 1}..{resumed - 1} are missing from this log (the log was rolled back, or the "
                    "checkpoint comes from another log)",
                )
            )
        elif self.last is not None and self.last.round == closed:
            checkpoint = f.get("checkpoint_model_sha256")
            if checkpoint != self.last.model_sha256:
                result.add(
                    Problem(
                        i,
                        "restart.model",
                        f"the checkpoint the aggregator resumed from holds model {str(checkpoint)[:80]}, "
                        f"not the model {self.last.model_sha256} that round {closed} produced "
                        f"(entry {self.last.index}): "
                        "the sealed checkpoint was replaced",
                    )
                )
        self.closed = resumed - 1


def _check_start_kind(result: Verification, entry: Entry, roots: list[bytes], previous_key: bytes | None) -> None:
    """A start begins the log; a handover continues it, naming the previous run's last head."""
    f, i = entry.fields, entry.index
    if entry.kind == "aggregator_start" and i != 0:
        result.add(
            Problem(
                i, "handover.kind", "an aggregator_start entry in the middle of the log (a restart must be a handover)"
            )
        )
    if entry.kind != "handover":
        return
    if i == 0:
        result.add(Problem(i, "handover.kind", "the log begins with a handover, not an aggregator_start"))
    try:
        previous = TreeHead.from_map(f.get("previous_head"))
    except ValueError as exc:
        result.add(Problem(i, "handover.previous_head", f"the handover's previous head is unusable: {exc}"))
        return
    if previous.tree_size != i or previous.root_hash != roots[i]:
        result.add(
            Problem(
                i,
                "handover.previous_head",
                f"the handover names a head of {previous.tree_size} entries that is not "
                f"the head of the {i} entries before it: the run continued another log (a rolled-back, "
                "rewritten or forked copy)",
            )
        )
    elif not previous.signature_valid() or (previous_key is not None and previous.key != previous_key):
        result.add(
            Problem(
                i,
                "handover.previous_head",
                "the handover's previous head is not validly signed by the previous run's key",
            )
        )


def _appraise_start(
    entry: Entry, key: bytes, roots: list[bytes], policy: Policy
) -> tuple[dict[str, Any], str | None, list[str], tuple[str, ...]]:
    """The start's evidence under the auditor's policy: (claims, platform, reasons, the reasons that are
    only the policy's distrust of authentic evidence)."""
    f, i = entry.fields, entry.index
    claims: dict[str, Any] = {}
    platform = None
    reasons: list[str] = []
    not_trusted: tuple[str, ...] = ()
    try:
        bundle = parse_bundle(_bytes(f, "evidence"))
        platform = bundle.platform
        nonce = key_binding_nonce(i, roots[i])
        appraisal = appraise_bundle(bundle, expected_nonce=nonce, policy=policy, at=entry.when)
        claims = appraisal.claims if isinstance(appraisal.claims, dict) else {}
        reasons = [str(r) for r in appraisal.reasons]
        if bundle.keys.ed25519 != key:
            reasons.append("binding.key: the evidence binds another Ed25519 key than the one this entry names")
        elif reasons:
            not_trusted = _only_untrusted(bundle, appraisal.reasons, nonce, policy, entry.when)
    except AttestationError as exc:
        reasons.append(f"evidence.format: {exc}")
    except Exception as exc:  # noqa: BLE001 - evidence of any shape must give a reason, not an exception
        reasons.append(
            f"evidence.format: the evidence cannot be parsed or appraised ({type(exc).__name__}: {str(exc)[:200]})"
        )
    return claims, platform, reasons, not_trusted


def _check_start(
    result: Verification, entry: Entry, roots: list[bytes], policy: Policy, previous_key: bytes | None
) -> bytes:
    f, i = entry.fields, entry.index
    key = _bytes(f, "ed25519")
    _check_start_kind(result, entry, roots, previous_key)
    claims, platform, reasons, not_trusted = _appraise_start(entry, key, roots, policy)
    if not_trusted:
        result.add(
            Problem(
                i,
                "aggregator.evidence",
                "the aggregator's evidence is authentic and binds its log key, but the auditor's policy does not "
                "trust it: " + "; ".join(not_trusted),
                untrusted=True,
            )
        )
    elif reasons:
        result.add(
            Problem(
                i,
                "aggregator.evidence",
                "the aggregator's evidence does not bind its log key under the auditor's policy: " + "; ".join(reasons),
            )
        )
    result.runs.append(
        AggregatorRun(
            i,
            entry.kind,
            entry.time,
            key.hex(),
            platform,
            claims,
            tuple(reasons),
            str(f.get("tee", ""))[:200],
            not_trusted,
        )
    )
    return key


_SIMULATED_ROOT = re.compile(r"simulated root \(fingerprint ([0-9a-f]{64})\)")
_POLICY_CHECK = re.compile(r"^(?:[a-z0-9_-]+\.)?policy\.[a-z0-9_]+$")


def _only_untrusted(
    bundle: EvidenceBundle, reasons: tuple[Reason, ...], nonce: bytes, policy: Policy, at: datetime
) -> tuple[str, ...]:
    """What the auditor's policy does not trust, when that is all that is wrong with authentic evidence;
    () when anything else fails (a signature, the binding, a root that is neither a vendor's nor simulated).

    The evidence is appraised again under the auditor's policy plus the simulated roots it ends at:
    every check of authenticity must then pass, and only policy checks (``policy.*``,
    ``<platform>.policy.*``: measurement, TCB, debug, platforms) may still fail."""
    simulated = sorted({fp for r in reasons if r.check.endswith(".root") for fp in _SIMULATED_ROOT.findall(r.message)})
    again = reasons
    if simulated:
        widened = dataclasses.replace(policy, trusted_simulated_roots=policy.trusted_simulated_roots | set(simulated))
        again = appraise_bundle(bundle, expected_nonce=nonce, policy=widened, at=at).reasons
    if any(not _POLICY_CHECK.match(r.check) for r in again):
        return ()
    return tuple(f"simulated root {fp}" for fp in simulated) + tuple(str(r) for r in again)


def _logged_store(result: Verification, entry: Entry, collateral: dict[bytes, bytes]) -> Any:
    """The verifier's collateral an admission used, rebuilt from the log's ``collateral`` entries."""
    from attestation.collateral import LoggedCollateralStore

    used = entry.fields.get("collateral") or {}
    if not isinstance(used, dict):
        raise TypeError("collateral is not a map")
    files = {}
    for path, digest in used.items():
        data = collateral.get(bytes.fromhex(str(digest)))
        if data is None:
            result.add(
                Problem(
                    entry.index,
                    "admission.collateral",
                    f"the admission used collateral {str(path)[:200]!r} "
                    f"({str(digest)[:64]}) that no earlier collateral entry of the log holds",
                )
            )
            continue
        files[str(path)] = data
    return LoggedCollateralStore(files)


def _check_admission(
    result: Verification, entry: Entry, policies: dict[str, AdmissionPolicy], collateral: dict[bytes, bytes]
) -> AdmissionDecision | None:
    f, i = entry.fields, entry.index
    site = _text(f, "site")
    reasons_ = f["reasons"]
    if not isinstance(reasons_, list) or not all(isinstance(r, str) for r in reasons_):
        raise TypeError("reasons is not a list of text")
    logged_reasons = tuple(reasons_)
    logged_admitted = f["admitted"]
    if not isinstance(logged_admitted, bool):
        raise TypeError("admitted is not a boolean")
    policy_id = _text(f, "policy_id")

    def decision(confirmed: bool, claims: dict[str, Any] | None = None) -> AdmissionDecision:
        return AdmissionDecision(
            i,
            entry.time,
            site,
            logged_admitted,
            logged_reasons,
            _optional_text(f, "platform"),
            policy_id,
            confirmed,
            claims if claims is not None else {},
        )

    if not logged_admitted and "evidence" not in f:
        # Refused before the peer proved the site's identity key: the aggregator logs only
        # digests and bounded fields for those (an unauthenticated peer cannot grow the log by
        # its evidence), so there is nothing to re-run; the refusal stands as logged.
        return decision(False)
    evidence = _bytes(f, "evidence")
    if hashlib.sha256(evidence).hexdigest() != f["evidence_sha256"]:
        result.add(
            Problem(
                i,
                "admission.evidence_sha256",
                f"site {site!r}: evidence_sha256 is not the digest of the logged evidence",
            )
        )
    policy = policies.get(policy_id)
    if policy is None:
        result.add(
            Problem(
                i,
                "admission.policy",
                f"site {site!r} was appraised under policy {policy_id!r}, which no config entry of the log holds",
            )
        )
        return decision(False)
    request = _logged_request(f, site, evidence, logged_reasons)
    logged_policy = dataclasses.replace(policy, collateral=_logged_store(result, entry, collateral))
    try:
        # App Attest verification runs its own event loop (asyncio.run): on a worker thread it
        # neither fails inside a caller's running loop nor clears the caller's thread's loop.
        if request.evidence_format == "app-attest":
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="attestfl-verify") as pool:
                recomputed = pool.submit(appraise, logged_policy, request).result()
        else:
            recomputed = appraise(logged_policy, request)
    except Exception as exc:  # noqa: BLE001 - logged evidence of any shape is a Problem, never a crash
        result.add(
            Problem(
                i,
                "admission.evidence",
                f"site {site!r}: the logged evidence cannot be appraised again "
                f"({type(exc).__name__}: {str(exc)[:300]}): it is not what the site presented",
            )
        )
        return decision(False)
    problem = _rerun_problem(
        site, logged_admitted, logged_reasons, recomputed.admitted, tuple(str(r) for r in recomputed.reasons)
    )
    if problem:
        result.add(Problem(i, "admission.rerun", problem))
    claims = recomputed.claims if isinstance(recomputed.claims, dict) else {}
    return decision(not problem, claims)


def _logged_request(f: dict[str, Any], site: str, evidence: bytes, logged_reasons: tuple[str, ...]) -> AdmissionRequest:
    """The admission request as the entry logs it (the challenge store's verdict included)."""
    challenge_reasons = [r for r in logged_reasons if r.startswith("admission.challenge: ")]
    key_id = f.get("app_attest_key_id") or b""
    if not isinstance(key_id, bytes):
        raise TypeError("app_attest_key_id is not bytes")
    return AdmissionRequest(
        site_id=site,
        challenge=_bytes(f, "challenge"),
        x25519=_bytes(f, "x25519"),
        ed25519=_bytes(f, "ed25519"),
        evidence_format=_text(f, "evidence_format"),
        evidence=evidence,
        identity=IdentityProof(
            _bytes(f, "identity_public"),
            _bytes(f, "identity_signature"),
            _bytes(f, "identity_certificate"),
            _bytes(f, "aggregator_evidence_sha256"),
        ),
        aggregator=BoundKeys(_bytes(f, "aggregator_x25519"), _bytes(f, "aggregator_ed25519")),
        at=datetime.fromisoformat(_text(f, "at")),
        app_attest_key_id=key_id,
        challenge_reason=_reason_from_text(challenge_reasons[0]) if challenge_reasons else None,
    )


def _rerun_problem(
    site: str, logged_admitted: bool, logged: tuple[str, ...], admitted: bool, again: tuple[str, ...]
) -> str:
    """How the re-run disagrees with the logged decision ("" when it agrees)."""
    if admitted == logged_admitted and again == logged:
        return ""
    if logged_admitted and not admitted:
        return f"site {site!r} is logged as admitted, but its logged evidence fails the logged policy: " + "; ".join(
            again
        )
    if admitted and not logged_admitted:
        return (
            f"site {site!r} is logged as refused ({'; '.join(logged)}), "
            "but its logged evidence passes the logged policy"
        )
    return f"site {site!r}: the logged reasons ({'; '.join(logged)}) are not the recomputed ones ({'; '.join(again)})"


def _optional_text(fields_: dict[str, Any], name: str) -> str | None:
    value = fields_.get(name)
    return value if isinstance(value, str) else None


def _check_round(
    result: Verification, entry: Entry, admitted: dict[str, int], receipts: dict[tuple[str, int], Entry]
) -> RoundOutcome:
    f, i = entry.fields, entry.index
    round_number = _uint(f, "round")
    participants = f["participants"]
    if not isinstance(participants, dict) or not all(isinstance(p, dict) for p in participants.values()):
        raise TypeError("participants is not a map of maps")
    for site, part in participants.items():
        if site not in admitted:
            result.add(
                Problem(
                    i,
                    "round.participant",
                    f"round {round_number} aggregated an update of site {site!r}, which was not admitted in this run",
                )
            )
        receipt = receipts.get((site, round_number))
        if receipt is None:
            result.add(
                Problem(
                    i, "round.receipt", f"round {round_number}: site {site!r} has no logged, accepted update receipt"
                )
            )
        elif receipt.fields.get("update_sha256") != part.get("update_sha256") or _number(
            receipt.fields, "weight"
        ) != _number(part, "weight"):
            result.add(
                Problem(
                    i,
                    "round.receipt",
                    f"round {round_number}: site {site!r}'s update digest or weight is not the one its receipt "
                    f"(entry {receipt.index}) acknowledges",
                )
            )
    attempt = f.get("attempt", 1)
    if type(attempt) is not int:
        raise TypeError("attempt is not an integer")
    outcome = RoundOutcome(
        i,
        entry.time,
        round_number,
        attempt,
        participants,
        _text(f, "model_sha256"),
        f.get("strategy"),
        f.get("clip_norm"),
        f.get("dp"),
        f.get("epsilon"),
    )
    result.rounds.append(outcome)
    return outcome


# --- a site's check: inclusion of its receipt ------------------------------------------------


@dataclass(frozen=True)
class InclusionResult:
    included: bool
    message: str
    index: int | None = None
    head: TreeHead | None = None
    path: tuple[bytes, ...] = ()
    consistency: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "included": self.included,
            "message": self.message,
            "index": self.index,
            "head": self.head.to_json() if self.head else None,
            "path": [p.hex() for p in self.path],
            "consistency": self.consistency,
        }


def _wanted_digest(update_sha256: str) -> str:
    """The digest argument, normalised: hex, all 64 digits or a prefix of at least MIN_DIGEST_PREFIX."""
    wanted = update_sha256.strip().lower()
    if not MIN_DIGEST_PREFIX <= len(wanted) <= 64 or any(c not in "0123456789abcdef" for c in wanted):
        raise DigestArgumentError(
            f"--update-sha256 {update_sha256[:80]!r}: expected the update's SHA-256 as hex, all 64 digits or a "
            f"prefix of at least {MIN_DIGEST_PREFIX}"
        )
    return wanted


def _head_refusal(head: TreeHead, key: bytes | None, present: int) -> InclusionResult | None:
    """The head itself: validly signed, by the pinned key, over entries that are all present."""
    if not head.signature_valid():
        return InclusionResult(False, "the tree head's signature does not verify", head=head)
    if key is not None and head.key != key:
        return InclusionResult(
            False, f"the tree head is signed by {head.key.hex()}, not the pinned key {key.hex()}", head=head
        )
    if head.tree_size > present:
        return InclusionResult(
            False,
            f"the tree head covers {head.tree_size} entries, but the log holds only {present}: entries were removed",
            head=head,
        )
    return None


def _receipt_candidates(
    payloads: list[bytes], tree_size: int, site: str, round_number: int, wanted: str
) -> dict[str, int]:
    """The site's accepted updates in that round whose digest starts with ``wanted``: full digest -> first entry."""
    candidates: dict[str, int] = {}
    for index in range(tree_size):
        try:
            data = cbor2.loads(payloads[index])
        except Exception:  # noqa: BLE001 - an unreadable entry is not the receipt
            continue
        if not isinstance(data, dict) or data.get("kind") != "update_accepted":
            continue
        f = data.get("fields")
        if not isinstance(f, dict):
            continue
        digest = str(f.get("update_sha256", "")).lower()
        if f.get("site") == site and f.get("round") == round_number and digest.startswith(wanted):
            candidates.setdefault(digest, index)
    if len(candidates) > 1:
        listed = ", ".join(f"{digest} (entry {index})" for digest, index in sorted(candidates.items()))
        raise DigestArgumentError(
            f"--update-sha256 {wanted} is a prefix of {len(candidates)} accepted updates of site {site!r} in round "
            f"{round_number}: {listed}; give more digits"
        )
    return candidates


def _consistency(
    head: TreeHead, latest: TreeHead, leaves: list[bytes], present: int
) -> tuple[dict[str, Any] | None, bool]:
    """The latest head's consistency with a saved one (RFC 9162), when it is another, valid head over present
    entries: (the proof as JSON or None, whether it holds)."""
    if head is latest or latest.tree_size > present or not latest.signature_valid():
        return None, True
    proof = merkle.consistency_proof(head.tree_size, leaves[: latest.tree_size])
    ok = merkle.verify_consistency(head.tree_size, latest.tree_size, head.root_hash, latest.root_hash, proof)
    return {"from": head.tree_size, "to": latest.tree_size, "proof": [p.hex() for p in proof], "consistent": ok}, ok


def prove_receipt(
    directory: str | Path,
    *,
    site: str,
    round_number: int,
    update_sha256: str,
    head: TreeHead | None = None,
    key: bytes | None = None,
) -> InclusionResult:
    """Is the ``update_accepted`` entry of (site, round, digest) in the tree ``head`` signs?

    ``head``: one the site saved (default: the log's latest); ``key``: the aggregator key the
    site attested (pins the head's signer). With a saved head, the latest head is also
    checked to be consistent with it (RFC 9162 consistency proof): the log was only appended to.

    ``update_sha256`` is the full digest (64 hex digits) or a prefix of at least
    :data:`MIN_DIGEST_PREFIX` that names exactly one of the site's accepted updates in that round
    (:class:`DigestArgumentError` otherwise, listing the candidates).
    """
    wanted = _wanted_digest(update_sha256)
    payloads, heads, _, _, _ = read_log(directory)
    if not heads:
        raise UnusableLog(f"{directory}: no signed tree head")
    latest = heads[-1]
    head = head or latest
    refusal = _head_refusal(head, key, len(payloads))
    if refusal is not None:
        return refusal
    leaves = [merkle.leaf_hash(p) for p in payloads]
    candidates = _receipt_candidates(payloads, head.tree_size, site, round_number, wanted)
    if not candidates:
        return InclusionResult(
            False,
            f"no update_accepted entry for site {site!r}, round {round_number}, update {wanted}"
            f"{'' if len(wanted) == 64 else '…'} among the {head.tree_size} entries the head covers",
            head=head,
        )
    ((update_sha256, found),) = candidates.items()
    path = merkle.inclusion_proof(found, leaves[: head.tree_size])
    if not merkle.verify_inclusion(leaves[found], found, head.tree_size, path, head.root_hash):
        return InclusionResult(
            False,
            f"the inclusion proof of entry {found} does not verify against the head's root: the log was altered",
            found,
            head,
            tuple(path),
        )
    consistency, consistent = _consistency(head, latest, leaves, len(payloads))
    if not consistent:
        return InclusionResult(
            False,
            "the log's latest head is not consistent with the saved head: the log was rewritten",
            found,
            head,
            tuple(path),
            consistency,
        )
    return InclusionResult(
        True,
        f"entry {found} (update {update_sha256}) is included in the tree of {head.tree_size} entries signed at "
        f"{head.timestamp}",
        found,
        head,
        tuple(path),
        consistency,
    )


# --- model delivery and the configuration bundle (aggregator.delivery, enclave.config_bundle) ---


def _on_config_bundle(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    """The bundle's digests are those of its listed files, and its ``config`` file is the
    aggregator.toml this run logged."""
    from enclave.config_bundle import BundledFile, ConfigBundle

    f, i = entry.fields, entry.index
    files = f["files"]
    if not isinstance(files, dict):
        raise TypeError("files is not a map")
    bundle = ConfigBundle(
        tuple(BundledFile(str(k), _text(v, "sha384"), _uint(v, "size")) for k, v in sorted(files.items()))
    )
    if bundle.sha256 != f.get("sha256") or bundle.sha384 != f.get("sha384"):
        result.add(Problem(i, "config_bundle.digest", "the bundle's digests are not those of the files it lists"))
    config = result.configs[-1].fields.get("aggregator_toml") if result.configs else None
    if isinstance(config, bytes) and files.get("config", {}).get("sha384") != hashlib.sha384(config).hexdigest():
        result.add(Problem(i, "config_bundle.config", "the bundle's aggregator.toml is not the one this run logged"))


def _on_model_initial(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    f = entry.fields
    digest = _text(f, "model_sha256")
    bytes.fromhex(digest)
    release = f["release"]
    if not isinstance(release, dict):
        raise TypeError("release is not a map")
    state.delivery = {"initial": digest, "release": release, "released": {}}
    result.models.update(initial_sha256=digest, release=release)


def _on_model_released(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    """A released model is the one the last closed round produced, for the recipients the policy names."""
    f, i = entry.fields, entry.index
    round_number, digest = _uint(f, "round"), _text(f, "model_sha256")
    last = state.training.last
    if last is None or last.round + 1 != round_number or last.model_sha256 != digest:
        result.add(
            Problem(
                i,
                "delivery.digest",
                f"the model released for round {round_number} ({digest[:16]}...) is not the model the last closed "
                "round produced",
            )
        )
    release = state.delivery.get("release")
    if release is None:
        result.add(Problem(i, "delivery.policy", "a model released with no model_initial entry (release policy)"))
        return
    allowed = set(release.get("owner_keys", []))
    for owner in f["owners"]:
        if _text(owner, "owner_key") not in allowed:
            result.add(
                Problem(i, "delivery.recipient", "a model sealed to an owner key the release policy does not name")
            )
    if bool(f.get("to_sites")) != ("admitted-sites" in release.get("to", [])):
        result.add(Problem(i, "delivery.recipient", "to_sites differs from the release policy"))
    state.delivery["released"][round_number] = digest
    result.models.setdefault("released", {})[str(round_number)] = digest
    if f.get("final"):
        result.models["final_sha256"] = digest


def _on_model_delivered(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    """A model went to an admitted site, released to sites, with the released digest."""
    f, i = entry.fields, entry.index
    site, round_number, digest = _text(f, "site"), _uint(f, "round"), _text(f, "model_sha256")
    if site not in state.admitted:
        result.add(Problem(i, "delivery.site", f"a model delivered to site {site!r}, which was not admitted"))
    release = state.delivery.get("release") or {}
    if "admitted-sites" not in release.get("to", []):
        result.add(Problem(i, "delivery.recipient", f"a model delivered to site {site!r}: the policy releases to none"))
    if state.delivery.get("released", {}).get(round_number) != digest:
        result.add(
            Problem(i, "delivery.digest", f"the model delivered for round {round_number} is not the released one")
        )


_HANDLERS.update(
    {
        "config_bundle": _on_config_bundle,
        "model_initial": _on_model_initial,
        "model_released": _on_model_released,
        "model_delivered": _on_model_delivered,
    }
)


# --- resumable uploads (issue 19; aggregator/resume.py) ----------------------------------------


def _parked(state: _RunState) -> dict[str, tuple[str, int, int, int, int]]:
    """Stream id -> (site, round, attempt, call, next index) of the uploads parked in this check run."""
    parked: dict[str, tuple[str, int, int, int, int]] = vars(state).setdefault("_parked_uploads", {})
    return parked


def _upload_stream(f: dict[str, Any]) -> tuple[str, str, int, int, int, int]:
    stream = _text(f, "stream")
    if not re.fullmatch(r"[0-9a-f]{32}", stream):
        raise ValueError("stream is not a 16-byte id in hex")
    return _text(f, "site"), stream, _uint(f, "round"), _uint(f, "attempt"), _uint(f, "call"), _uint(f, "index")


def _on_upload_parked(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    """An upload whose connection dropped was kept: its site was admitted, chunk 0 had arrived."""
    site, stream, round_number, attempt, call, index = _upload_stream(entry.fields)
    _uint(entry.fields, "bytes")
    if site not in state.admitted:
        result.add(Problem(entry.index, "resume.site", f"an upload of site {site!r} parked: it was not admitted"))
    if index < 1:
        result.add(Problem(entry.index, "resume.index", "an upload parked before its first chunk arrived"))
    _parked(state)[stream] = (site, round_number, attempt, call, index)


def _on_upload_resumed(result: Verification, entry: Entry, state: _RunState, keys: _Keys) -> None:
    """A resumed upload continues a stream parked for the same site, round, attempt and call, at
    the chunk where it was parked, in a later call."""
    site, stream, round_number, attempt, call, index = _upload_stream(entry.fields)
    resume_call = _uint(entry.fields, "resume_call")
    parked = _parked(state).pop(stream, None)
    if parked is None:
        result.add(Problem(entry.index, "resume.parked", f"site {site!r} resumed an upload that was not parked"))
    elif parked != (site, round_number, attempt, call, index):
        result.add(
            Problem(entry.index, "resume.stream", "an upload resumed as another site, round, call or chunk than parked")
        )
    if resume_call <= call:
        result.add(Problem(entry.index, "resume.call", "an upload resumed in a call that is not a later one"))


_HANDLERS.update({"upload_parked": _on_upload_parked, "upload_resumed": _on_upload_resumed})

"""``attestfl audit ...``: the auditor's and the sites' commands on an audit log directory.

Exit status: 0 valid or SIMULATED-valid (verify, report) or included (prove); 1 tampered,
inconsistent or not included; 2 unusable input (no log, unreadable policy or head file); 4
(verify, report) authentic but not trusted by your policy (:mod:`auditor.verdict`). With ``--json``
one JSON object is printed in every case (on exit 2: ``{"valid": null, "error": ...}``).
Every file these commands read must be a regular file under a size limit (a FIFO or a
device is refused, naming it); errors are one line, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from attestation.errors import EXIT_OK, EXIT_UNUSABLE, AttestflError, PolicyError
from attestation.errors import EXIT_REFUSED as EXIT_BAD
from attestation.policy import MAX_POLICY_BYTES, Policy

if TYPE_CHECKING:
    from protocol.auditlog.heads import TreeHead

MAX_HEAD_JSON_BYTES = 64 * 1024


class InputError(AttestflError):
    """A file given to an audit command cannot be used (the message names it)."""


def _add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``audit verify``: re-verify a log offline."""
    verify = sub.add_parser(
        "verify",
        help="re-verify an audit log offline",
        description="Recompute every leaf and tree head, check signatures, the aggregator's evidence "
        "(against --policy), re-run every admission, check rounds and receipts. "
        "Exit 0: valid (SIMULATED when your policy trusts the simulated TEE); 1: tampered or inconsistent "
        "(the first bad entry is named); 2: unusable input; 4: authentic, but your policy does not trust the "
        "aggregator's evidence (e.g. the simulated root).",
    )
    verify.add_argument("log_dir", metavar="LOGDIR")
    verify.add_argument(
        "--policy",
        metavar="FILE",
        help="attestation policy for the aggregator's evidence "
        "(default: real vendor roots only; pass trusted_simulated_roots for the simulated TEE)",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(handler=run_verify)


def _add_show(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``audit show``: the entries decoded."""
    show = sub.add_parser(
        "show",
        help="list the log's entries decoded; admissions with the site evidence and policy behind them",
        description="Verify the log, print the verdict, then every entry decoded (no CBOR to read). An admission "
        "shows the site's evidence as the offline re-run appraised it (platform, measurement, TCB, chip id or PPID, "
        "evidence digest, identity key fingerprint, session keys) and the admission policy in force (the attestation "
        "policy file's text, the site's rule). Exit status as for verify.",
    )
    show.add_argument("log_dir", metavar="LOGDIR")
    show.add_argument(
        "--kind", action="append", metavar="KIND", help="only entries of this kind (admission, round, ...); repeatable"
    )
    show.add_argument("--policy", metavar="FILE", help="as for verify")
    show.add_argument(
        "--json", action="store_true", help="JSON lines: one object per entry (the verdict goes to stderr)"
    )
    show.set_defaults(handler=run_show)


def _add_prove(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``audit prove``: a site's receipt's inclusion (and consistency) proof."""
    prove = sub.add_parser(
        "prove",
        help="prove a site's update receipt is in the log",
        description="Find the update_accepted entry of (site, round, digest) and verify its RFC 9162 "
        "inclusion proof against a signed tree head (the latest, or --head FILE the site saved; then the "
        "latest head must also be consistent with it). Exit 0: included; 1: not included; 2: unusable input.",
    )
    prove.add_argument("log_dir", metavar="LOGDIR")
    prove.add_argument("--site", required=True)
    prove.add_argument("--round", required=True, type=int)
    prove.add_argument(
        "--update-sha256",
        required=True,
        metavar="HEX",
        help="the update's SHA-256: all 64 hex digits, or a prefix (e.g. the 12 a site is shown) that names "
        "exactly one of the site's accepted updates in that round",
    )
    prove.add_argument("--head", metavar="FILE", help="a signed tree head (JSON, as `attestfl audit head` prints)")
    prove.add_argument(
        "--key", metavar="HEX", help="the aggregator Ed25519 key the site attested: the head must be signed by it"
    )
    prove.add_argument("--json", action="store_true")
    prove.set_defaults(handler=run_prove)


def _add_head(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``audit head``: the latest signed tree head, for a site to keep."""
    head = sub.add_parser("head", help="print the latest signed tree head (JSON), for a site to keep")
    head.add_argument("log_dir", metavar="LOGDIR")
    head.set_defaults(handler=run_head)


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``audit report``: the self-contained HTML report."""
    report = sub.add_parser(
        "report",
        help="write a self-contained HTML report",
        description="Verify the log and write one HTML page (no external assets): verdict, the "
        "aggregator's measurement and TCB, admissions with their evidence, the policy, charts, timeline. Exit "
        "status as for verify (0 valid or SIMULATED, 1 tampered, 4 not trusted by your policy; the report says "
        "which); 2: unusable input.",
    )
    report.add_argument("log_dir", metavar="LOGDIR")
    report.add_argument("-o", "--output", required=True, metavar="FILE")
    report.add_argument("--policy", metavar="FILE", help="as for verify")
    report.set_defaults(handler=run_report)


def add_audit_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="verify, prove against and report on a tamper-evident audit log",
        description="The auditor's tools for the aggregator's audit log (docs/auditors.md).",
    )
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    _add_verify(sub)
    _add_show(sub)
    _add_prove(sub)
    _add_head(sub)
    _add_report(sub)
    _add_tree(sub)


def _read_input(path: str, limit: int, what: str) -> bytes:
    from protocol.auditlog.format import read_regular_file

    try:
        return read_regular_file(path, limit, what)  # AuditFileError (an AttestflError): not a regular file, too large
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None


def _policy(path: str | None) -> Policy:
    if path is None:
        return Policy()
    data = _read_input(path, MAX_POLICY_BYTES, "policy file")
    try:
        return Policy.from_toml(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"policy file {path} is not UTF-8 text") from None
    except PolicyError as exc:
        raise InputError(f"policy file {path}: {exc}") from None


def _head_file(path: str) -> TreeHead:
    from protocol.auditlog.heads import TreeHead

    data = _read_input(path, MAX_HEAD_JSON_BYTES, "tree head file")
    try:
        return TreeHead.from_map(json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise InputError(f"tree head file {path}: not a tree head ({type(exc).__name__}: {str(exc)[:200]})") from None


def _fail(args: argparse.Namespace, message: str, err: TextIO, out: TextIO) -> int:
    message = " ".join(message.split())  # one line
    if getattr(args, "json", False):
        print(json.dumps({"valid": None, "log": str(args.log_dir), "error": message}), file=out)
    print(f"attestfl: error: {message}", file=err)
    return EXIT_UNUSABLE


AuditCommand = Callable[[argparse.Namespace, TextIO, TextIO], int]


def _audit_command(command: AuditCommand) -> Callable[..., int]:
    """An audit command whose unusable input still ends in one line, and with ``--json`` in one
    JSON object (``{"valid": null, "error": ...}``, exit 2), whatever went wrong."""

    @functools.wraps(command)
    def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
        out, err = out or sys.stdout, err or sys.stderr
        try:
            return command(args, out, err)
        except (AttestflError, OSError) as exc:  # UnusableLog, InputError, AuditFileError; a file that cannot be read
            return _fail(args, str(exc), err, out)
        except Exception as exc:  # noqa: BLE001 - a verifier bug is reported in one line (and JSON), never a traceback
            return _fail(args, f"internal error while verifying: {type(exc).__name__}: {exc}", err, out)

    return run


@_audit_command
def run_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from auditor.verdict import exit_code, headline
    from auditor.verify import verify_log

    result = verify_log(args.log_dir, _policy(args.policy))
    if args.json:
        print(json.dumps(result.to_json()), file=out)
    else:
        print(headline(result), file=out)
        if result.verdict == "invalid":
            first = result.first_tampering or result.first_problem
            for problem in [p for p in result.problems if p is not first][:19]:
                print(f"  also {problem}", file=out)
    for warning in result.warnings:
        print(f"attestfl: warning: {warning}", file=err)
    return exit_code(result)


@_audit_command
def run_show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from auditor.show import render_text, views
    from auditor.verdict import exit_code, headline
    from auditor.verify import verify_log

    result = verify_log(args.log_dir, _policy(args.policy))
    kinds = frozenset(args.kind) if args.kind else None
    if args.json:
        for view in views(result, kinds):
            print(json.dumps(view), file=out)
        print(f"attestfl: {headline(result)}", file=err)
    else:
        print(headline(result), file=out)
        if result.verdict == "invalid":
            print("  the entries below are as the log holds them: do not rely on them", file=out)
        shown: set[str] = set()
        for view in views(result, kinds):
            print(render_text(view, shown), file=out)
    for warning in result.warnings:
        print(f"attestfl: warning: {warning}", file=err)
    return exit_code(result)


@_audit_command
def run_prove(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from auditor.verify import prove_receipt

    head = _head_file(args.head) if args.head else None
    try:
        key = bytes.fromhex(args.key) if args.key else None
    except ValueError:
        raise InputError(f"--key {args.key[:80]!r} is not hex") from None
    result = prove_receipt(
        args.log_dir, site=args.site, round_number=args.round, update_sha256=args.update_sha256, head=head, key=key
    )
    print(
        json.dumps(result.to_json())
        if args.json
        else ("included: " if result.included else "NOT INCLUDED: ") + result.message,
        file=out,
    )
    return EXIT_OK if result.included else EXIT_BAD


@_audit_command
def run_head(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from auditor.verify import read_log

    _, heads, _, _, _ = read_log(args.log_dir)
    if not heads:
        raise InputError(f"{args.log_dir}: no signed tree head")
    print(json.dumps(heads[-1].to_json()), file=out)
    return EXIT_OK


@_audit_command
def run_report(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from auditor.report import render_report
    from auditor.verdict import HEADLINES, exit_code
    from auditor.verify import verify_log

    result = verify_log(args.log_dir, _policy(args.policy))
    policy_text = None
    if args.policy is not None:
        policy_text = _read_input(args.policy, MAX_POLICY_BYTES, "policy file").decode("utf-8", errors="replace")
    try:
        page = render_report(result, policy_file=args.policy, policy_text=policy_text)
        Path(args.output).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the report {args.output}: {exc.strerror or exc}") from None
    print(f"{HEADLINES[result.verdict]}: report written to {args.output}", file=out)
    return exit_code(result)


def _add_tree(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``audit tree``: a hierarchical federation's logs together (auditor/tree.py)."""
    tree = sub.add_parser(
        "tree",
        help="verify a hierarchical federation: the root's log, each leaf's, and the links between them",
        description="Verify the root aggregator's log and each leaf's (as verify does), then that every partial "
        "aggregate a leaf forwarded is an update the root accepted from it under a receipt signed by the root's "
        "key, with the weight of the leaf's participants, that each leaf took the model the root committed, and "
        "that the root admitted only these leaves (docs/hierarchy.md). Exit 0: valid; 1: a log or a link fails; "
        "2: unusable input.",
    )
    tree.add_argument("log_dir", metavar="ROOT_LOGDIR")
    tree.add_argument("leaves", nargs="+", metavar="LEAF_LOGDIR")
    tree.add_argument("--policy", metavar="FILE", help="as for verify (applied to every log)")
    tree.add_argument("--json", action="store_true", help="print one JSON object")
    tree.set_defaults(handler=run_tree)


@_audit_command
def run_tree(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from auditor.tree import verify_tree

    result = verify_tree(args.log_dir, list(args.leaves), _policy(args.policy))
    if args.json:
        print(json.dumps(result.to_json()), file=out)
    else:
        print(
            f"{'VALID' if result.valid else 'INVALID'}: root and {len(result.leaves)} leaf log(s); "
            f"{len(result.problems)} problem(s) between the levels",
            file=out,
        )
        for log in (result.root, *result.leaves):
            if not log.valid:
                print(f"  {log.directory}: {log.first_problem}", file=out)
        for problem in result.problems[:20]:
            print(f"  {problem}", file=out)
    return 0 if result.valid else 1

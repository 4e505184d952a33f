"""``attestfl evidence verify``: verify evidence and appraise it against a policy.

Exit status: 0 authentic and accepted; 1 rejected; 2 unusable input or usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from .appraise import MAX_EVIDENCE_BYTES
from .collateral import CollateralFetcher, CollateralStore, FetchConfig
from .errors import AttestationError, EvidenceTooLargeError
from .evidence import appraise_evidence
from .files import read_bounded as _read_bounded
from .findings import Appraisal
from .platforms import registry
from .platforms.base import EvidenceInputs
from .policy import Policy
from .timeutil import parse_time, utcnow

EXIT_ACCEPTED, EXIT_REJECTED, EXIT_UNUSABLE = 0, 1, 2


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    """Read a file, refusing one larger than ``limit`` without reading it whole."""
    return _read_bounded(path, limit, what, AttestationError, EvidenceTooLargeError)


def parse_nonce(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError as exc:
        raise AttestationError(f"--nonce is not hex: {text!r}") from exc


def add_evidence_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evidence = subparsers.add_parser("evidence", help="verify attestation evidence")
    evidence_sub = evidence.add_subparsers(dest="evidence_command", required=True, metavar="COMMAND")
    verify = evidence_sub.add_parser(
        "verify",
        help="verify evidence of any registered platform (SEV-SNP report, TDX quote, NVIDIA GPU evidence, ...) "
        "and appraise it",
        description="Verify evidence (platform detected from the bytes) and appraise it against a policy. "
        "Exit 0: accepted; 1: rejected; 2: unusable input or usage.",
    )
    verify.add_argument(
        "file",
        nargs="?",
        help="raw evidence (SNP report, TDX quote, GPU evidence in hex or binary, ...) or evidence bundle",
    )
    verify.add_argument(
        "--example",
        action="store_true",
        help="verify the shipped example: a real AMD Milan SEV-SNP report and its VCEK, as of "
        f"{EXAMPLE_AT}, under the shipped example policy (FILE, --cert, --at and --policy may override)",
    )
    verify.add_argument(
        "--cert",
        action="append",
        default=[],
        metavar="FILE",
        help="VCEK/VLEK (DER or PEM) or GPU certificate chain (PEM) when the evidence does not carry it; repeatable",
    )
    _add_collateral_options(verify.add_argument_group("collateral"))
    verify.add_argument(
        "--policy", metavar="FILE", help="policy TOML (default: authenticity required, debug forbidden)"
    )
    verify.add_argument("--at", metavar="TIME", help="verify as of this ISO-8601 time (default: now)")
    verify.add_argument(
        "--platform",
        default="auto",
        metavar="NAME",
        help="platform of the evidence: auto (detected from the bytes, the default) or a registered platform's name "
        "(`attestfl evidence platforms` lists them)",
    )
    verify.add_argument(
        "--nonce", metavar="HEX", help="the nonce you chose (freshness of GPU evidence and of evidence bundles)"
    )
    verify.add_argument("--json", action="store_true", help="print exactly one JSON object")
    verify.set_defaults(handler=run_verify)
    _add_platforms_command(evidence_sub)


def _add_collateral_options(group: argparse._ArgumentGroup) -> None:
    """Where ``evidence verify`` takes collateral from: beside the evidence, or the verifier's cache."""
    group.add_argument(
        "--collateral",
        metavar="DIR",
        help="directory of collateral files given beside the evidence, named as its "
        "platform documents (TDX: Intel collateral; SEV-SNP: amd-crl.der; see docs/attestation.md)",
    )
    group.add_argument(
        "--collateral-dir",
        metavar="CACHE_DIR",
        help="the verifier's collateral cache (AMD CRLs and VCEKs, Intel TCB info, QE identity, CRLs; layout in "
        "docs/attestation.md): collateral comes from there, never from an evidence bundle",
    )
    group.add_argument(
        "--fetch-collateral",
        action="store_true",
        help="with --collateral-dir: fetch missing or stale collateral from AMD KDS and Intel PCS into the cache",
    )
    group.add_argument(
        "--amd-kds-url", metavar="URL", help="AMD KDS base URL for --fetch-collateral (default https://kdsintf.amd.com)"
    )
    group.add_argument(
        "--intel-pcs-url",
        metavar="URL",
        help="Intel PCS base URL for --fetch-collateral (default https://api.trustedservices.intel.com)",
    )
    group.add_argument("--intel-root-crl-url", metavar="URL", help="Intel SGX Root CA CRL URL for --fetch-collateral")
    group.add_argument(
        "--collateral-service",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="for --fetch-collateral: the base URL of a platform plug-in's collateral service (as the plug-in "
        "documents its NAME); repeatable",
    )
    group.add_argument(
        "--crl", metavar="FILE", help="a CRL given beside the evidence, DER or PEM (SEV-SNP: the AMD CRL)"
    )


def _add_platforms_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = subparsers.add_parser(
        "platforms",
        help="list the registered platforms (built-in and from the attestfl.platforms entry points)",
        description="List the platforms this verifier knows: name, vendor, what their evidence is, "
        "and whether a policy accepts them by default (the built-in ones). "
        "Exit 0; 2 when a platform plug-in cannot be loaded.",
    )
    listing.add_argument("--json", action="store_true", help="print exactly one JSON object")
    listing.set_defaults(handler=run_platforms)


EXAMPLE_AT = "2024-01-01T00:00:00Z"


def _apply_example(args: argparse.Namespace) -> None:
    """Fill in the shipped example's evidence, certificate, time and policy where not given."""
    from importlib import resources

    examples = resources.files("attestation").joinpath("examples")
    args.file = args.file or str(examples.joinpath("milan-report-v2.bin"))
    args.cert = args.cert or [str(examples.joinpath("milan-report-v2.vcek.der"))]
    args.at = args.at or EXAMPLE_AT
    args.policy = args.policy or str(examples.joinpath("milan-example-policy.toml"))


def _service_url(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise AttestationError(f"--collateral-service {text!r}: expected NAME=URL")
    return name, url


def _collateral_store(args: argparse.Namespace) -> CollateralStore | None:
    urls = {
        "amd_base_url": args.amd_kds_url,
        "intel_base_url": args.intel_pcs_url,
        "intel_root_ca_crl_url": args.intel_root_crl_url,
    }
    given: dict[str, Any] = {name: url for name, url in urls.items() if url}
    services = dict(_service_url(text) for text in args.collateral_service)
    if services:
        given["service_urls"] = services
    if not args.collateral_dir:
        if args.fetch_collateral or given:
            raise AttestationError("--fetch-collateral and the collateral service URLs need --collateral-dir")
        return None
    if args.collateral or args.crl:
        raise AttestationError("--collateral-dir supplies all collateral: do not give --collateral or --crl with it")
    fetcher = CollateralFetcher(FetchConfig(**given)) if args.fetch_collateral or given else None
    return CollateralStore(args.collateral_dir, fetcher=fetcher)


def _load_inputs(args: argparse.Namespace) -> EvidenceInputs:
    certificates = tuple(read_bounded(p, MAX_EVIDENCE_BYTES, "certificate file") for p in args.cert)
    if args.collateral and not Path(args.collateral).is_dir():
        raise AttestationError(f"{args.collateral}: not a directory of collateral files")
    crl = read_bounded(args.crl, MAX_EVIDENCE_BYTES, "CRL file") if args.crl else None
    return EvidenceInputs(
        certificates=certificates,
        crl=crl,
        collateral_dir=Path(args.collateral) if args.collateral else None,
        nonce=parse_nonce(args.nonce),
    )


def run_platforms(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        builtin = set(registry.builtin_names())
        rows = [
            {
                "name": p.name,
                "vendor": p.roots.vendor,
                "evidence": p.description,
                "cpu": p.binds_report_data,
                "policy_section": p.policy_key,
                "default": p.name in builtin,
                "module": type(p).__module__,
            }
            for p in registry.platforms()
        ]
    except AttestationError as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    if args.json:
        print(json.dumps({"platforms": rows}), file=out)
    else:
        for row in rows:
            default = "" if row["default"] else "  (accepted only by a policy that names it)"
            print(
                f"{row['name']:<12} {row['vendor']:<8} {row['evidence']}  [{row['policy_section']}]{default}", file=out
            )
    return EXIT_ACCEPTED


def run_verify(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    if args.example:
        _apply_example(args)
    elif not args.file:
        print("attestfl: error: FILE is required (or --example for the shipped example)", file=err)
        return EXIT_UNUSABLE
    try:
        at = parse_time(args.at) if args.at else utcnow()
        policy = Policy.load(args.policy) if args.policy else Policy()
        data = read_bounded(args.file, MAX_EVIDENCE_BYTES, "evidence file")
        inputs = _load_inputs(args)
        store = _collateral_store(args)
        appraisal = appraise_evidence(
            data, policy=policy, at=at, inputs=inputs, platform=args.platform, collateral=store
        )
    except AttestationError as exc:
        if args.json:
            print(json.dumps({"accepted": False, "error": str(exc)}), file=out)
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    if args.json:
        print(json.dumps(appraisal.to_json_dict(), sort_keys=False), file=out)
    else:
        print(render_appraisal(appraisal, at=at.isoformat()), file=out)
    return EXIT_ACCEPTED if appraisal.accepted else EXIT_REJECTED


def _render_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def render_appraisal(appraisal: Appraisal, *, at: str) -> str:
    simulated = appraisal.claims.get("simulated")
    head = "ACCEPTED" if appraisal.accepted else "REJECTED"
    lines = [f"{head}: {appraisal.platform} evidence{' (SIMULATED TEE)' if simulated else ''}, verified as of {at}"]
    if appraisal.reasons:
        lines.append(f"{len(appraisal.reasons)} failed check(s):")
        lines.extend(f"  - {reason}" for reason in appraisal.reasons)
    for warning in appraisal.warnings:
        lines.append(f"warning: {warning}")
    if appraisal.claims:
        lines.append("claims:")
        width = max(len(k) for k in appraisal.claims)
        lines.extend(
            f"  {key.ljust(width)}  {_render_value(value)}"
            for key, value in appraisal.claims.items()
            if key != "measurements"
        )
        if "measurements" in appraisal.claims:
            lines.append(
                f"  {'measurements'.ljust(width)}  {len(appraisal.claims['measurements'])} indices (see --json)"
            )
    return "\n".join(lines)

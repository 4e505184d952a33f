"""``attestfl site verify --config site.toml [--json]``: check the aggregator by hand.

Asks the aggregator for its evidence with a fresh nonce, appraises it under the site's policy
(the ``policy`` file of ``site.toml``) and prints the claims: platform, launch measurement, TCB,
debug, the enclave keys the evidence binds — and SIMULATED, loudly, when the evidence comes
from the simulated TEE. Nothing else is sent: no challenge, no evidence of the site, no join
(the site needs no identity key for this).

Exit status (attestation.errors): 0 the aggregator passes the policy; 1 it does not (every
failed check listed); 2 unusable configuration; 3 the aggregator is unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from attestation.errors import EXIT_OK, EXIT_REFUSED

#: The claims printed first, in this order (the rest follow, sorted); the text output shows only these.
SHOWN = (
    "platform",
    "simulated",
    "measurement",
    "debug",
    "tcb_status",
    "reported_tcb",
    "host_data",
    "mr_config_id",
    "signing_key",
    "product",
)
SIMULATED_BANNER = (
    "*** SIMULATED TEE: this evidence comes from attestfl's software-simulated TEE, signed by a simulated vendor "
    "root. It proves NOTHING about hardware isolation: development and testing only. ***"
)


def add_verify_command(site_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verify = site_sub.add_parser(
        "verify",
        help="fetch the aggregator's evidence, appraise it under the site's policy, print its claims (no join)",
        description="Ask the aggregator for its evidence with a fresh nonce and appraise it under the "
        "site's policy; print the claims (platform, measurement, TCB, debug, keys). Sends nothing else. "
        "Exit 0: trusted; 1: refused by the policy; 2: unusable configuration; 3: aggregator unreachable.",
    )
    verify.add_argument("--config", required=True, metavar="FILE", help="site.toml")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="wait this long for an answer (default 10)"
    )
    verify.set_defaults(handler=run_site_verify)


def _claims(claims: dict[str, Any]) -> dict[str, Any]:
    ordered = {key: claims[key] for key in SHOWN if key in claims}
    ordered.update({key: claims[key] for key in sorted(claims) if key not in ordered})
    return ordered


def verify_aggregator(target: str, policy: Any, timeout: float) -> dict[str, Any]:
    """The verdict on the aggregator at ``target`` as one JSON-ready object (raises
    AggregatorUnreachable / AggregatorNotTrusted when there is no evidence to appraise)."""
    import grpc

    from fedsite.client import CHANNEL_OPTIONS, fetch_aggregator_evidence
    from protocol.wire import federation_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        bundle, appraisal, digest = fetch_aggregator_evidence(pb_grpc.FederationStub(channel), policy, timeout)
    claims = _claims(appraisal.claims)
    return {
        "aggregator": target,
        "trusted": appraisal.accepted,
        "simulated": bool(claims.get("simulated")),
        "platform": appraisal.platform,
        "claims": claims,
        "keys": {"x25519": bundle.keys.x25519.hex(), "ed25519": bundle.keys.ed25519.hex()},
        "gpu": bundle.gpu is not None,
        "evidence_sha256": digest.hex(),
        "reasons": [str(r) for r in appraisal.reasons],
        "warnings": list(appraisal.warnings),
    }


def _text(result: dict[str, Any]) -> str:
    lines = []
    if result["simulated"]:
        lines.append(SIMULATED_BANNER)
    verdict = "TRUSTED (passes this site's policy)" if result["trusted"] else "REFUSED by this site's policy"
    lines.append(f"aggregator {result['aggregator']}: {verdict}")
    shown = {key: value for key, value in result["claims"].items() if key in SHOWN and value is not None}
    shown.update(result["keys"])
    shown["evidence"] = f"sha256 {result['evidence_sha256']}"
    for key, value in shown.items():
        text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
        lines.append(f"  {key:<13} {text}")
    lines.append(f"  (every claim: {len(result['claims'])} in all, with --json)")
    lines += [f"  warning: {w}" for w in result["warnings"]]
    lines += [f"  - {r}" for r in result["reasons"]]
    if result["simulated"]:
        lines.append("SIMULATED: never pin a simulated root or measurement in production.")
    return "\n".join(lines)


def run_site_verify(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from fedsite.client import AggregatorNotTrusted, AggregatorUnreachable
    from fedsite.config import SiteConfig

    out, err = out or sys.stdout, err or sys.stderr
    config = SiteConfig.load(args.config)
    try:
        result = verify_aggregator(config.aggregator, config.policy, args.timeout)
    except AggregatorUnreachable as exc:  # exit 3: nobody answered; not a verdict on the aggregator
        raise AggregatorUnreachable(f"cannot reach the aggregator at {config.aggregator}: {exc}") from None
    except AggregatorNotTrusted as exc:
        if args.json:
            print(json.dumps({"aggregator": config.aggregator, "trusted": False, "error": str(exc)}), file=out)
        print(f"attestfl: {exc}", file=err)
        return EXIT_REFUSED
    print(json.dumps(result, default=str) if args.json else _text(result), file=out)
    if result["simulated"] and args.json:
        print(SIMULATED_BANNER, file=err)
    return EXIT_OK if result["trusted"] else EXIT_REFUSED

"""``attestfl serve`` and ``attestfl site ...``: the operator's and the sites' commands.

Exit status: 0 done; 1 refused (the aggregator failed the site's policy, or the site was
not admitted); 2 unusable configuration or input.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TextIO

from attestation.errors import AttestationError

EXIT_OK, EXIT_REFUSED, EXIT_UNUSABLE = 0, 1, 2


def add_service_commands(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the attested aggregator",
                                  description="Run the aggregator: gRPC federation service, admission, rounds. "
                                  "Prints one JSON line when ready; logs JSON lines on stderr.")
    serve.add_argument("--config", required=True, metavar="FILE", help="aggregator.toml")
    serve.set_defaults(handler=run_serve)

    site = subparsers.add_parser("site", help="join an aggregator as a site")
    site_sub = site.add_subparsers(dest="site_command", required=True, metavar="COMMAND")
    join = site_sub.add_parser("join", help="verify the aggregator, join, print the session",
                               description="Verify the aggregator's evidence against the site's policy, then present "
                               "this site's evidence. Exit 0: admitted; 1: aggregator untrusted or site refused; 2: unusable input.")
    join.add_argument("--config", required=True, metavar="FILE", help="site.toml")
    join.add_argument("--json", action="store_true", help="print one JSON object")
    join.set_defaults(handler=run_site_join)


def run_serve(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from .config import AggregatorConfig, ConfigError
    from .server import configure_logging, serve

    err = err or sys.stderr
    try:
        config = AggregatorConfig.load(args.config)
    except (ConfigError, AttestationError, OSError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    configure_logging()
    from .audit.log import AuditLogError

    try:
        asyncio.run(serve(config))
    except (AttestationError, AuditLogError, OSError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    return EXIT_OK


def site_attester(config: "SiteConfig"):  # noqa: ANN201, F821
    from enclave.attester import detect_attester

    if config.tee in ("simulated-snp", "simulated-tdx"):
        from enclave.simulated.attester import SimulatedSnpAttester, SimulatedTdxAttester

        if config.simulated_dir is None:
            raise AttestationError("[site] simulated_dir: required for a simulated TEE")
        cls = SimulatedSnpAttester if config.tee == "simulated-snp" else SimulatedTdxAttester
        return cls(config.simulated_dir)
    return detect_attester(tee=config.tee)


def run_site_join(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from enclave.attester import AttesterError

    from .config import ConfigError, SiteConfig
    from .site import AdmissionRefused, AggregatorNotTrusted, SiteClient

    out, err = out or sys.stdout, err or sys.stderr
    try:
        config = SiteConfig.load(args.config)
        attester = site_attester(config)
    except (ConfigError, AttestationError, AttesterError, OSError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    with SiteClient(config.aggregator, site_id=config.site_id, policy=config.policy, attester=attester) as client:
        try:
            session = client.join()
        except (AggregatorNotTrusted, AdmissionRefused) as exc:
            if args.json:
                print(json.dumps({"admitted": False, "error": str(exc).splitlines()[0], "reasons": list(exc.reasons)}), file=out)
            print(f"attestfl: {exc}", file=err)
            return EXIT_REFUSED
        except Exception as exc:  # grpc errors: unreachable aggregator, deadlines
            print(f"attestfl: error: cannot reach the aggregator at {config.aggregator}: {exc}", file=err)
            return EXIT_UNUSABLE
    result = {"admitted": True, "site": config.site_id, "session": session.claims.session_id.hex(),
              "status": session.claims.status, "expires": session.claims.expires.isoformat(),
              "aggregator": {k: session.aggregator_appraisal.claims.get(k) for k in ("measurement", "mr_td", "simulated", "debug")
                             if k in session.aggregator_appraisal.claims}}
    print(json.dumps(result) if args.json else f"admitted: session {result['session']} ({result['status']}), expires {result['expires']}", file=out)
    return EXIT_OK

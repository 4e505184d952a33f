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

    run = site_sub.add_parser("run", help="take part in training: verify, join, train every round",
                              description="Verify the aggregator, join, then for every round download the sealed global model, "
                              "evaluate it on held-out data, train locally and upload the sealed update. The trainer is "
                              "[data] trainer = \"module:function\", called with the [data] table and the config's directory and "
                              "returning an aggregator.sdk.TorchTrainer. Exit 0: training finished; 1: refused; 2: unusable input.")
    run.add_argument("--config", required=True, metavar="FILE", help="site.toml")
    run.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    run.add_argument("--json", action="store_true", help="print one JSON summary object")
    run.set_defaults(handler=run_site_run)


def run_serve(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from enclave.sealing import SealingError

    from .audit.log import AuditLogError
    from .checkpoint import CheckpointError
    from .config import AggregatorConfig, ConfigError
    from .server import configure_logging, serve

    err = err or sys.stderr
    try:
        config = AggregatorConfig.load(args.config)
    except (ConfigError, AttestationError, OSError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    configure_logging()
    try:
        asyncio.run(serve(config))
    except (AttestationError, AuditLogError, OSError, CheckpointError, SealingError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    return EXIT_OK


def site_attester(config: "SiteConfig"):  # noqa: ANN201, F821
    from enclave.attester import open_attester

    return open_attester(config.tee, simulated_dir=config.simulated_dir, measurement=config.simulated_measurement)


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


def load_trainer(config: "SiteConfig"):  # noqa: ANN201, F821
    import importlib

    spec = str(config.data.get("trainer", ""))
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise AttestationError('[data] trainer: expected "module:function" returning an aggregator.sdk.TorchTrainer')
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise AttestationError(f"[data] trainer: cannot load {spec}: {exc}") from exc
    return factory(config.data, config.path.parent)


def run_site_run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from enclave.attester import AttesterError

    from .config import ConfigError, SiteConfig
    from .sdk import run_site
    from .site import AdmissionRefused, AggregatorNotTrusted, SiteClient

    out, err = out or sys.stdout, err or sys.stderr
    try:
        config = SiteConfig.load(args.config)
        attester = site_attester(config)
        trainer = load_trainer(config)
    except (ConfigError, AttestationError, AttesterError, OSError, KeyError, ValueError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    with SiteClient(config.aggregator, site_id=config.site_id, policy=config.policy, attester=attester) as client:
        try:
            summary = run_site(client, trainer, progress=None if args.quiet else err)
        except (AggregatorNotTrusted, AdmissionRefused) as exc:
            print(f"attestfl: {exc}", file=err)
            if args.json:
                print(json.dumps({"finished": False, "error": str(exc).splitlines()[0], "reasons": list(exc.reasons)}), file=out)
            return EXIT_REFUSED
        except Exception as exc:  # grpc errors after retries: unreachable aggregator, deadlines
            print(f"attestfl: error: training stopped: {type(exc).__name__}: {exc}", file=err)
            return EXIT_UNUSABLE
    result = {"finished": True, "site": summary.site_id, "rounds_trained": summary.rounds_trained, "joins": summary.joins,
              "metrics": {str(k): v for k, v in summary.metrics.items()}}
    print(json.dumps(result) if args.json else f"{summary.site_id}: trained rounds {summary.rounds_trained}, final metrics "
          f"{summary.metrics.get(max(summary.metrics), {}) if summary.metrics else {}}", file=out)
    return EXIT_OK

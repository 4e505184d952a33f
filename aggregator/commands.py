"""``attestfl serve``: the operator's command.

Exit status: 0 done; 1 refused (the aggregator failed the site's policy, or the site was
not admitted); 2 unusable configuration or input; 3 ``serve`` stopped on a fault (the audit
log could not be written): fix it and start again.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from attestation.errors import AttestationError

EXIT_OK, EXIT_REFUSED, EXIT_UNUSABLE = 0, 1, 2


def add_serve_command(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the attested aggregator",
                                  description="Run the aggregator: gRPC federation service, admission, rounds. "
                                  "Prints one JSON line when ready; logs JSON lines on stderr.")
    serve.add_argument("--config", required=True, metavar="FILE", help="aggregator.toml")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from enclave.sealing import SealingError

    from aggregator.audit.log import AuditLogError
    from aggregator.checkpoint import CheckpointError
    from aggregator.config import AggregatorConfig, ConfigError
    from aggregator.server import configure_logging, serve

    err = err or sys.stderr
    try:
        config = AggregatorConfig.load(args.config)
    except (ConfigError, AttestationError, OSError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    configure_logging()
    try:
        status = asyncio.run(serve(config))
    except (AttestationError, AuditLogError, OSError, CheckpointError, SealingError) as exc:
        print(f"attestfl: error: {exc}", file=err)
        return EXIT_UNUSABLE
    if status:
        print("attestfl: error: the aggregator stopped on a fault (see the log); nothing was applied without its audit "
              "entry. Fix the cause (e.g. free disk space) and start it again: it recovers the log and resumes.", file=err)
    return status

"""The ``attestfl`` console script: one parser, subcommands contributed by each package."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from attestation.cli import add_evidence_commands
from attestation.reference_values import add_reference_values_commands
from enclave.cli import add_enclave_commands

from auditor.cli import add_audit_commands
from aggregator.commands import add_serve_command
from fedsite.commands import add_site_commands
from attestfl.demo import add_demo_command
from attestfl.model import add_model_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attestfl",
        description="Confidential-computing runtime for federated learning: attested aggregators, verified sites.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_evidence_commands(subparsers)
    add_enclave_commands(subparsers)
    add_serve_command(subparsers)
    add_site_commands(subparsers)
    add_reference_values_commands(subparsers)
    add_audit_commands(subparsers)
    add_demo_command(subparsers)
    add_model_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("attestfl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # fail closed: never a traceback, never exit 0
        if os.environ.get("ATTESTFL_DEBUG"):
            raise
        print(f"attestfl: internal error ({type(exc).__name__}: {exc}); nothing was accepted. "
              "Set ATTESTFL_DEBUG=1 for a traceback and please report it.", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

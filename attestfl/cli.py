"""The ``attestfl`` console script: one parser, subcommands contributed by each package.

Errors are caught here, once: an :class:`~attestation.errors.AttestflError` ends the command
with its one-line reason and its ``exit_code`` (1 refused, 2 unusable input, 3 a fault); an
``OSError`` (a file or address that cannot be used) with exit 2; anything else is a bug,
reported in one line ("internal error ... nothing was accepted", exit 2) and never as a
traceback unless ``ATTESTFL_DEBUG=1``. A handler catches an error itself only where its
command prints more than that line (a refusal's reasons, a JSON object).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from aggregator.commands import add_serve_command
from attestation.cli import add_evidence_commands
from attestation.errors import EXIT_UNUSABLE, AttestflError
from attestation.reference_values import add_reference_values_commands
from attestfl.configtool import add_config_commands
from attestfl.demo import add_demo_command
from attestfl.federation import add_federation_commands
from attestfl.hierarchy import add_leaf_commands
from attestfl.model import add_model_commands
from attestfl.owner import add_owner_commands
from attestfl.scaffold import add_new_commands
from attestfl.vendor import add_vendor_commands
from auditor.cli import add_audit_commands
from enclave.cli import add_enclave_commands
from fedsite.commands import add_site_commands

#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


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
    add_vendor_commands(subparsers)
    add_owner_commands(subparsers)
    add_config_commands(subparsers)
    add_new_commands(subparsers)
    add_federation_commands(subparsers)
    add_leaf_commands(subparsers)  # `attestfl leaf enroll`; `attestfl serve` of a leaf's file ([parent])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("attestfl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except AttestflError as exc:
        print(f"attestfl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a file, directory or address that cannot be used
        print(f"attestfl: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except Exception as exc:
        if os.environ.get("ATTESTFL_DEBUG"):
            raise
        print(
            f"attestfl: internal error ({type(exc).__name__}: {exc}); nothing was accepted. "
            "Set ATTESTFL_DEBUG=1 for a traceback and please report it.",
            file=sys.stderr,
        )
        return EXIT_UNUSABLE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

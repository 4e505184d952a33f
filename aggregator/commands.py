"""``attestfl serve``: the operator's command.

Exit status: 0 done; 1 refused (the aggregator failed the site's policy, or the site was
not admitted); 2 unusable configuration or input, or the ``aggregator`` extra not installed;
3 ``serve`` stopped on a fault (the audit log could not be written): fix it and start again.
Errors end the command in ``attestfl.cli.main`` (one line, their exit status).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any, TextIO

from attestation.errors import ExtraNotInstalled

#: The modules of the ``aggregator`` extra (pip install 'attestfl[aggregator]').
AGGREGATOR_EXTRA_MODULES = ("numba", "llvmlite", "dp_accounting", "prometheus_client")


def add_serve_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the attested aggregator",
        description="Run the aggregator: gRPC federation service, admission, rounds. "
        "Prints one JSON line when ready, then one line per round (--progress); logs JSON lines on stderr. "
        "Needs the aggregator extra: pip install 'attestfl[aggregator]'.",
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="aggregator.toml")
    serve.add_argument(
        "--progress",
        choices=("table", "json", "none"),
        default="table",
        help="after the ready line, one line per round on stdout: a table (default), JSON objects, or nothing",
    )
    serve.add_argument(
        "--exit-when-finished",
        action="store_true",
        help="exit 0 once the last round is applied, logged and evaluated (default: serve until stopped)",
    )
    serve.add_argument(
        "--dashboard", metavar="HOST:PORT", help="serve a read-only live page (unauthenticated: keep it on loopback)"
    )
    serve.set_defaults(handler=run_serve)


#: ``leaf_driver(config)``: the driver factory of an aggregator whose file has a ``[parent]``
#: table (a leaf of a hierarchical federation). The composition root sets it when it builds the
#: console script (attestfl/hierarchy.py); without it such a file is refused.
leaf_driver: Callable[[Any], Any] | None = None


def run_serve(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    ExtraNotInstalled.check("aggregator", "attestfl serve", AGGREGATOR_EXTRA_MODULES)
    from aggregator.config import AggregatorConfig
    from aggregator.server import configure_logging, serve
    from protocol.config import ConfigError

    err = err or sys.stderr
    config = AggregatorConfig.load(args.config)
    driver_factory = None
    if config.parent is not None:
        if leaf_driver is None:
            raise ConfigError(f"{config.path}: [parent]: a leaf aggregator is served by the attestfl console script")
        driver_factory = leaf_driver(config)
    configure_logging()
    status = asyncio.run(
        serve(
            config,
            progress=args.progress,
            exit_when_finished=args.exit_when_finished,
            dashboard=getattr(args, "dashboard", None),
            driver_factory=driver_factory,
        )
    )
    if status:
        print(
            "attestfl: error: the aggregator stopped on a fault (see the log); nothing was applied without its audit "
            "entry. Fix the cause (e.g. free disk space) and start it again: it recovers the log and resumes.",
            file=err,
        )
    return status

"""``attestfl site cards --config site.toml [--json]``: join (verifying the aggregator), fetch the
federation's current dataset cards and print each one whose signature this site verified
itself (its site's identity key, over the card and the session it was signed for). Exit 0: every
card verified; 1: refused, or a card failed verification (listed, never shown as a card);
2: unusable input."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from attestation.errors import EXIT_OK, EXIT_REFUSED


def _line(card: Any) -> str:
    c = card.card
    total = sum(max(0.0, v) for v in c.labels.values()) or 1.0
    labels = ", ".join(f"{k}: {v:g} ({v / total:.0%})" for k, v in sorted(c.labels.items()))
    missing = ", ".join(f"{k} {v:.1%}" for k, v in c.missing.items() if v > 0) or "none"
    schema = ", ".join(f"{name} ({kind})" for name, kind in c.schema[:12]) + (" ..." if len(c.schema) > 12 else "")
    noise = f"; counts noised, epsilon {c.epsilon:g}" if c.epsilon is not None else ""
    return (
        f"{c.site} (round {card.round}, signature verified{noise})\n"
        f"  examples: {c.examples:g}\n  schema ({len(c.schema)}): {schema}\n"
        f"  labels: {labels or 'none'}\n  missing: {missing}"
    )


def run_site_cards(
    args: argparse.Namespace,
    open_site_client: Callable[[Any, TextIO], Any],
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``open_site_client``: fedsite.commands.open_site_client (passed in: no import cycle)."""
    import grpc

    from fedsite.cards import fetch_cards
    from fedsite.client import AdmissionRefused, AggregatorNotTrusted, AggregatorUnreachable
    from fedsite.config import SiteConfig
    from fedsite.sdk import join_with_retry

    out, err = out or sys.stdout, err or sys.stderr
    config = SiteConfig.load(args.config)
    with open_site_client(config, err) as client:
        try:
            join_with_retry(client, wait=args.wait, say=lambda text: print(f"attestfl: {text}", file=err))
            cards, problems, shared = fetch_cards(client)
        except (AggregatorNotTrusted, AdmissionRefused) as exc:
            if args.json:
                print(json.dumps({"cards": None, "error": str(exc).splitlines()[0]}), file=out)
            print(f"attestfl: {exc}", file=err)
            return EXIT_REFUSED
        except grpc.RpcError as exc:
            raise AggregatorUnreachable(
                f"cannot fetch the cards from {config.aggregator} ({exc.code().name}: {exc.details()})"
            ) from None
    if args.json:
        print(
            json.dumps({"shared": shared, "cards": [c.describe() for c in cards], "problems": problems}, indent=2),
            file=out,
        )
    else:
        if not shared:
            print("the task shares no other site's card with sites ([task.cards] share_with_sites = false)", file=out)
        print(f"{len(cards)} dataset card(s), each signature verified by this site", file=out)
        for card in cards:
            print(_line(card), file=out)
        for problem in problems:
            print(f"NOT VERIFIED: {problem}", file=out)
    return EXIT_REFUSED if problems else EXIT_OK


def add_cards_command(site_sub: Any, open_site_client: Callable[[Any, TextIO], Any]) -> None:
    command = site_sub.add_parser(
        "cards",
        help="print the federation's dataset cards, each signature verified here",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    command.add_argument("--config", required=True, metavar="FILE", help="site.toml")
    command.add_argument("--json", action="store_true", help="print one JSON object")
    command.add_argument("--wait", type=float, default=60.0, metavar="SECONDS")
    command.set_defaults(handler=lambda args: run_site_cards(args, open_site_client))


__all__ = ["add_cards_command", "run_site_cards"]

"""``attestfl federation cards LOGDIR``: the sites' dataset cards as the audit log holds them
(each signed by the site's identity key for its admitted session; ``attestfl audit verify``
checks the signatures). Prints a table, or with ``--json`` one JSON object; exit 0 when the log
verifies, 1 when it does not (the cards are still shown, with the first problem)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from auditor.cli import _policy
from auditor.verify import verify_log
from protocol.cards import CardError, parse_card


def federation_cards(log_dir: str, policy: str | None = None) -> dict[str, Any]:
    result = verify_log(log_dir, _policy(policy))
    cards: dict[str, dict[str, Any]] = {}
    refused: dict[str, str] = {}
    for entry in result.entries:
        f = entry.fields
        if entry.kind == "dataset_card":
            try:
                card = parse_card(f.get("card", ""))
            except CardError:
                continue  # the verifier names it
            cards[card.site] = {
                "site": card.site,
                "round": f.get("round"),
                "entry": entry.index,
                "examples": card.examples,
                "schema": [list(item) for item in card.schema],
                "labels": card.labels,
                "label_distribution": card.label_distribution(),
                "missing_max": max(card.missing.values(), default=0.0),
                "epsilon": card.epsilon,
                "schema_ok": f.get("schema_ok"),
            }
        elif entry.kind == "dataset_card_refused":
            refused[str(f.get("site"))] = str(f.get("reason"))
    first = result.first_problem
    return {
        "valid": result.valid,
        "problem": None if first is None else f"{first.check}: {first.message}",
        "cards": [cards[site] for site in sorted(cards)],
        "refused": refused,
    }


def _run_cards(args: argparse.Namespace) -> int:
    summary = federation_cards(args.log_dir, args.policy)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{'site':>16}  {'round':>5}  {'examples':>9}  {'features':>8}  {'labels':<28}  missing  epsilon  schema")
        for card in summary["cards"]:
            labels = ", ".join(f"{k}: {v:.0%}" for k, v in sorted(card["label_distribution"].items()))
            epsilon = f"{card['epsilon']:g}" if card["epsilon"] else "-"
            print(
                f"{card['site']:>16}  {card['round']!s:>5}  {card['examples']:>9.0f}  {len(card['schema']):>8}  "
                f"{labels:<28}  {card['missing_max']:>7.1%}  {epsilon:>7}  {'ok' if card['schema_ok'] else 'REFUSED'}"
            )
        for site, reason in sorted(summary["refused"].items()):
            print(f"refused {site}: {reason}")
        if not summary["valid"]:
            print(f"the audit log does NOT verify: {summary['problem']}", file=sys.stderr)
    return 0 if summary["valid"] else 1


def add_federation_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    federation = subparsers.add_parser("federation", help="what the federation's sites published")
    commands = federation.add_subparsers(dest="federation_command", required=True, metavar="COMMAND")
    cards = commands.add_parser(
        "cards",
        help="the sites' signed dataset cards, from the audit log",
        description="The latest dataset card of every site (schema, examples, labels, missingness, epsilon), "
        "from the verified audit log.",
    )
    cards.add_argument("log_dir", metavar="LOGDIR")
    cards.add_argument("--policy", metavar="FILE", help="as for attestfl audit verify")
    cards.add_argument("--json", action="store_true", help="print one JSON object")
    cards.set_defaults(handler=_run_cards)


__all__ = ["add_federation_commands", "federation_cards"]

"""Dataset cards at the aggregator (protocol/cards.py): each site's signed card is verified
against the identity key its admission proved, checked against the task's schema, logged, and
compared with the site's previous card (a drift signal).

``[task.cards]`` in ``aggregator.toml``::

    [task.cards]
    schema = [["mean radius", "float"], ["mean texture", "float"]]  # the task's features, in order
    required = true       # no update is accepted from a site before its card (and never after a mismatch)
    label_shift = 0.2     # drift alert: total-variation distance between a site's successive cards' labels

Entries: ``dataset_card`` (round, site, session, card (the JSON as signed), signature, schema_ok);
``dataset_card_refused`` (round, site, reason) when the schema does not match: from then on the
site's updates are refused. A card whose signature does not verify is refused with the report
(INVALID_ARGUMENT), and logged as a refused call by the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import grpc
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from msgspec import Meta

from aggregator.service import EventSink, UpdateRefused
from attestation.errors import AttestflError
from protocol.cards import (
    FEATURE_TYPES,
    MAX_FEATURES,
    CardError,
    DatasetCard,
    card_message,
    label_shift,
    parse_card,
    schema_mismatch,
)
from protocol.config import read_struct


class CardsConfigError(AttestflError, ValueError):
    """``[task.cards]`` is unusable."""


class CardsTable(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    schema: Annotated[list[tuple[str, str]], Meta(max_length=MAX_FEATURES)] | None = None
    required: bool = False
    label_shift: Annotated[float, Meta(gt=0, le=1)] | None = None


@dataclass(frozen=True)
class CardPolicy:
    schema: tuple[tuple[str, str], ...] | None = None
    required: bool = False
    label_shift: float | None = None


def read_cards(table: Any) -> CardPolicy | None:
    if table is None:
        return None
    t = read_struct(table, CardsTable, "task.cards", CardsConfigError)
    schema = None
    if t.schema is not None:
        for name, kind in t.schema:
            if kind not in FEATURE_TYPES:
                raise CardsConfigError(f"[task.cards] schema: {name!r} has type {kind!r}, not one of {FEATURE_TYPES}")
        schema = tuple((name, kind) for name, kind in t.schema)
    return CardPolicy(schema, t.required, t.label_shift)


class CardRegistry:
    """The round driver's record of the sites' cards (called under its lock)."""

    def __init__(self, policy: CardPolicy | None) -> None:
        self.policy = policy or CardPolicy()
        self.latest: dict[str, DatasetCard] = {}
        self.refused: dict[str, str] = {}

    def check_upload(self, site: str) -> None:
        if site in self.refused:
            raise UpdateRefused(f"site {site!r} is refused: {self.refused[site]}")
        if self.policy.required and site not in self.latest:
            raise UpdateRefused(f"site {site!r} has not published its dataset card (the task requires one)")

    def accept(
        self,
        events: EventSink,
        *,
        site: str,
        round_number: int,
        session: bytes,
        identity: bytes,
        text: str,
        signature: bytes,
    ) -> list[dict[str, Any]]:
        """Verify, check and log a card; returns drift alerts to raise (label shift)."""
        try:
            card = parse_card(text)
        except CardError as exc:
            raise UpdateRefused(f"dataset card: {exc}", grpc.StatusCode.INVALID_ARGUMENT) from None
        if card.site != site:
            raise UpdateRefused(
                f"dataset card of site {card.site[:80]!r} sent by {site!r}", grpc.StatusCode.INVALID_ARGUMENT
            )
        try:
            Ed25519PublicKey.from_public_bytes(identity[:32]).verify(signature, card_message(session, text.encode()))
        except (InvalidSignature, ValueError):
            raise UpdateRefused(
                "dataset card: the signature is not the site's identity key's over this session",
                grpc.StatusCode.INVALID_ARGUMENT,
            ) from None
        mismatch = schema_mismatch(card, self.policy.schema) if self.policy.schema is not None else None
        previous = self.latest.get(site)
        if previous is not None and previous.to_json() == card.to_json() and mismatch is None:
            return []  # unchanged: logged once
        events.record(
            "dataset_card",
            round=round_number,
            site=site,
            session=session.hex(),
            card=text,
            signature=signature.hex(),
            schema_ok=mismatch is None,
        )
        if mismatch is not None:
            events.record("dataset_card_refused", round=round_number, site=site, reason=mismatch)
            self.refused[site] = mismatch
            raise UpdateRefused(mismatch)
        self.latest[site] = card
        if previous is not None and self.policy.label_shift is not None:
            shift = label_shift(previous, card)
            if shift > self.policy.label_shift:
                return [
                    {
                        "round": round_number,
                        "site": site,
                        "rule": "label_shift",
                        "value": shift,
                        "threshold": self.policy.label_shift,
                        "quarantined": False,
                    }
                ]
        return []


__all__ = ["CardPolicy", "CardRegistry", "CardsConfigError", "read_cards"]

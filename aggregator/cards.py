"""Dataset cards at the aggregator (protocol/cards.py): each site's signed card is verified
against the identity key its admission proved, checked against the task's schema, logged, and
compared with the site's previous card (a drift signal).

``[task.cards]`` in ``aggregator.toml``::

    [task.cards]
    schema = [["mean radius", "float"], ["mean texture", "float"]]  # the task's features, in order
    required = true       # no update is accepted from a site before its card (and never after a mismatch)
    label_shift = 0.2     # drift alert: total-variation distance between a site's successive cards' labels
    share_with_sites = true  # admitted sites may fetch the other sites' cards (ListCards); false: only their own

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
    share_with_sites: bool = True


@dataclass(frozen=True)
class CardPolicy:
    schema: tuple[tuple[str, str], ...] | None = None
    required: bool = False
    label_shift: float | None = None
    share_with_sites: bool = True


@dataclass(frozen=True)
class SignedCard:
    """A logged card as the site signed it (what ListCards hands to the other sites)."""

    site: str
    text: str
    signature: bytes
    session: bytes
    identity: bytes
    round: int


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
    return CardPolicy(schema, t.required, t.label_shift, t.share_with_sites)


class CardRegistry:
    """The round driver's record of the sites' cards (called under its lock)."""

    def __init__(self, policy: CardPolicy | None) -> None:
        self.policy = policy or CardPolicy()
        self.latest: dict[str, DatasetCard] = {}
        self.refused: dict[str, str] = {}
        #: The latest logged card of each site, with its signature (ListCards, the checkpoint).
        self.signed: dict[str, SignedCard] = {}

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
        self.signed[site] = SignedCard(site, text, signature, session, identity[:32], round_number)
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

    def publish(
        self,
        events: EventSink,
        *,
        site: str,
        round_number: int,
        session: bytes,
        identity: bytes,
        text: str,
        signature: bytes,
    ) -> tuple[bool, list[dict[str, Any]]]:
        """A card published on its own (``PublishCard``, right after admission): a refused site
        is refused again without logging; at most one *changed* card per site and round is logged
        (the same card again, e.g. after a re-join, is acknowledged and not logged). Returns
        whether it was logged, and the drift alerts to raise."""
        if site in self.refused:
            raise UpdateRefused(f"site {site!r} is refused: {self.refused[site]}")
        before = self.signed.get(site)
        if before is not None and before.round == round_number and before.text != text:
            raise UpdateRefused(
                f"site {site!r} already published a different dataset card in round {round_number}: "
                "one card per site and round",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        alerts = self.accept(
            events,
            site=site,
            round_number=round_number,
            session=session,
            identity=identity,
            text=text,
            signature=signature,
        )
        return self.signed.get(site) is not before, alerts

    def state(self) -> dict[str, Any]:
        """The latest logged card of each site, for the sealed checkpoint (a refusal is not kept:
        a restarted aggregator checks a site's card again when the site re-joins)."""
        return {
            site: {
                "card": c.text,
                "signature": c.signature.hex(),
                "session": c.session.hex(),
                "identity": c.identity.hex(),
                "round": c.round,
            }
            for site, c in self.signed.items()
        }

    def restore(self, state: dict[str, Any]) -> None:
        for site, c in state.items():
            text = str(c["card"])
            self.latest[site] = parse_card(text)
            self.signed[site] = SignedCard(
                site,
                text,
                bytes.fromhex(c["signature"]),
                bytes.fromhex(c["session"]),
                bytes.fromhex(c["identity"]),
                int(c["round"]),
            )

    def visible(self, site: str) -> tuple[list[SignedCard], bool]:
        """The cards ``site`` may see (in site order), and whether other sites' are shared."""
        if self.policy.share_with_sites:
            return [self.signed[s] for s in sorted(self.signed)], True
        return ([self.signed[site]] if site in self.signed else []), False


__all__ = ["CardPolicy", "CardRegistry", "CardsConfigError", "SignedCard", "read_cards"]

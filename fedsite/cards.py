"""A site's dataset card (protocol/cards.py) from its training data: schema, example count,
label distribution and missingness, optionally with Laplace noise on the counts (the site
states epsilon; each released count changes by at most 1 when one patient is added or removed,
so one card release is epsilon-DP for the counts; missingness fractions are computed from the
noised counts).

    card = make_card("hospital-a", x_train, y_train, feature_names, epsilon=1.0)
    trainer = TorchTrainer(model, train, evaluate, card=lambda: card)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.cards import CardError, DatasetCard, card_message, parse_card

#: At most this many pages are fetched (64 cards each): 64,000 sites.
MAX_PAGES = 1000


def _kind(column: np.ndarray) -> str:
    if column.dtype.kind == "b":
        return "bool"
    if column.dtype.kind in "iu":
        return "int"
    if column.dtype.kind == "f":
        return "float"
    return "category"


def make_card(
    site: str,
    x: np.ndarray,
    y: np.ndarray,
    feature_names: Sequence[str],
    *,
    feature_types: Sequence[str] | None = None,
    epsilon: float | None = None,
    rng: np.random.Generator | None = None,
) -> DatasetCard:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or x.shape[1] != len(feature_names) or y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape} features do not fit {len(feature_names)} names and {y.shape[0]} labels")
    kinds = list(feature_types) if feature_types is not None else [_kind(x[:, i]) for i in range(x.shape[1])]
    rng = rng or np.random.default_rng()

    def count(value: float) -> float:
        if epsilon is None:
            return float(value)
        return float(max(0.0, value + rng.laplace(0.0, 1.0 / epsilon)))

    examples = count(x.shape[0])
    values, counts = np.unique(y, return_counts=True)
    labels = {str(v): count(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)}
    missing = {}
    for i, name in enumerate(feature_names):
        column = x[:, i]
        absent = int(np.isnan(column).sum()) if column.dtype.kind == "f" else int((column == None).sum())  # noqa: E711
        missing[str(name)] = round(min(1.0, count(absent) / examples), 6) if examples > 0 else 0.0
    return DatasetCard(
        site, examples, tuple((str(n), k) for n, k in zip(feature_names, kinds, strict=True)), labels, missing, epsilon
    )


@dataclass(frozen=True)
class VerifiedCard:
    """A card fetched from the aggregator whose signature this site checked itself."""

    card: DatasetCard
    round: int
    session: str  # hex: the session the site signed it for
    identity: str  # hex: the identity key that signed it (the one the site's admission proved)

    def describe(self) -> dict[str, Any]:
        card = self.card
        return {
            "site": card.site,
            "examples": card.examples,
            "schema": [list(feature) for feature in card.schema],
            "labels": card.labels,
            "missing": card.missing,
            "epsilon": card.epsilon,
            "round": self.round,
            "identity": self.identity,
            "signature": "verified",
        }


def verify_listing(entries: Sequence[Any]) -> tuple[list[VerifiedCard], list[str]]:
    """Check each ``pb.CardSigned``: its JSON reads, names the site it is listed for, and carries
    that site's identity key's signature for the session it names. Returns the verified cards
    and one line per card that failed (never trusted, never printed as a card)."""
    verified, problems = [], []
    for entry in entries:
        site = str(entry.site_id)[:80]
        try:
            card = parse_card(entry.card)
            if card.site != entry.site_id:
                raise CardError(f"the card names site {card.site[:80]!r}")
            key = Ed25519PublicKey.from_public_bytes(bytes(entry.identity_public))
            key.verify(bytes(entry.signature), card_message(bytes(entry.session_id), entry.card.encode()))
        except CardError as exc:
            problems.append(f"{site}: {exc}")
        except (InvalidSignature, ValueError):
            problems.append(f"{site}: the signature is not its identity key's over the card and its session")
        else:
            verified.append(
                VerifiedCard(card, int(entry.round), bytes(entry.session_id).hex(), bytes(entry.identity_public).hex())
            )
    return verified, problems


def fetch_cards(client: Any) -> tuple[list[VerifiedCard], list[str], bool]:
    """Every card the aggregator lets this (joined) site see, page by page, each verified here:
    (verified cards, problems, whether other sites' cards are shared)."""
    entries: list[Any] = []
    offset, shared = 0, True
    for _ in range(MAX_PAGES):
        listing = client.list_cards(offset)
        shared = bool(listing.shared)
        entries.extend(listing.cards)
        if listing.next_offset <= offset or listing.next_offset >= listing.total:
            break
        offset = int(listing.next_offset)
    verified, problems = verify_listing(entries)
    return verified, problems, shared


def publish_after_join(client: Any, trainer: Any, say: Any) -> None:
    """Right after admission, before anything else: publish the trainer's card (``trainer.card``),
    if it has one. A schema the aggregator refuses stops the site (:class:`AdmissionRefused`:
    it would refuse every update); an aggregator without ``PublishCard`` (or in a mode that
    takes no cards) is skipped, and other refusals are reported and training goes on (the card
    also travels with the metrics reports)."""
    import dataclasses

    import grpc

    from fedsite.client import AdmissionRefused

    make = getattr(trainer, "card", None)
    card = make() if make is not None else None
    if card is None:
        return
    card = dataclasses.replace(card, site=client.site_id)  # the card names this site (its identity key signs it)
    try:
        logged = client.publish_card(card)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
            raise AdmissionRefused((f"dataset card refused: {exc.details()}",)) from None
        if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
            say(f"dataset card not recorded: {exc.details()}")
            return
        raise
    say("dataset card published" if logged else "dataset card unchanged")


__all__ = ["VerifiedCard", "fetch_cards", "make_card", "publish_after_join", "verify_listing"]

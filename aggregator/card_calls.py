"""The dataset-card calls (docs/intelligence.md "Dataset cards"): ``PublishCard``, a site's
signed card right after its admission, before any update (a schema that is not the task's is
refused here, the earliest moment the aggregator can see it: the admission handshake carries
no card); ``ListCards``, the federation's current cards for an admitted site, each as its site
signed it, so the site verifies every signature itself (:func:`fedsite.cards.verify_listing`).

Both are sealed session calls through the service's gate. A page holds at most
:data:`MAX_PAGE_CARDS` cards and :data:`MAX_PAGE_BYTES` bytes of card JSON (a card is at most
``protocol.cards.MAX_CARD_BYTES``, so a page always holds at least one); the site asks for the
next page from ``next_offset``. With ``[task.cards] share_with_sites = false`` a site is given
only its own card.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from aggregator.cards import SignedCard
from aggregator.service import UpdateRefused, _parse, _short
from protocol.wire import federation_pb2 as pb

MAX_PAGE_CARDS = 64
MAX_PAGE_BYTES = 1 << 20


def page(cards: list[SignedCard], offset: int, *, shared: bool) -> pb.CardList:
    """One bounded page of ``cards`` (in site order) from ``offset``."""
    listing = pb.CardList(total=len(cards), shared=shared)
    size = 0
    index = min(max(0, offset), len(cards))
    while index < len(cards) and len(listing.cards) < MAX_PAGE_CARDS:
        card = cards[index]
        if listing.cards and size + len(card.text) > MAX_PAGE_BYTES:
            break
        size += len(card.text)
        listing.cards.add(
            site_id=card.site,
            card=card.text,
            signature=card.signature,
            session_id=card.session,
            identity_public=card.identity,
            round=card.round,
        )
        index += 1
    listing.next_offset = index
    return listing


async def publish(service: Any, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
    session, call, plaintext = await service._open(context, "PublishCard", request)
    inner = _parse(pb.CardPublish, plaintext)
    publish_card = getattr(service.driver, "publish_card", None)  # the async driver takes no cards
    try:
        if publish_card is None:
            raise UpdateRefused("this task's mode takes no dataset cards", grpc.StatusCode.UNIMPLEMENTED)
        logged = await asyncio.get_running_loop().run_in_executor(  # logged durably: off the event loop
            None,
            publish_card,
            session.site_id,
            session.session_id,
            session.identity,
            inner.card,
            bytes(inner.signature),
        )
    except UpdateRefused as exc:
        service._record("call_refused", site=session.site_id, method="PublishCard", reason=_short(str(exc), 300))
        await context.abort(exc.code, _short(str(exc), 300))
    return service._seal(session, "PublishCard", call, pb.CardAck(logged=bool(logged)))


async def list_cards(service: Any, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
    session, call, plaintext = await service._open(context, "ListCards", request)
    inner = _parse(pb.CardListRequest, plaintext)
    visible = getattr(service.driver, "visible_cards", None)
    cards, shared = visible(session.site_id) if visible is not None else ([], False)
    return service._seal(session, "ListCards", call, page(cards, int(inner.offset), shared=shared))


__all__ = ["MAX_PAGE_BYTES", "MAX_PAGE_CARDS", "list_cards", "page", "publish"]

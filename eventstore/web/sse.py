"""``GET /api/events``: the events live, as server-sent events, on :meth:`AsyncEventStore.subscribe`.

Each message is ``id: <global_position>``, ``event: <event type>`` and
``data: <the event as eventstore read --json prints it>``. A browser's
``EventSource`` reconnects by itself and sends the last ``id`` it got as
``Last-Event-ID``; the stream then resumes exactly after that event (it wins
over ``after``), and because the subscription follows the store's global
order (the gap rule), nothing is skipped or repeated across the reconnect.

An idle stream sends a ``: ping`` comment every ``heartbeat_seconds`` so that
proxies and load balancers keep it open. The subscription is entered before
the response starts, so a bad ``after`` is a 422 with a JSON error, not a
broken stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Literal

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from eventstore.errors import UnknownPosition
from eventstore.store import AsyncEventStore
from eventstore.store.subscription import Subscription
from eventstore.types import event_record
from eventstore.web import params
from eventstore.web.errors import RequestError

__all__ = ["stream_events"]


async def stream_events(request: Request) -> EventSourceResponse:
    """``GET /api/events[?after=P|head][&category=C][&type=T][&stream=S]``: history after P, then live, forever.

    Filters repeat (``?category=order&category=invoice``) and combine with
    AND across kinds. Without ``after`` or ``Last-Event-ID`` the stream starts
    at the head (only new events, as ``eventstore tail``); ``after=0`` starts
    at the first event.
    """
    query = request.query_params
    after: int | Literal["head"] | None
    resumed = params.last_event_id(request.headers.get("last-event-id"))
    if resumed is not None:
        after = resumed
    elif query.get("after", "head") == "head":
        after = "head"
    else:
        after = params.integer(query, "after")
    store: AsyncEventStore = request.app.state.store
    feed = store.subscribe(
        after=after,
        categories=query.getlist("category") or None,
        event_types=query.getlist("type") or None,
        stream_ids=query.getlist("stream") or None,
    )
    try:
        await feed.__aenter__()  # here, so that an unknown position is a 422 before any byte is sent
    except UnknownPosition as error:
        given = "header Last-Event-ID" if resumed is not None else "query parameter after"
        raise RequestError(
            422,
            f"{given}: no event is stored at position {error.position}; pass the id of an event this stream sent, "
            "after=0 for the first event, or no after for only new events",
        ) from error
    return EventSourceResponse(
        _messages(feed),
        ping=request.app.state.heartbeat_seconds,
        ping_message_factory=_heartbeat,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},  # nginx: do not buffer the stream
    )


def _heartbeat() -> ServerSentEvent:
    """``: ping``: a comment (EventSource ignores it) without sse-starlette's timestamp of the server's clock."""
    return ServerSentEvent(comment="ping")


async def _messages(feed: Subscription) -> AsyncIterator[ServerSentEvent]:
    """The subscription's events as SSE messages; leaves the subscription when the client goes away."""
    try:
        async for event in feed:
            yield ServerSentEvent(
                json.dumps(event_record(event), ensure_ascii=False, separators=(",", ":")),
                event=event.type,
                id=str(event.global_position),
            )
    finally:
        await feed.__aexit__(None, None, None)

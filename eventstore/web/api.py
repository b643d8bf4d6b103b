"""The JSON endpoints: read and append a stream, wait for a projection.

Each handler reads its parameters (:mod:`eventstore.web.params`), calls the
:class:`~eventstore.store.AsyncEventStore` and raises on failure; the status
and the body of every error come from :mod:`eventstore.web.errors`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from eventstore.errors import (
    InvalidEvent,
    ProjectionNotFound,
    StreamNotFound,
    UnknownPosition,
    WrongExpectedVersion,
)
from eventstore.store import AsyncEventStore
from eventstore.store.validation import MAX_INT32
from eventstore.types import event_record
from eventstore.web import params
from eventstore.web.errors import RequestError

__all__ = ["append_events", "read_stream", "wait_for_projection"]

MAX_WAIT_SECONDS = 300.0
"""The longest ``timeout`` of the wait endpoint (a client wanting longer asks again)."""


def _store(request: Request) -> AsyncEventStore:
    store: AsyncEventStore = request.app.state.store
    return store


async def read_stream(request: Request) -> JSONResponse:
    """``GET /api/streams/{stream_id}[?from_version=N&backwards=true&limit=N]``: its events (``read --json``'s shape).

    404 when the stream has no events.
    """
    stream_id: str = request.path_params["stream_id"]
    query = request.query_params
    backwards = query.get("backwards", "false").lower()
    if backwards not in ("true", "false", "1", "0"):
        raise RequestError(422, f"query parameter backwards={backwards!r}: expected true or false")
    store = _store(request)
    events = await store.read_stream(
        stream_id,
        from_version=params.integer(query, "from_version", minimum=1, maximum=MAX_INT32),
        backwards=backwards in ("true", "1"),
        limit=params.integer(query, "limit"),
    )
    if not events and await store.stream_version(stream_id) == 0:
        raise StreamNotFound(stream_id)
    return JSONResponse([event_record(event) for event in events])


async def append_events(request: Request) -> JSONResponse:
    """``POST /api/streams/{stream_id}``: append one event or ``{"events": [...]}``; 201 with what was written.

    The append is idempotent by ``event_id`` (a retried request gets the
    original result with ``"already_stored": true``). 409: the stream is at
    another version than ``expected_version``, or an event id is stored with
    other content; 422: a bad body (names the field); nothing was written then.
    """
    stream_id: str = request.path_params["stream_id"]
    decoded = None
    try:
        decoded = params.append_request(await request.body())
        result = await _store(request).append(stream_id, decoded.events, expected_version=decoded.expected_version)
    except InvalidEvent as error:
        raise RequestError(422, f"{params.field_words(error.field, decoded)}: {error.problem}") from error
    except WrongExpectedVersion as error:
        raise RequestError(
            409,
            f"{error}; nothing was written. Read the stream (GET /api/streams/{stream_id}) and retry with "
            f'"expected_version": {error.actual} (or "any")',
        ) from error
    body = {
        "stream_id": result.stream_id,
        "stream_version": result.stream_version,
        "global_position": result.global_position,
        "already_stored": result.already_stored,
        "event_ids": [str(event.event_id) for event in decoded.events],
    }
    return JSONResponse(body, status_code=201)


async def wait_for_projection(request: Request) -> JSONResponse:
    """``GET /api/projections/{name}/wait?position=P[&timeout=S]``: 200 once the projection has processed P.

    For read-your-writes: append, then wait with the ``global_position`` the
    append returned. 504 when ``timeout`` seconds (default 10, at most 300)
    pass first; 404 for a projection this app was not given, or one without
    a checkpoint; 422 for a bad parameter or a position that names no event.
    """
    name: str = request.path_params["name"]
    query = request.query_params
    position = params.integer(query, "position")
    if position is None:
        raise RequestError(422, "query parameter position: missing; pass the global_position an append returned")
    timeout = params.seconds(query, "timeout", default=10.0, maximum=MAX_WAIT_SECONDS)
    store = _store(request)
    if name not in request.app.state.projection_names or not await _has_checkpoint(store, name):
        raise ProjectionNotFound(name)
    try:
        await store.wait_until_processed(name, position, timeout=timeout)
    except UnknownPosition as error:
        raise RequestError(
            422,
            f"query parameter position={position}: no event is stored at that position; "
            "pass the global_position an append returned",
        ) from error
    return JSONResponse({"projection": name, "position": position, "processed": True})


async def _has_checkpoint(store: AsyncEventStore, name: str) -> bool:
    """Whether ``name`` has a checkpoint."""
    return name in await store.checkpoints([name])


async def metrics_exposition(request: Request) -> Response:
    """``GET /metrics``: prometheus_client's default registry (see :mod:`eventstore.metrics`).

    ``eventstore serve`` enables the counters and watches its projections there;
    an app of your own calls ``metrics.enable()`` / ``metrics.watch(...)`` itself.
    404 (naming the extra) when prometheus-client is not installed.
    """
    from eventstore import metrics
    from eventstore.errors import ConfigurationError

    try:
        body, content_type = metrics.render()
    except ConfigurationError as error:
        raise RequestError(404, str(error)) from error
    return Response(body, media_type=content_type)

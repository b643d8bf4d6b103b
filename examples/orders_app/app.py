"""The order app: place orders through :class:`~eventstore.AsyncEventStore`, answer from the read model, push live.

- ``POST /orders`` ``{"customer_id": "alice", "total": 1250}`` (cents) appends
  ``OrderPlaced`` as the first event of ``order-<new id>``, waits until the
  ``order_summaries`` projection has applied it (read-your-writes), and answers
  201 with the order's row of the read model.
- ``GET /orders`` lists the read model with the position it reflects (at least).
- ``GET /`` is one HTML page (``index.html``: plain JavaScript, nothing fetched
  from elsewhere) whose list follows new orders live, over server-sent events
  from the mounted :func:`eventstore.web.create_app` (``/es/api/events``).

The projection runs inside the app, in a background thread (see :func:`create_orders_app`).
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route

from eventstore import (
    NO_STREAM,
    AsyncEventStore,
    ConfigurationError,
    EventStore,
    NewEvent,
    Projection,
    ProjectionRunner,
    ProjectionTimeout,
)
from eventstore.web import create_app
from projections import OrderSummaries
from projections.orders import ORDER_PLACED, stream_id_of

__all__ = ["READ_MODEL", "create_orders_app", "from_environment"]

READ_MODEL = "order_summaries"
"""The projection whose table the app answers from (and waits for after each append)."""

WAIT_SECONDS = 5.0
"""How long ``POST /orders`` waits for the read model before answering 504."""

_PAGE = (Path(__file__).parent / "index.html").read_text(encoding="utf-8")
_ORDER = sa.text(
    "SELECT order_id, customer_id, status, total, placed_on, last_position FROM order_summaries "
    "WHERE order_id = :order_id"
)
_TABLE_EXISTS = sa.text("SELECT to_regclass('order_summaries')")
_ORDERS = sa.text(
    "SELECT order_id, customer_id, status, total, placed_on, last_position FROM order_summaries "
    "ORDER BY last_position DESC LIMIT 100"
)


def create_orders_app(url: str, *, projections: Sequence[Projection] | None = None) -> Starlette:
    """The app on the migrated database at ``url`` (run ``eventstore migrate`` first).

    Two stores on the same database: the :class:`AsyncEventStore` serves the
    requests on the server's event loop, and a :class:`ProjectionRunner` on a
    sync :class:`EventStore` keeps ``projections`` (default: ``order_summaries``)
    up to date in a background thread for the app's lifetime. The runner is
    sync by design: it holds a LISTEN connection and applies its projections on
    a few worker threads of its own, each batch under the projection's lease,
    so it never blocks the event loop, and eventstore has no asyncio runner.
    Another runner (``eventstore projections run``, or a second copy of this
    app) may run at the same time: exactly one applies each projection,
    and ``wait_until_processed`` reads the stored checkpoints, so it works
    whichever one does.
    """
    projections = list(projections) if projections is not None else [OrderSummaries()]
    store = AsyncEventStore(url)
    sync_store = EventStore(url)  # the runner's store; its engine also serves the read-model queries

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runner = ProjectionRunner(sync_store, projections)
        thread = threading.Thread(target=runner.run, name="orders-projections", daemon=True)
        thread.start()  # run() installs no signal handlers off the main thread: uvicorn keeps SIGINT/SIGTERM
        try:
            yield
        finally:
            runner.stop()  # finishes the current batch, commits its checkpoint, releases the locks
            await run_in_threadpool(thread.join)
            await store.close()
            sync_store.close()

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(_PAGE)

    async def place_order(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": 'send a JSON object: {"customer_id": ..., "total": ...}'}, status_code=422)
        customer_id = body.get("customer_id") if isinstance(body, dict) else None
        total = body.get("total") if isinstance(body, dict) else None
        if not isinstance(customer_id, str) or not customer_id.strip():
            return JSONResponse({"error": "customer_id: give a non-empty string"}, status_code=422)
        if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
            return JSONResponse({"error": "total: give a whole number of cents above 0"}, status_code=422)
        order_id = uuid.uuid4().hex[:12]
        data = {
            "order_id": order_id,
            "customer_id": customer_id.strip(),
            "total": total,
            "placed_at": datetime.now(UTC).isoformat(),
        }
        # NO_STREAM: the order's stream must not exist yet (WrongExpectedVersion otherwise).
        result = await store.append(stream_id_of(order_id), [NewEvent(ORDER_PLACED, data)], expected_version=NO_STREAM)
        try:
            # Read-your-writes: answer from the read model only once the projection has applied this append.
            await store.wait_until_processed(READ_MODEL, result.global_position, timeout=WAIT_SECONDS)
        except ProjectionTimeout as error:
            # The order is stored; only the read model is late (or its projection is stopped on a poison event).
            return JSONResponse({"error": str(error), "order_id": order_id}, status_code=504)
        row = await run_in_threadpool(_read_one, sync_store.engine, order_id)
        return JSONResponse(row, status_code=201)

    async def list_orders(request: Request) -> JSONResponse:
        # The checkpoint first, then the rows: the rows reflect at least that position, so a client that
        # subscribes after it misses nothing (and may see an order twice, which the page skips).
        checkpoint = (await store.checkpoints([READ_MODEL])).get(READ_MODEL)
        rows = await run_in_threadpool(_read_recent, sync_store.engine)
        if checkpoint is None or rows is None:  # the runner has not set the projection up yet: no orders
            return JSONResponse({"position": 0, "orders": []})
        return JSONResponse({"position": checkpoint.position, "orders": rows})

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/orders", place_order, methods=["POST"]),
        Route("/orders", list_orders, methods=["GET"]),
        # The event store's web API: /es/api/events (SSE), /es/api/projections/{name}/wait, /es/api/streams/...
        # No token: serve the app on loopback only, or mount it with token=... behind a same-origin proxy.
        Mount("/es", app=create_app(store, projections=projections)),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def from_environment() -> Starlette:
    """The app on ``EVENTSTORE_URL`` (``uvicorn --factory examples.orders_app.app:from_environment``).

    Raises:
        ConfigurationError: ``EVENTSTORE_URL`` is not set.
    """
    url = os.environ.get("EVENTSTORE_URL")
    if not url:
        raise ConfigurationError(
            "EVENTSTORE_URL is not set: export EVENTSTORE_URL=postgresql://user@host/database "
            "(a database migrated with eventstore migrate)"
        )
    return create_orders_app(url)


def _read_one(engine: sa.Engine, order_id: str) -> dict[str, Any]:
    with engine.connect() as connection:
        return _order(connection.execute(_ORDER, {"order_id": order_id}).mappings().one())


def _read_recent(engine: sa.Engine) -> list[dict[str, Any]] | None:
    """The newest orders; None while the table does not exist (the runner writes the projection's checkpoint
    row before its ``setup()`` creates the table, so a checkpoint alone does not mean a table)."""
    with engine.connect() as connection:
        if connection.execute(_TABLE_EXISTS).scalar_one() is None:
            return None
        return [_order(row) for row in connection.execute(_ORDERS).mappings()]


def _order(row: sa.RowMapping) -> dict[str, Any]:
    return {**row, "placed_on": row["placed_on"].isoformat()}

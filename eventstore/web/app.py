"""Assembling the Starlette app of :func:`eventstore.web.create_app`: routes, error handlers, the token."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from eventstore.projection import Projection
from eventstore.store import AsyncEventStore
from eventstore.web import api, dashboard, sse
from eventstore.web.auth import BearerToken
from eventstore.web.errors import exception_handlers

__all__ = ["build_app"]


@contextlib.asynccontextmanager
async def _closing_dashboard(app: Starlette) -> AsyncIterator[None]:
    """At shutdown, stop the dashboard's sampler and close its store (the app's own; the caller's stays open
    unless it was handed over with ``close_store=True``).

    Run by a server (``eventstore serve``, ``uvicorn``); a host app that
    mounts this one runs its own lifespan instead, and the dashboard's store
    is closed when collected.
    """
    yield
    try:
        await app.state.dashboard.aclose()
    finally:
        if app.state.close_store:
            await app.state.store.close()


class _App(Starlette):
    """Starlette, handing the event streams the ``send`` it was called with (:data:`eventstore.web.sse.SERVER_SEND`).

    Inside, Starlette wraps ``send`` twice per request (its error and
    exception middleware), only to note that the response has started; an
    event stream's body chunks, one per client and event, would pay for both
    wrappers about a third of the server's CPU at 1,000 clients. A middleware
    added to this app after :func:`build_app` (``app.add_middleware``) may
    transform the body, so then the streams take the wrapped ``send`` as usual.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._built_with = list(self.user_middleware)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.user_middleware == self._built_with:
            scope[sse.SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def build_app(
    store: AsyncEventStore,
    *,
    projection_names: frozenset[str],
    token: str | None,
    heartbeat_seconds: float,
    projections: tuple[str | Projection, ...] = (),
    close_store: bool = False,
) -> ASGIApp:
    """The app (see :func:`eventstore.web.create_app`, which checks that the ``web`` extra is installed)."""
    if not heartbeat_seconds > 0:
        from eventstore.errors import ConfigurationError

        raise ConfigurationError(f"heartbeat_seconds={heartbeat_seconds!r}: pass a number of seconds above 0")
    routes = [
        Route("/api/streams/{stream_id:path}", api.read_stream, methods=["GET"]),
        Route("/api/streams/{stream_id:path}", api.append_events, methods=["POST"]),
        Route("/api/projections/{name}/wait", api.wait_for_projection, methods=["GET"]),
        Route("/api/events", sse.stream_events, methods=["GET"]),
        Route("/metrics", api.metrics_exposition, methods=["GET"]),
        # The dashboard (eventstore.web.dashboard): the page, its live fragments, Retry and Skip, its assets.
        Route("/", dashboard.page, methods=["GET"]),
        Route("/dashboard/events", dashboard.events, methods=["GET"]),
        Route("/dashboard/projections/{name}/retry", dashboard.retry, methods=["POST"]),
        Route("/dashboard/projections/{name}/skip", dashboard.skip, methods=["POST"]),
        Mount("/dashboard/static", StaticFiles(directory=dashboard.STATIC), name="dashboard-static"),
    ]
    middleware = [] if token is None else [Middleware(BearerToken, token=token)]
    app = _App(
        routes=routes, middleware=middleware, exception_handlers=exception_handlers(), lifespan=_closing_dashboard
    )
    app.state.store = store
    app.state.close_store = close_store
    app.state.projection_names = projection_names
    app.state.heartbeat_seconds = heartbeat_seconds
    app.state.token = token
    app.state.dashboard = dashboard.Dashboard(store, projections or tuple(sorted(projection_names)))
    return app

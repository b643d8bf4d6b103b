"""Assembling the Starlette app of :func:`eventstore.web.create_app`: routes, error handlers, the token."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from eventstore.projection import Projection
from eventstore.store import AsyncEventStore
from eventstore.web import api, dashboard, sse
from eventstore.web.auth import BearerToken
from eventstore.web.errors import exception_handlers

__all__ = ["build_app"]


@contextlib.asynccontextmanager
async def _closing_dashboard(app: Starlette) -> AsyncIterator[None]:
    """At shutdown, stop the dashboard's sampler and close its store (the app's own; the caller's stays open).

    Run by a server (``eventstore serve``, ``uvicorn``); a host app that
    mounts this one runs its own lifespan instead, and the dashboard's store
    is closed when collected.
    """
    yield
    await app.state.dashboard.aclose()


def build_app(
    store: AsyncEventStore,
    *,
    projection_names: frozenset[str],
    token: str | None,
    heartbeat_seconds: float,
    projections: tuple[str | Projection, ...] = (),
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
    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers=exception_handlers(), lifespan=_closing_dashboard
    )
    app.state.store = store
    app.state.projection_names = projection_names
    app.state.heartbeat_seconds = heartbeat_seconds
    app.state.token = token
    app.state.dashboard = dashboard.Dashboard(store, projections or tuple(sorted(projection_names)))
    return app

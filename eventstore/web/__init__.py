"""The web API of the event store: an ASGI app (Starlette) to mount, or to run with ``eventstore serve``.

Endpoints (:mod:`eventstore.web.api`, :mod:`eventstore.web.sse`): read and
append a stream, wait until a projection has processed a position, and the
events live as server-sent events. Errors are JSON ``{"error": "..."}`` with
the status of :mod:`eventstore.web.errors`; with a token every request needs
``Authorization: Bearer <token>`` (:mod:`eventstore.web.auth`).

Starlette, uvicorn and sse-starlette come with the ``web`` extra; this package
imports them only inside :func:`create_app`, so ``import eventstore.web``
works without them and the core never imports them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from eventstore.errors import ConfigurationError

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from eventstore.projection import Projection
    from eventstore.store import AsyncEventStore

__all__ = ["DEFAULT_HEARTBEAT_SECONDS", "create_app", "require_web_extra"]

DEFAULT_HEARTBEAT_SECONDS = 15.0
"""How often an idle event stream sends a ``: ping`` comment, so that proxies keep it open."""

_WEB_MODULES = ("starlette", "sse_starlette")


def require_web_extra(*, server: bool = False) -> None:
    """Check that the ``web`` extra is installed (``server``: uvicorn too).

    Raises:
        ConfigurationError: a package of the extra is missing; names it and the ``pip install`` that adds it.
    """
    import importlib.util

    for module in (*_WEB_MODULES, "uvicorn") if server else _WEB_MODULES:
        if importlib.util.find_spec(module) is None:
            raise ConfigurationError(
                f"the web API needs the {module.replace('_', '-')} package, which is not installed; "
                "install it with pip install 'eventstore[web]'"
            )


def create_app(
    store: AsyncEventStore,
    *,
    projections: Iterable[str | Projection] = (),
    token: str | None = None,
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
    close_store: bool = False,
) -> ASGIApp:
    """The ASGI app serving ``store``: mount it (``Mount("/events", app=create_app(store))``) or run it.

    ``projections``: the projections (or their names) whose progress
    ``GET /api/projections/{name}/wait`` may report; other names get 404.
    ``token``: when given, every request must carry ``Authorization: Bearer
    <token>`` (401 otherwise; compared in constant time). Without a token
    anyone who can connect may read and append: serve it on loopback only
    (``eventstore serve`` refuses a non-loopback address without one).
    ``heartbeat_seconds``: the idle interval between keepalive comments of
    ``GET /api/events`` and ``GET /dashboard/events``.

    ``GET /`` is the dashboard (:mod:`eventstore.web.dashboard`): the store
    and each of ``projections`` live, and why a projection is behind.

    The app uses the store from the server's event loop and, by default,
    never closes it (the caller owns it: ``async with AsyncEventStore(url) as
    store:``). ``close_store=True`` hands it over: the app's lifespan closes
    it at shutdown, for an app that is built with its own store, as a
    ``uvicorn --factory`` function (or a worker of ``eventstore serve
    --workers``) builds it.

    Raises:
        ConfigurationError: the ``web`` extra is not installed (names ``pip install 'eventstore[web]'``),
            or an empty token.
    """
    require_web_extra()
    from eventstore.web.app import build_app

    given = tuple(projections)
    names = frozenset(item if isinstance(item, str) else item.name for item in given)
    return build_app(
        store,
        projection_names=names,
        token=token,
        heartbeat_seconds=heartbeat_seconds,
        projections=given,
        close_store=close_store,
    )

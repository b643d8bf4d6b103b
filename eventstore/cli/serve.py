"""``eventstore serve``: the web API (:mod:`eventstore.web`) under uvicorn.

Loopback by default; any other address needs a token, so that an open port
never means an open event store (pgqueuer's ``pgq web`` rule).

``--workers N`` runs N server processes under uvicorn's supervisor, on one
listening socket: each process has its own store, connections and LISTEN
connection (its own subscription hub), so the fan-out of live streams is
split across cores. The parent resolves the database (starting the embedded
server if needed) and hands each process its settings in the environment
(:data:`WORKER_SETTINGS`); :func:`worker_app` builds the app there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from eventstore.cli.context import state
from eventstore.cli.errors import CliError, reports_errors
from eventstore.cli.output import status
from eventstore.web import loop as event_loop

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from eventstore.store import EventStore

__all__ = ["WORKER_SETTINGS", "serve", "worker_app"]

WORKER_SETTINGS = "EVENTSTORE_SERVE_WORKER"
"""The environment variable that carries ``serve --workers``'s settings (JSON) to each server process."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


@reports_errors
def serve(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            envvar="EVENTSTORE_HOST",
            help="Address to listen on; any non-loopback one (e.g. 0.0.0.0) needs --token.",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, envvar="EVENTSTORE_PORT", help="TCP port to listen on.")
    ] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="EVENTSTORE_WEB_TOKEN",
            help="Require `Authorization: Bearer TOKEN` on every request (prefer the environment variable).",
        ),
    ] = None,
    heartbeat: Annotated[
        float,
        typer.Option(
            "--heartbeat",
            min=0.1,
            envvar="EVENTSTORE_WEB_HEARTBEAT",
            help="Seconds between keepalive comments on an idle /api/events stream.",
        ),
    ] = 15.0,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            envvar="EVENTSTORE_WEB_WORKERS",
            help="Server processes, each with its own connections and LISTEN; more share the live streams' "
            "fan-out across cores.",
        ),
    ] = 1,
) -> None:
    """Serve the dashboard and the web API (streams, appends, waits, live events over SSE, /metrics) until Ctrl-C."""
    if not token and not is_loopback(host):
        raise CliError(
            f"--host {host} accepts connections from other machines, and no token is set; pass --token "
            "(or set EVENTSTORE_WEB_TOKEN) so that every request needs it, or serve on 127.0.0.1"
        )
    from eventstore.web import create_app, require_web_extra

    require_web_extra(server=True)
    import uvicorn

    from eventstore.store import AsyncEventStore

    context = state(ctx)
    engine = context.target().engine
    projections = context.projections()  # instances: the dashboard's lag counts with their filters
    serving = f"serving the dashboard on http://{host}:{port}/ and the web API on /api/"
    access = "token required" if token else "no token"
    if workers > 1:
        os.environ[WORKER_SETTINGS] = json.dumps(
            {
                "url": engine.url.render_as_string(hide_password=False),
                "module": context.module,
                "token": token or None,
                "heartbeat": heartbeat,
            }
        )
        config = uvicorn.Config(
            f"{__name__}:worker_app", factory=True, host=host, port=port, workers=workers, log_level="info",
            timeout_graceful_shutdown=5,
        )  # fmt: skip
        status(f"{serving} ({access}; {workers} server processes)")
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[config.bind_socket()]).run()  # as uvicorn.run() does; until Ctrl-C
        return
    _watch_metrics(context.store(), projections)

    async def run() -> None:
        async with AsyncEventStore(engine) as store:
            app = create_app(store, projections=projections, token=token or None, heartbeat_seconds=heartbeat)
            config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
            status(f"{serving} ({access})")
            await uvicorn.Server(config).serve()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server normally ends
        event_loop.run(run())  # on uvloop where it is installed


def worker_app() -> ASGIApp:
    """The app of one ``eventstore serve --workers N`` process (uvicorn's factory): its own store, closed at shutdown.

    Its settings come from the parent, in :data:`WORKER_SETTINGS`.
    """
    from eventstore.cli.loading import load_projections
    from eventstore.store import AsyncEventStore, EventStore
    from eventstore.web import create_app

    settings: dict[str, Any] = json.loads(os.environ[WORKER_SETTINGS])
    projections = load_projections(settings["module"])
    _watch_metrics(EventStore(settings["url"]), projections)
    return create_app(
        AsyncEventStore(settings["url"]),
        projections=projections,
        token=settings["token"],
        heartbeat_seconds=settings["heartbeat"],
        close_store=True,
    )


def _watch_metrics(store: EventStore, projections: list[Any]) -> None:
    """/metrics (with prometheus-client installed): this process's appends, the projections' progress at each scrape."""
    if importlib.util.find_spec("prometheus_client") is not None:
        from eventstore import metrics

        metrics.enable()
        metrics.watch(store, projections)

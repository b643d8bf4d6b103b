"""``eventstore serve``: the web API (:mod:`eventstore.web`) under uvicorn.

Loopback by default; any other address needs a token, so that an open port
never means an open event store (pgqueuer's ``pgq web`` rule).
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
from typing import Annotated

import typer

from eventstore.cli.context import state
from eventstore.cli.errors import CliError, reports_errors
from eventstore.cli.output import status
from eventstore.web import loop as event_loop

__all__ = ["serve"]


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
    if importlib.util.find_spec("prometheus_client") is not None:
        from eventstore import metrics

        # /metrics: this process's appends, and the projections' progress read at each scrape.
        metrics.enable()
        metrics.watch(context.store(), projections)

    async def run() -> None:
        async with AsyncEventStore(engine) as store:
            app = create_app(store, projections=projections, token=token or None, heartbeat_seconds=heartbeat)
            config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
            status(
                f"serving the dashboard on http://{host}:{port}/ and the web API on /api/ "
                f"({'token required' if token else 'no token'})"
            )
            await uvicorn.Server(config).serve()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a server normally ends
        event_loop.run(run())  # on uvloop where it is installed

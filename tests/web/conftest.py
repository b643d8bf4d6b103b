"""A real uvicorn server for the web tests: 127.0.0.1, a free port, stopped by its own handle."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from eventstore.store import AsyncEventStore
from eventstore.web import create_app
from eventstore.web import loop as event_loop


class WebServer:
    """``create_app(AsyncEventStore(url), ...)`` under uvicorn in a thread with its own event loop.

    The socket is bound and listening before the thread starts, so the port is
    known at once and a client's first connection simply waits in the backlog
    until uvicorn accepts it: :meth:`start` returns once the server answers.
    """

    def __init__(
        self,
        url: str,
        *,
        mount: str = "",
        event_loop: str = "asyncio",
        prepare: Callable[[Any], Any] | None = None,
        **app_options: Any,
    ) -> None:
        self.url = url
        self.mount = mount
        self.prepare = prepare
        self.event_loop = event_loop
        self.app_options = app_options
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.base_url = f"http://127.0.0.1:{self.socket.getsockname()[1]}{mount}"
        self.server: uvicorn.Server | None = None
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="uvicorn-under-test", daemon=True)

    def _run(self) -> None:
        try:
            event_loop.run(self._serve(), use_uvloop=self.event_loop == "uvloop")
        except BaseException as error:  # reported by start()/stop()
            self.failure = error
        finally:
            self.ready.set()

    async def _serve(self) -> None:
        async with AsyncEventStore(self.url) as store:
            app = create_app(store, **self.app_options)
            if self.prepare is not None:  # what a user does with the app before serving it
                app = self.prepare(app)
            if self.mount:  # inside another app, as a user mounts it
                app = Starlette(routes=[Mount(self.mount, app=app)])
            config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
            self.server = uvicorn.Server(config)
            self.ready.set()
            await self.server.serve(sockets=[self.socket])

    def start(self) -> WebServer:
        self.thread.start()
        assert self.ready.wait(10), "the server thread did not start"
        assert self.failure is None, self.failure
        # The first request waits in the listen backlog until uvicorn accepts: no polling needed.
        response = httpx.get(f"{self.base_url}/api/no-such-endpoint", timeout=10, headers=self.auth_headers())
        assert response.status_code == 404, response.text
        return self

    def auth_headers(self) -> dict[str, str]:
        token = self.app_options.get("token")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(15)
        self.socket.close()
        assert not self.thread.is_alive(), "uvicorn did not stop within 15 s"
        assert self.failure is None, self.failure


@pytest.fixture
def serve_web(database_url: str) -> Iterator[Callable[..., WebServer]]:
    """``serve_web(token=..., projections=..., heartbeat_seconds=..., event_loop="uvloop")``: a started server.

    On this test's database (or ``url``); ``prepare(app)`` returns the app to serve (e.g. with middleware).
    """
    servers: list[WebServer] = []

    def start(
        url: str | None = None,
        *,
        mount: str = "",
        event_loop: str = "asyncio",
        prepare: Callable[[Any], Any] | None = None,
        **app_options: Any,
    ) -> WebServer:
        server = WebServer(url or database_url, mount=mount, event_loop=event_loop, prepare=prepare, **app_options)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def web(serve_web: Callable[..., WebServer]) -> WebServer:
    """A server without a token, projections or options."""
    return serve_web()

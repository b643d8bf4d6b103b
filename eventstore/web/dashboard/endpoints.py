"""The dashboard's Starlette endpoints: the page, its live fragments over SSE, Retry and Skip.

Retry and Skip are ``POST /dashboard/projections/{name}/retry|skip``
(:func:`eventstore.admin.retry` / :func:`~eventstore.admin.skip` in a
thread). They need the ``HX-Request`` header htmx sends, which a cross-site
form cannot send, so another site cannot press them through a browser.

With a token (:mod:`eventstore.web.auth`): open ``/?token=<token>`` once; the
page sets an HttpOnly, SameSite=Strict cookie, redirects to ``/`` (so the
token leaves the address bar) and carries the token in its own POSTs'
``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import AsyncIterator
from html import escape
from pathlib import Path

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from eventstore import admin
from eventstore.errors import ProjectionError, ProjectionNotFound
from eventstore.web.errors import RequestError

from .filters import log_filter
from .render import render_log_form
from .sampler import Dashboard
from .snapshot import LOG_EVENTS

__all__ = ["STATIC", "TEMPLATE", "TOKEN_COOKIE", "WEB", "events", "page", "retry", "skip"]

WEB = Path(__file__).parent.parent
"""``eventstore/web``: the page's template (``templates/``) and assets (``static/``) live there, beside the web API."""
STATIC = WEB / "static"
TEMPLATE = string.Template((WEB / "templates" / "dashboard.html").read_text(encoding="utf-8"))
TOKEN_COOKIE = "eventstore_token"


def _dashboard(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


async def page(request: Request) -> Response:
    """``GET /[?category=C][&type=T][&stream=S]``: the page, with a first snapshot in it; filters apply to its log."""
    base = _base(request)
    token: str | None = request.app.state.token
    if token is not None and "token" in request.query_params:
        # The middleware accepted the token from the query; keep it in a cookie and drop it from the address.
        response = RedirectResponse(f"{base}/", status_code=303)
        response.set_cookie(TOKEN_COOKIE, token, path=f"{base}/", httponly=True, samesite="strict")
        return response
    log = log_filter(request.query_params)
    fragments = await _dashboard(request).snapshot_fragments(base, log)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = TEMPLATE.substitute(
        base=escape(base),
        events_url=escape(f"{base}/dashboard/events" + (f"?{log.query()}" if log else "")),
        log_form=render_log_form(base, log),
        log_events=LOG_EVENTS,
        headers=escape(json.dumps(headers)),
        store=fragments.get("store", ""),
        projections=fragments.get("projections", ""),
        log=fragments.get("log", ""),
    )
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})


async def events(request: Request) -> EventSourceResponse:
    """``GET /dashboard/events[?category=C][&type=T][&stream=S]``: the page's fragments as SSE messages.

    The event name is the id of the element to replace; the filters apply to the log.
    """
    dashboard = _dashboard(request)
    base = _base(request)
    log = log_filter(request.query_params)

    async def messages() -> AsyncIterator[ServerSentEvent]:
        async for fragments in dashboard.follow(base, log):
            for name, fragment in fragments.items():
                yield ServerSentEvent(fragment, event=name)

    return EventSourceResponse(
        messages(),
        ping=request.app.state.heartbeat_seconds,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def retry(request: Request) -> Response:
    """``POST /dashboard/projections/{name}/retry``: :func:`eventstore.admin.retry`."""
    return await _resolve(request, "retry")


async def skip(request: Request) -> Response:
    """``POST /dashboard/projections/{name}/skip``: :func:`eventstore.admin.skip`."""
    return await _resolve(request, "skip")


async def _resolve(request: Request, action: str) -> Response:
    if request.headers.get("hx-request") != "true":
        raise RequestError(403, "send the HX-Request: true header (the dashboard's buttons do)")
    dashboard = _dashboard(request)
    name = request.path_params["name"]
    if name not in dashboard.names:
        raise RequestError(404, f"projection {name!r} is not one this app serves")
    operation = admin.retry if action == "retry" else admin.skip
    try:
        position = await asyncio.to_thread(operation, dashboard.sync_store(), name)
    except ProjectionNotFound:
        raise
    except ProjectionError as error:
        raise RequestError(409, str(error)) from error
    dashboard.wake()
    done = "retrying" if action == "retry" else "skipped"
    return HTMLResponse(f"{escape(name)}: {done} event {position}")

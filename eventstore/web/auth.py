"""The token rule: with a token, every request carries ``Authorization: Bearer <token>`` or gets 401.

A browser cannot put a header on a page it navigates to, nor on an
``EventSource``, so for the dashboard (:mod:`eventstore.web.dashboard`) a
GET or HEAD request may instead carry the token as ``?token=`` (the page
then moves it into a cookie and redirects) or in the HttpOnly, SameSite=Strict
``eventstore_token`` cookie. Every other method (the dashboard's Retry and
Skip too) needs the header.

pgqueuer's ``pgq web`` is the model: loopback by default, a token otherwise.
The comparison is :func:`hmac.compare_digest` on bytes (constant time in the
token's content, so response timing does not reveal how much of a guess was right).
"""

from __future__ import annotations

import contextlib
import hmac
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from eventstore.errors import ConfigurationError
from eventstore.web.errors import error_response

__all__ = ["BearerToken"]


class BearerToken:
    """ASGI middleware: HTTP requests without the right bearer token get 401 and a JSON error."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        if not token or token != token.strip():
            raise ConfigurationError(
                "the web token is empty or has leading or trailing spaces; pass a non-empty --token "
                "(or EVENTSTORE_WEB_TOKEN), e.g. from `python -c 'import secrets; print(secrets.token_urlsafe())'`"
            )
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and nothing else: the app has no websockets)
            await self.app(scope, receive, send)
            return
        given = b""
        cookie = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
            elif name == b"cookie":
                cookie = value
        if not given and scope["method"] in ("GET", "HEAD") and self._browser_token(scope, cookie):
            await self.app(scope, receive, send)
            return
        if not hmac.compare_digest(given, self._expected):
            problem = "a wrong bearer token" if given else "no Authorization header"
            response = error_response(
                401,
                f"this server needs a token and the request has {problem}; send `Authorization: Bearer <token>`",
                headers={"WWW-Authenticate": 'Bearer realm="eventstore"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _browser_token(self, scope: Scope, cookie: bytes) -> bool:
        """The token in ``?token=`` or the ``eventstore_token`` cookie (GET and HEAD only: see the module)."""
        candidates = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        if cookie:
            jar: SimpleCookie = SimpleCookie()
            with contextlib.suppress(CookieError):
                jar.load(cookie.decode("latin-1"))
            if "eventstore_token" in jar:
                candidates.append(jar["eventstore_token"].value)
        return any(hmac.compare_digest(candidate.encode(), self._token) for candidate in candidates)

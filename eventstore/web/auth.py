"""The token rule: with a token, every request carries ``Authorization: Bearer <token>`` or gets 401.

pgqueuer's ``pgq web`` is the model: loopback by default, a token otherwise.
The comparison is :func:`hmac.compare_digest` on bytes (constant time in the
token's content, so response timing does not reveal how much of a guess was right).
"""

from __future__ import annotations

import hmac

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and nothing else: the app has no websockets)
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
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

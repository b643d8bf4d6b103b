"""The one table from errors to HTTP statuses, and the JSON error body: ``{"error": "<one line>"}``.

Handlers raise; they never build error responses themselves. The library's
errors keep their own message (its first line); :class:`RequestError` is a
mistake in the request (a parameter, the body, the token), named in the
words of the HTTP client (``expected_version``, ``query parameter position``).
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from eventstore.errors import (
    AuthenticationFailed,
    ConcurrencyError,
    DatabaseNotFound,
    DatabaseUnavailable,
    DuplicateEventId,
    EventStoreError,
    InvalidEvent,
    PermissionDenied,
    ProjectionNotFound,
    ProjectionTimeout,
    SchemaNotReady,
    StreamNotFound,
    UnknownPosition,
    WrongExpectedVersion,
    first_line,
)

__all__ = ["STATUS_OF", "RequestError", "error_response", "exception_handlers", "status_of"]


class RequestError(Exception):
    """A mistake in the request, answered with ``status`` and this one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


STATUS_OF: tuple[tuple[type[BaseException], int], ...] = (
    (WrongExpectedVersion, 409),
    (DuplicateEventId, 409),
    (ConcurrencyError, 409),
    (InvalidEvent, 422),
    (UnknownPosition, 422),  # a position the client passed names no event
    (StreamNotFound, 404),
    (ProjectionNotFound, 404),
    (ProjectionTimeout, 504),
    (DatabaseUnavailable, 503),
    (AuthenticationFailed, 503),  # the server's own configuration: the client can only retry later
    (DatabaseNotFound, 503),
    (SchemaNotReady, 503),
    (PermissionDenied, 503),
)
"""Library error -> HTTP status, first match wins (subclasses before their bases). Anything else: 500."""


def status_of(error: BaseException) -> int:
    """The HTTP status for ``error`` (:data:`STATUS_OF`; a :class:`RequestError` carries its own; else 500)."""
    if isinstance(error, RequestError):
        return error.status
    if isinstance(error, HTTPException):
        return error.status_code
    for kind, status in STATUS_OF:
        if isinstance(error, kind):
            return status
    return 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body every endpoint answers with: ``{"error": message}`` (one line)."""
    return JSONResponse({"error": first_line(message)}, status_code=status, headers=headers)


async def _handle(request: Request, error: Exception) -> Response:
    status = status_of(error)
    if status == 500:
        return error_response(500, f"internal error: {type(error).__name__}; see the server's log")
    if isinstance(error, HTTPException):
        return error_response(status, str(error.detail), dict(error.headers or {}))
    message = first_line(error)
    if isinstance(error, DatabaseUnavailable):
        message += "; retry later"
    return error_response(status, message)


def exception_handlers() -> dict[Any, Any]:
    """Starlette's ``exception_handlers``: every error through :func:`status_of` to a JSON body."""
    # Starlette picks a handler along the error's MRO; Exception's runs in its outermost
    # middleware, which answers and then re-raises, so the server logs the bug too.
    return {Exception: _handle, HTTPException: _handle, RequestError: _handle, EventStoreError: _handle}

"""The poison-event policy: what happens when a handler keeps failing on one event.

A handler exception rolls its batch back. The session commits the events
before the failing one on their own, then calls the handler on the failing
event again, ``retry_attempts`` attempts in all (the first included) with
exponential backoff. If it still fails, :func:`apply_policy` applies the
projection's ``on_error``: ``stop`` marks the projection failed (position,
error and a short traceback in ``projection_checkpoints``, a row in
``projection_failures``) until an operator retries or skips it; ``skip``
records the event as skipped and moves the checkpoint past it. A lost database
connection is never a poison event (:func:`guarded` lets it through).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

from sqlalchemy.engine import Connection

from eventstore.database import is_connection_error, translate_driver_error
from eventstore.errors import ConfigurationError
from eventstore.projection import Projection
from eventstore.runner import checkpoints
from eventstore.runner.checkpoints import Cursor, StaleCheckpoint, cursor_of
from eventstore.runner.ownership import LeaseLost
from eventstore.types import RecordedEvent

__all__ = ["HandlerFailed", "apply_policy", "describe", "guarded", "handler_failure"]

logger = logging.getLogger(__name__)


class HandlerFailed(Exception):
    """A handler raised on event ``index`` of the batch (None: somewhere in an ``apply_batch``)."""

    def __init__(self, index: int | None, error: BaseException) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


def guarded(connection: Connection, index: int | None, call: Callable[[], object]) -> None:
    """Run a handler call; its exception becomes :class:`HandlerFailed` unless the connection or the setup is at fault.

    A lost connection propagates as it is (the worker retries later); a
    prepared statement lost by a pooler, as the
    :class:`~eventstore.errors.ConfigurationError` that says what to change:
    neither is the event's fault, so neither counts as a poison attempt.
    """
    try:
        call()
    except Exception as error:
        failure = handler_failure(connection, index, error)
        if failure is None:
            raise
        raise failure from error


def handler_failure(connection: Connection, index: int | None, error: Exception) -> Exception | None:
    """What :func:`guarded` raises for a handler's ``error`` (raise it ``from error``); None: re-raise ``error``.

    For loops that run many handler calls in one ``try`` (the session's per-event dispatch).
    """
    if is_connection_error(error, connection):
        return None
    translated = translate_driver_error(connection.engine, error)
    if isinstance(translated, ConfigurationError):
        return translated
    return HandlerFailed(index, error)


def describe(error: BaseException) -> str:
    """``Type: message``, at most 2000 characters, as stored and logged."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 2000 else text[:1997] + "..."


def apply_policy(
    connection: Connection,
    projection: Projection,
    event: RecordedEvent,
    cursor: Cursor,
    error: BaseException,
    attempts: int,
    *,
    token: int,
) -> str:
    """Record the poison ``event`` and apply ``projection.on_error``, in one transaction on ``connection``.

    Returns ``"skipped"`` (the checkpoint moved past the event) or
    ``"failed"`` (the projection is stopped at it). Raises
    :class:`StaleCheckpoint` when the checkpoint is no longer at ``cursor``,
    :class:`~eventstore.runner.ownership.LeaseLost` when the lease's fencing
    token is no longer ``token``.
    """
    name = projection.name
    description = describe(error)
    short_traceback = "".join(traceback.format_exception(error, limit=-8))[-4000:]
    skip = projection.on_error == "skip"
    with connection.begin():
        current = checkpoints.lock(connection, name)
        if current is None or current.lease_token != token:
            raise LeaseLost(name)
        if current.cursor != cursor:
            raise StaleCheckpoint
        checkpoints.record_failure(
            connection,
            name,
            event,
            error=description,
            traceback=short_traceback,
            attempts=attempts,
            status="skipped" if skip else "failed",
        )
        if skip:
            checkpoints.advance(connection, name, cursor_of(event))
        else:
            checkpoints.mark_failed(connection, name, event.global_position, description, short_traceback)
    extra = {
        "projection_name": name,
        "global_position": event.global_position,
        "event_type": event.type,
        "stream_id": event.stream_id,
        "attempts": attempts,
        "error": description,
    }
    if skip:
        logger.warning("projection %s: skipped poison event at position %d: %s", name,
                       event.global_position, description, extra=extra)  # fmt: skip
        return "skipped"
    logger.error("projection %s: stopped at poison event at position %d: %s", name,
                 event.global_position, description, extra=extra)  # fmt: skip
    return "failed"

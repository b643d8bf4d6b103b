"""The store's operations, written once without I/O, for the sync and the asyncio store.

psycopg's own pattern (its libpq protocol is generators driven by a sync or an
async waiter): each operation here is a generator that checks its arguments
(:mod:`~eventstore.store.validation`), yields the statements it needs as
:class:`Read` and :class:`Write` steps (their SQL is :mod:`~eventstore.store.sql`),
receives their rows, and returns the result or raises our error. A step that
fails is thrown into the generator, which decides what the failure means
(a retried request, a reused event id, a lost race, a wrong version).

:class:`~eventstore.store.EventStore` and
:class:`~eventstore.store.AsyncEventStore` only run steps ("send and wait"),
through :func:`drive` and :func:`stream` or :func:`drive_async` and
:func:`stream_async`: those four are the only code written twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import psycopg
import sqlalchemy as sa

from eventstore.errors import (
    DatabaseUnavailable,
    DuplicateEventId,
    InvalidEvent,
    UnknownPosition,
    WrongExpectedVersion,
    first_line,
)
from eventstore.store import sql
from eventstore.store.validation import (
    MAX_EVENT_TYPE_LENGTH,
    MAX_INT32,
    MAX_INT64,
    MAX_STREAM_ID_LENGTH,
    PreparedAppend,
    check_count,
    check_names,
    check_text,
    prepare_append,
)
from eventstore.types import ANY, AppendResult, ExpectedVersion, NewEvent, RecordedEvent

__all__ = [
    "APPEND_RETRIES",
    "Deliver",
    "Read",
    "ReadAllArguments",
    "Write",
    "append",
    "drive",
    "drive_async",
    "head_position",
    "held_back",
    "order_of",
    "read_after",
    "read_all_arguments",
    "read_stream",
    "stream",
    "stream_async",
    "stream_version",
]

logger = logging.getLogger(__name__)

APPEND_RETRIES = 20
"""How many lost ``ANY`` races an append retries before it gives up."""

T = TypeVar("T")


class Read(NamedTuple):
    """One read-only statement; its rows (tuples) come back.

    A store runs it as an autocommit statement on a connection of its own, or
    in the caller's transaction for an append there.
    """

    statement: str
    parameters: dict[str, Any]


class Write(NamedTuple):
    """Statements for one transaction; the rows of the last come back.

    One statement runs in autocommit mode (one round trip). With
    ``wake_up``, the store sends the wake-up (:data:`sql.WAKE_UP`) once the
    transaction has committed rows, on the same connection; a wake-up that
    fails is logged and never fails the append.
    """

    statements: tuple[tuple[str, dict[str, Any]], ...]
    wake_up: bool


class Deliver(NamedTuple):
    """Events for the reader (streamed operations only); nothing comes back."""

    events: list[RecordedEvent]


Step = Read | Write | Deliver
Steps = Generator[Step, Any, T]

# What a step may raise for the operation to interpret: psycopg's errors, raw
# or wrapped by SQLAlchemy (an append in the caller's transaction).
_DRIVER_ERRORS = (sa.exc.DBAPIError, psycopg.Error)


# -- the waiters ------------------------------------------------------------------


def drive(steps: Steps[T], execute: Callable[[Any], Any]) -> T:
    """Run ``steps`` to their result, each step with ``execute`` (sync)."""
    try:
        step = next(steps)
        while True:
            try:
                outcome = execute(step)
            except Exception as error:  # the operation decides what it means
                step = steps.throw(error)
            else:
                step = steps.send(outcome)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def drive_async(steps: Steps[T], execute: Callable[[Any], Awaitable[Any]]) -> T:
    """Run ``steps`` to their result, each step with ``await execute(step)`` (asyncio)."""
    try:
        step = next(steps)
        while True:
            try:
                outcome = await execute(step)
            except Exception as error:  # the operation decides what it means
                step = steps.throw(error)
            else:
                step = steps.send(outcome)
    except StopIteration as stop:
        result: T = stop.value
        return result


def stream(steps: Steps[None], execute: Callable[[Any], Any]) -> Iterator[RecordedEvent]:
    """The events ``steps`` deliver, lazily: each step runs when the reader needs more (sync)."""
    outcome = None
    while True:
        try:
            step = steps.send(outcome)
        except StopIteration:
            return
        if isinstance(step, Deliver):
            yield from step.events
            outcome = None
        else:
            outcome = execute(step)


async def stream_async(steps: Steps[None], execute: Callable[[Any], Awaitable[Any]]) -> AsyncIterator[RecordedEvent]:
    """The events ``steps`` deliver, lazily: each step runs when the reader needs more (asyncio)."""
    outcome = None
    while True:
        try:
            step = steps.send(outcome)
        except StopIteration:
            return
        if isinstance(step, Deliver):
            for event in step.events:
                yield event
            outcome = None
        else:
            outcome = await execute(step)


# -- append ----------------------------------------------------------------------


def append(
    stream_id: str,
    events: Sequence[NewEvent],
    expected_version: int | ExpectedVersion,
    *,
    max_append_events: int,
    max_event_bytes: int,
    notify: bool,
    own_transaction: bool,
) -> Steps[AppendResult]:
    """Append ``events`` to ``stream_id`` (see :meth:`EventStore.append` for the contract).

    ``own_transaction``: the store runs each :class:`Write` as its own
    transaction and sends the wake-up after the commit (the trigger is
    silenced for it; see :mod:`eventstore.store.appender`). Otherwise the
    writes run in the caller's transaction and the trigger notifies when it
    commits (``notify=False``: it does not).

    A short insert (fewer rows than events, the insert's ``WHERE`` refused)
    means a retried request, a reused event id, or a version mismatch:
    :func:`_explain_short_insert` tells which. A unique violation on the
    stream's version means a concurrent append took it first: with ``ANY``
    the append goes again, queued behind the stream's other writers by a
    transaction-scoped advisory lock (:data:`sql.STREAM_LOCK`), at most
    :data:`APPEND_RETRIES` times.

    Raises:
        InvalidEvent, WrongExpectedVersion, DuplicateEventId: as the stores document;
        DatabaseUnavailable: the connection was lost twice (a lost connection is retried
            once in the store's own transaction: event ids make that safe).
    """
    prepared = prepare_append(
        stream_id, events, expected_version, max_append_events=max_append_events, max_event_bytes=max_event_bytes
    )
    insert = (sql.APPEND["off" if own_transaction or not notify else "on"], prepared.parameters)
    write = Write((insert,), own_transaction and notify)
    for attempt in range(APPEND_RETRIES):
        if attempt == 1:
            # After a lost race, queue behind the other retriers of this stream
            # instead of racing them again. The lock is its own statement so that
            # the insert's snapshot (READ COMMITTED) is taken after the wait.
            write = Write(((sql.STREAM_LOCK, {"stream_id": prepared.stream_id}), insert), write.wake_up)
        try:
            try:
                rows = yield write
            except DatabaseUnavailable:
                if not own_transaction:
                    raise
                # A dropped connection is safe to retry once: event ids make
                # the append idempotent even if the first commit went through.
                logger.warning("append to %s: connection lost, retrying once", prepared.stream_id)
                rows = yield write
        except _DRIVER_ERRORS as error:
            driver_error = getattr(error, "orig", None) or error
            constraint = getattr(getattr(driver_error, "diag", None), "constraint_name", None)
            if constraint == "uq_events_event_id":
                return (yield from _explain_short_insert(prepared))
            if constraint != "uq_events_stream_id_stream_version":
                if isinstance(driver_error, psycopg.DataError | psycopg.IntegrityError):
                    raise InvalidEvent("events", first_line(driver_error)) from error
                raise
            # A concurrent append took the next version first: with ANY we
            # simply go again; otherwise the expectation no longer holds.
            if prepared.expected is not ANY:
                actual = yield from stream_version(prepared.stream_id)
                raise WrongExpectedVersion(prepared.stream_id, prepared.expected, actual) from error
            continue
        if len(rows) == len(prepared.event_ids):
            last_position, last_version = max(rows, key=lambda row: row[1])
            return AppendResult(prepared.stream_id, last_version, last_position)
        # No row: the expectation failed, or this is a retried request.
        return (yield from _explain_short_insert(prepared))
    actual = yield from stream_version(prepared.stream_id)
    raise WrongExpectedVersion(prepared.stream_id, f"{ANY} (lost {APPEND_RETRIES} races)", actual)


class _Stored(NamedTuple):
    """A row of :data:`sql.STORED_BY_ID`."""

    event_id: Any
    stream_id: str
    stream_version: int
    event_type: str
    data: Any
    metadata: Any
    global_position: int


def _explain_short_insert(prepared: PreparedAppend) -> Steps[AppendResult]:
    """Nothing was inserted: a retried request (the original result), a reused event id, or a version mismatch."""
    rows = yield Read(sql.STORED_BY_ID, {"event_ids": prepared.event_ids})
    stored = [_Stored(*row) for row in rows]
    if len(stored) == len(prepared.event_ids):
        by_id = {row.event_id: row for row in stored}
        mismatch = next(
            (detail for index in range(len(prepared.event_ids))
             if (detail := prepared.differs_from(index, by_id[prepared.event_ids[index]]))),
            None,
        )  # fmt: skip
        if mismatch is None:
            last = by_id[prepared.event_ids[-1]]
            return AppendResult(prepared.stream_id, last.stream_version, last.global_position, True)
        raise DuplicateEventId(*mismatch)
    if stored:
        first = stored[0]
        raise DuplicateEventId(
            first.event_id,
            f"(stream {first.stream_id!r} version {first.stream_version}) and this append holds only some "
            "already-stored events",
        )
    actual = yield from stream_version(prepared.stream_id)
    raise WrongExpectedVersion(prepared.stream_id, prepared.expected, actual)


# -- reads -----------------------------------------------------------------------


def stream_version(stream_id: str) -> Steps[int]:
    """The version of the stream's last event (0 when the stream does not exist)."""
    check_text("stream_id", stream_id, MAX_STREAM_ID_LENGTH)
    rows = yield Read(sql.STREAM_VERSION, {"stream_id": stream_id})
    return int(rows[0][0])


def read_stream(
    stream_id: str, *, from_version: int | None, backwards: bool, limit: int | None
) -> Steps[list[RecordedEvent]]:
    """One stream's events in version order (``backwards``: newest first); see :meth:`EventStore.read_stream`."""
    check_text("stream_id", stream_id, MAX_STREAM_ID_LENGTH)
    start = check_count("from_version", from_version, minimum=1, maximum=MAX_INT32)
    count = check_count("limit", limit, minimum=0, maximum=MAX_INT64)
    if start is None:
        start = MAX_INT32 if backwards else 1
    parameters = {"stream_id": stream_id, "start": start, "limit": count}
    rows = yield Read(sql.read_stream(backwards=backwards), parameters)
    return [sql.recorded(row) for row in rows]


class ReadAllArguments(NamedTuple):
    """:meth:`EventStore.read_all`'s arguments, checked."""

    after: int | None
    limit: int | None
    event_types: list[str] | None
    categories: list[str] | None


def read_all_arguments(
    after: int | None, limit: int | None, event_types: Iterable[str] | None, categories: Iterable[str] | None
) -> ReadAllArguments:
    """Check :meth:`EventStore.read_all`'s arguments; raises :class:`InvalidEvent` naming the bad one."""
    return ReadAllArguments(
        check_count("after", after, minimum=0, maximum=MAX_INT64),
        check_count("limit", limit, minimum=0, maximum=MAX_INT64),
        check_names("event_types", event_types, MAX_EVENT_TYPE_LENGTH),
        check_names("categories", categories, MAX_STREAM_ID_LENGTH),
    )


def read_after(
    cursor: tuple[int, int],
    *,
    limit: int | None,
    event_types: list[str] | None,
    categories: list[str] | None,
    batch_size: int,
    stream_ids: list[str] | None = None,
) -> Steps[None]:
    """Deliver the readable events after ``cursor`` in the global order, ``batch_size`` per statement.

    Each batch is its own autocommit statement, fenced by the gap rule
    (:func:`sql.read_after`): the reader never holds a transaction id, so it
    cannot hold back the fence itself.
    """
    query = sql.read_after(categories, event_types, stream_ids)
    filters = sql.filter_parameters(categories, event_types, stream_ids)
    order, position = cursor
    remaining = limit
    while remaining is None or remaining > 0:
        batch = batch_size if remaining is None else min(batch_size, remaining)
        parameters = {"after_order": str(order), "after_position": position, "batch": batch, **filters}
        rows = yield Read(query, parameters)
        yield Deliver([sql.recorded(row) for row in rows])
        if len(rows) < batch:
            return
        order, position = rows[-1][1], rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)


def order_of(position: int) -> Steps[tuple[int, int]]:
    """The ``(transaction_order, global_position)`` cursor of a stored event; :class:`UnknownPosition` if none."""
    rows = yield Read(sql.ORDER_OF_POSITION, {"position": position})
    if not rows:
        raise UnknownPosition(position)
    return int(rows[0][0]), position


def head_position() -> Steps[int]:
    """The ``global_position`` of the last event readers can see now (0 if none)."""
    rows = yield Read(sql.HEAD, {})
    return int(rows[0][0]) if rows else 0


def held_back() -> Steps[bool]:
    """True when committed events wait behind a still-running transaction (the fence)."""
    rows = yield Read(sql.HELD_BACK, {})
    return bool(rows[0][0])

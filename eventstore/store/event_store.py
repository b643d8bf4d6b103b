"""The :class:`EventStore`: append to streams, read them back in stream or global order.

Its SQL lives in :mod:`eventstore.store.sql`, its input checks in
:mod:`eventstore.store.validation`, the connections of its appends (and their
wake-ups) in :mod:`eventstore.store.appender`. The gap rule it implements is
described in :mod:`eventstore.store`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from eventstore.database import autocommit_driver, create_engine, translate_driver_errors
from eventstore.errors import (
    DatabaseUnavailable,
    DuplicateEventId,
    InvalidEvent,
    UnknownPosition,
    WrongExpectedVersion,
    first_line,
)
from eventstore.store import sql
from eventstore.store.appender import append_connections
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

__all__ = ["EventStore"]

logger = logging.getLogger(__name__)

_APPEND_RETRIES = 20


class EventStore:
    """Append events to streams and read them back, in stream or global order.

    ``url_or_engine`` is a ``postgresql+psycopg://`` URL, a libpq
    ``postgresql://`` URL, or a SQLAlchemy :class:`~sqlalchemy.engine.Engine`
    using psycopg 3. The schema must have been applied with
    :func:`eventstore.migrate`.

    Limits (keyword arguments) bound what one call can make the database or a
    reader hold in memory: ``max_append_events`` events per append,
    ``max_event_bytes`` of JSON (data plus metadata) per event, and reads in
    batches of ``read_batch_size`` events.

    Every append wakes the projection workers (a NOTIFY on
    :data:`NOTIFY_CHANNEL`, sent just after the commit, see
    :mod:`eventstore.store.appender`). ``notify=False`` sends none, for bulk imports
    nobody needs to see live: workers then find the events on their fallback
    timer.

    Appends run on a few autocommit connections of the store's own (at most 4
    kept open between appends, opened through the engine and shared by every
    store on the same engine), outside the engine's pool: see
    :mod:`eventstore.store.appender` for why.

    :meth:`close` (or ``with EventStore(url) as store:``) closes those
    connections, and the engine's pool when the store made the engine from a
    URL; an engine you pass in stays yours to dispose.
    """

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        max_append_events: int = 10_000,
        max_event_bytes: int = 1_048_576,
        read_batch_size: int = 500,
        notify: bool = True,
    ) -> None:
        self.engine = create_engine(url_or_engine)
        self._owns_engine = self.engine is not url_or_engine
        self.max_append_events = max_append_events
        self.max_event_bytes = max_event_bytes
        self.read_batch_size = read_batch_size
        self.notify = notify
        self._append_connections = append_connections(self.engine)

    def __repr__(self) -> str:
        return f"EventStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Close the idle append connections, and the engine's pool if the store created the engine.

        The store stays usable: a later call opens connections again.
        """
        self._append_connections.close()
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- append ---------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | ExpectedVersion = ANY,
        connection: Connection | None = None,
    ) -> AppendResult:
        """Append ``events`` to the end of ``stream_id``, atomically.

        ``expected_version`` is :data:`ANY`, :data:`NO_STREAM`,
        :data:`STREAM_EXISTS`, or the version of the stream's last event (0 =
        no stream). The first event of a stream gets version 1.

        With ``connection=`` the events are written inside the caller's
        SQLAlchemy transaction (in a savepoint, so a failed append leaves that
        transaction usable); they, and the wake-up notification, exist only
        if the caller commits.

        Idempotent: if every event id is already stored with the same stream,
        types and content (a retried request), nothing is written and the
        original result comes back with ``already_stored=True``.

        Raises:
            InvalidEvent: bad input (names the field); nothing was written.
            WrongExpectedVersion: the stream is at another version; nothing was written.
            DuplicateEventId: an event id is stored with other content; nothing was written.
            DatabaseUnavailable: PostgreSQL cannot be reached.
        """
        prepared = prepare_append(
            stream_id,
            events,
            expected_version,
            max_append_events=self.max_append_events,
            max_event_bytes=self.max_event_bytes,
        )
        for attempt in range(_APPEND_RETRIES):
            # After a lost race, queue behind the other retriers of this stream
            # instead of racing them again.
            queue = attempt > 0
            try:
                if connection is not None:
                    # A savepoint keeps the caller's transaction usable after a failure.
                    with connection.begin_nested():
                        rows = self._insert_in(connection, prepared, queue=queue)
                else:
                    rows = self._insert_in_own_transaction(prepared, queue=queue)
            except (sa.exc.DBAPIError, psycopg.Error) as error:
                driver_error = getattr(error, "orig", None) or error
                constraint = getattr(getattr(driver_error, "diag", None), "constraint_name", None)
                if constraint == "uq_events_event_id":
                    return self._explain_short_insert(connection, prepared)
                if constraint != "uq_events_stream_id_stream_version":
                    if isinstance(driver_error, psycopg.DataError | psycopg.IntegrityError):
                        raise InvalidEvent("events", first_line(driver_error)) from error
                    raise
                # A concurrent append took the next version first: with ANY we
                # simply go again; otherwise the expectation no longer holds.
                if prepared.expected is not ANY:
                    actual = self._current_version(connection, prepared.stream_id)
                    raise WrongExpectedVersion(prepared.stream_id, prepared.expected, actual) from error
                continue
            if len(rows) == len(prepared.event_ids):
                last_position, last_version = max(rows, key=lambda row: row[1])
                return AppendResult(prepared.stream_id, last_version, last_position)
            # No row: the expectation failed, or this is a retried request.
            return self._explain_short_insert(connection, prepared)
        actual = self._current_version(connection, prepared.stream_id)
        raise WrongExpectedVersion(prepared.stream_id, f"{ANY} (lost {_APPEND_RETRIES} races)", actual)

    def _insert_in(self, connection: Connection, prepared: PreparedAppend, *, queue: bool) -> list[Any]:
        if queue:
            # A transaction-scoped lock on the stream, taken in its own statement
            # so that the insert's snapshot (READ COMMITTED) is taken after the wait.
            connection.exec_driver_sql(sql.STREAM_LOCK, {"stream_id": prepared.stream_id})
        # The caller commits, so the trigger sends the wake-up then.
        statement = sql.APPEND["on" if self.notify else "off"]
        return list(connection.exec_driver_sql(statement, prepared.parameters).all())

    def _insert_in_own_transaction(self, prepared: PreparedAppend, *, queue: bool) -> list[Any]:
        """Insert as one autocommit statement (one round trip), then send the wake-up.

        The wake-up goes out after the commit, without waiting (see
        eventstore/appender.py); the trigger stands aside for this transaction.
        """
        parameters = prepared.parameters
        for attempt in (1, 2):
            try:
                with self._append_connections.connection() as connection:
                    driver = connection.driver
                    if queue:
                        with driver.transaction():
                            driver.execute(sql.STREAM_LOCK, {"stream_id": prepared.stream_id})
                            rows = driver.execute(sql.APPEND["off"], parameters).fetchall()
                    else:
                        rows = driver.execute(sql.APPEND["off"], parameters).fetchall()
                    if rows and self.notify:
                        connection.send_wake_up()
                return rows
            except DatabaseUnavailable:
                # A dropped connection is safe to retry once: event ids make
                # the append idempotent even if the first commit went through.
                if attempt == 2:
                    raise
                logger.warning("append to %s: connection lost, retrying once", prepared.stream_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def _current_version(self, connection: Connection | None, stream_id: str) -> int:
        if connection is not None:
            return int(connection.exec_driver_sql(sql.STREAM_VERSION, {"stream_id": stream_id}).scalar_one())
        return self.stream_version(stream_id)

    def _explain_short_insert(self, connection: Connection | None, prepared: PreparedAppend) -> AppendResult:
        """Nothing was inserted: a retried request, a reused event id, or a version mismatch."""
        if connection is None:
            with translate_driver_errors(self.engine), self.engine.connect() as own:
                return self._explain_short_insert(own, prepared)
        stored = connection.exec_driver_sql(sql.STORED_BY_ID, {"event_ids": prepared.event_ids}).all()
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
        actual = connection.exec_driver_sql(sql.STREAM_VERSION, {"stream_id": prepared.stream_id}).scalar_one()
        raise WrongExpectedVersion(prepared.stream_id, prepared.expected, actual)

    # -- read -----------------------------------------------------------------

    def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """The events of one stream in version order (``backwards``: newest first).

        ``from_version`` is the first version returned: 1 by default going
        forwards, the last version going backwards. An unknown stream gives
        an empty list.
        """
        check_text("stream_id", stream_id, MAX_STREAM_ID_LENGTH)
        start = check_count("from_version", from_version, minimum=1, maximum=MAX_INT32)
        count = check_count("limit", limit, minimum=0, maximum=MAX_INT64)
        if start is None:
            start = MAX_INT32 if backwards else 1
        with autocommit_driver(self.engine) as driver:
            rows = driver.execute(
                sql.read_stream(backwards=backwards), {"stream_id": stream_id, "start": start, "limit": count}
            ).fetchall()
        return [sql.recorded(row) for row in rows]

    def read_all(
        self,
        *,
        after: int | None = None,
        limit: int | None = None,
        event_types: Iterable[str] | None = None,
        categories: Iterable[str] | None = None,
    ) -> Iterator[RecordedEvent]:
        """Every event in the global order, fetched lazily in batches.

        ``after`` is the ``global_position`` of the last event the caller
        consumed (None or 0: from the start); reading continues exactly after
        it in the global order (see the gap rule above). Events still held
        back by a running transaction are not returned yet: read again later.

        Raises:
            UnknownPosition: ``after`` is not the position of a stored event.
            InvalidEvent: a bad argument (names it).
        """
        start = check_count("after", after, minimum=0, maximum=MAX_INT64)
        remaining = check_count("limit", limit, minimum=0, maximum=MAX_INT64)
        types = check_names("event_types", event_types, MAX_EVENT_TYPE_LENGTH)
        wanted_categories = check_names("categories", categories, MAX_STREAM_ID_LENGTH)
        cursor = self.order_of(start) if start else (0, 0)
        return self._read_from(cursor, remaining, types, wanted_categories)

    def read_after_cursor(
        self,
        cursor: tuple[int, int],
        *,
        limit: int | None = None,
        event_types: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
    ) -> Iterator[RecordedEvent]:
        """Like :meth:`read_all`, after a ``(transaction_order, global_position)`` cursor.

        For checkpoint owners (the projection runner) that keep the order key
        and so need no look-up of ``after``.
        """
        return self._read_from(cursor, limit, list(event_types or []) or None, list(categories or []) or None)

    def _read_from(
        self,
        cursor: tuple[int, int],
        remaining: int | None,
        event_types: list[str] | None,
        categories: list[str] | None,
    ) -> Iterator[RecordedEvent]:
        query = sql.read_after(categories, event_types)
        filters = sql.filter_parameters(categories, event_types)
        order, position = cursor
        while remaining is None or remaining > 0:
            batch = self.read_batch_size if remaining is None else min(self.read_batch_size, remaining)
            parameters = {"after_order": str(order), "after_position": position, "batch": batch, **filters}
            # Each batch is its own autocommit statement: the reader never
            # holds a transaction id, so it cannot hold back the fence itself.
            with autocommit_driver(self.engine) as driver:
                rows = driver.execute(query, parameters).fetchall()
            for row in rows:
                yield sql.recorded(row)
            if len(rows) < batch:
                return
            order, position = rows[-1][1], rows[-1][0]
            if remaining is not None:
                remaining -= len(rows)

    def head_position(self) -> int:
        """The ``global_position`` of the last event readers can see now (0 if none).

        ``read_all(after=store.head_position())`` returns only events that
        become readable later.
        """
        with translate_driver_errors(self.engine), self.engine.connect() as connection:
            position = connection.exec_driver_sql(sql.HEAD).scalar_one_or_none()
        return int(position or 0)

    def held_back(self) -> bool:
        """True when committed events wait behind a still-running transaction (the fence)."""
        with translate_driver_errors(self.engine), self.engine.connect() as connection:
            return bool(connection.exec_driver_sql(sql.HELD_BACK).scalar_one())

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event (0 when the stream does not exist)."""
        check_text("stream_id", stream_id, MAX_STREAM_ID_LENGTH)
        with translate_driver_errors(self.engine), self.engine.connect() as connection:
            return int(connection.exec_driver_sql(sql.STREAM_VERSION, {"stream_id": stream_id}).scalar_one())

    def order_of(self, position: int) -> tuple[int, int]:
        """The ``(transaction_order, global_position)`` cursor of a stored event.

        Raises:
            UnknownPosition: no stored event has this position.
        """
        with translate_driver_errors(self.engine), self.engine.connect() as connection:
            order = connection.exec_driver_sql(sql.ORDER_OF_POSITION, {"position": position}).scalar_one_or_none()
        if order is None:
            raise UnknownPosition(position)
        return int(order), position

    # -- validation -----------------------------------------------------------

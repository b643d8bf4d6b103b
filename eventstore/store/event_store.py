"""The :class:`EventStore`: append to streams, read them back in stream or global order.

Its SQL lives in :mod:`eventstore.store.sql`, its input checks in
:mod:`eventstore.store.validation`, the connections of its appends (and their
wake-ups) in :mod:`eventstore.store.appender`. The gap rule it implements is
described in :mod:`eventstore.store`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy.engine import Connection, Engine

from eventstore.database import autocommit_driver, create_engine, translate_driver_error
from eventstore.store import protocol
from eventstore.store.appender import append_connections
from eventstore.store.poolers import guard_engine, prepared_statements_for
from eventstore.store.telemetry import observe_append
from eventstore.types import ANY, AppendResult, ExpectedVersion, NewEvent, RecordedEvent

__all__ = ["EventStore"]

logger = logging.getLogger(__name__)


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
    URL; an engine you pass in stays yours to dispose. A store that is never
    closed releases the same when it is garbage-collected or the interpreter
    exits.

    ``prepared_statements``: psycopg prepares a statement on the server once
    it ran 5 times on a connection, which a pooler in transaction mode
    (PgBouncer before 1.21, or without ``max_prepared_statements``) cannot
    keep. None (the default) decides at the first connection: on when the
    server sees this process's own socket (a direct connection), off behind
    any pooler or proxy, with one INFO log line; see
    :mod:`eventstore.store.poolers`. True or False decides explicitly (True
    only for a direct connection or a pooler that keeps sessions).
    """

    def __init__(
        self,
        url_or_engine: str | Engine,
        *,
        max_append_events: int = 10_000,
        max_event_bytes: int = 1_048_576,
        read_batch_size: int = 500,
        notify: bool = True,
        prepared_statements: bool | None = None,
    ) -> None:
        self.engine = create_engine(url_or_engine)
        self._owns_engine = self.engine is not url_or_engine
        self.max_append_events = max_append_events
        self.max_event_bytes = max_event_bytes
        self.read_batch_size = read_batch_size
        self.notify = notify
        self._append_connections = append_connections(self.engine)
        self._prepared = prepared_statements_for(self.engine, prepared_statements)
        if self._owns_engine:  # then append(connection=store.engine.connect()) is ours to keep safe too
            guard_engine(self.engine, self._prepared)
        # A pool's connections ending with the program is normal (psycopg says
        # so for its own pool, and warns only for other connections): an engine
        # made here is disposed when the store is collected or at interpreter
        # exit, so a script that never calls close() leaves nothing unclosed.
        if self._owns_engine:
            weakref.finalize(self, self.engine.dispose)

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

        The logic (what a refused insert means, when to retry a lost race) is
        :func:`eventstore.store.protocol.append`, shared with
        :class:`~eventstore.store.AsyncEventStore`.

        Raises:
            InvalidEvent: bad input (names the field); nothing was written.
            WrongExpectedVersion: the stream is at another version; nothing was written.
            DuplicateEventId: an event id is stored with other content; nothing was written.
            DatabaseUnavailable: PostgreSQL cannot be reached.
            ConfigurationError: a pooler lost a prepared statement (``prepared_statements=True``
                through a transaction-mode pooler); the message says what to change.
        """
        steps = protocol.append(
            stream_id,
            events,
            expected_version,
            max_append_events=self.max_append_events,
            max_event_bytes=self.max_event_bytes,
            notify=self.notify,
            own_transaction=connection is None,
        )
        with observe_append(stream_id, events) as observation:
            execute = self._execute if connection is None else _in_transaction(connection)
            return observation.done(protocol.drive(steps, execute))

    def _execute(self, step: protocol.Read | protocol.Write) -> list[Any]:
        """Run a step of :mod:`~eventstore.store.protocol` on the store's own connections (errors translated)."""
        if isinstance(step, protocol.Write):
            return self._write(step)
        with autocommit_driver(self.engine) as driver:
            prepare = self._prepared.decide_sync(driver)
            return driver.execute(step.statement, step.parameters, prepare=prepare).fetchall()

    def _write(self, step: protocol.Write) -> list[Any]:
        """One statement: one autocommit round trip; then the wake-up, sent without waiting (see appender.py)."""
        with self._append_connections.connection() as connection:
            driver = connection.driver
            prepare = self._prepared.decide_sync(driver)
            if len(step.statements) == 1:
                rows = driver.execute(*step.statements[0], prepare=prepare).fetchall()
            else:
                with driver.transaction():
                    for statement, parameters in step.statements:
                        cursor = driver.execute(statement, parameters, prepare=prepare)
                    rows = cursor.fetchall()
            if rows and step.wake_up:
                connection.send_wake_up()
        return rows

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
        steps = protocol.read_stream(stream_id, from_version=from_version, backwards=backwards, limit=limit)
        return protocol.drive(steps, self._execute)

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
        arguments = protocol.read_all_arguments(after, limit, event_types, categories)
        cursor = self.order_of(arguments.after) if arguments.after else (0, 0)
        return self._read_from(cursor, arguments.limit, arguments.event_types, arguments.categories)

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
        steps = protocol.read_after(
            cursor, limit=remaining, event_types=event_types, categories=categories, batch_size=self.read_batch_size
        )
        return protocol.stream(steps, self._execute)

    def head_position(self) -> int:
        """The ``global_position`` of the last event readers can see now (0 if none).

        ``read_all(after=store.head_position())`` returns only events that
        become readable later.
        """
        return protocol.drive(protocol.head_position(), self._execute)

    def held_back(self) -> bool:
        """True when committed events wait behind a still-running transaction (the fence)."""
        return protocol.drive(protocol.held_back(), self._execute)

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event (0 when the stream does not exist)."""
        return protocol.drive(protocol.stream_version(stream_id), self._execute)

    def order_of(self, position: int) -> tuple[int, int]:
        """The ``(transaction_order, global_position)`` cursor of a stored event.

        Raises:
            UnknownPosition: no stored event has this position.
        """
        return protocol.drive(protocol.order_of(position), self._execute)


def _in_transaction(connection: Connection) -> Callable[[protocol.Read | protocol.Write], list[Any]]:
    """Run steps in the caller's transaction: writes in a savepoint, so a failure leaves it usable.

    A lost connection, a missing table or a refused privilege is translated
    like everywhere else (:class:`DatabaseUnavailable`, ...); constraint
    violations pass untranslated, for the append to explain.
    """

    def execute(step: protocol.Read | protocol.Write) -> list[Any]:
        try:
            if isinstance(step, protocol.Read):
                return list(connection.exec_driver_sql(step.statement, step.parameters).all())
            with connection.begin_nested():
                for statement, parameters in step.statements:
                    result = connection.exec_driver_sql(statement, parameters)
                return list(result.all())
        except Exception as error:
            translated = translate_driver_error(connection.engine, error)
            if translated is None:
                raise
            raise translated from error

    return execute

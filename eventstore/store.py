"""Append to and read from the ``events`` table: the only home of the store's SQL.

The gap rule
============

``global_position`` comes from a sequence, and sequence values become visible
in *commit* order, not in number order: while transaction A (position 7) is
still open, transaction B (position 8) may commit. A reader that moved past 8
would never see 7. eventstore therefore does not deliver events in position
order. Each event carries an order key, ``transaction_order`` (an ``xid8``),
and the global order is ``(transaction_order, global_position)``:

1. **Key.** An append stores ``greatest(pg_current_xact_id(), key of the
   stream's previous event)``. Usually that is simply the appending
   transaction's id. Raising it to the previous event's key keeps every stream
   in version order even when the appending transaction obtained its id
   before the stream's previous append committed.
2. **Fence.** A reader returns only events whose key is below
   ``pg_snapshot_xmin(pg_current_snapshot())``, the oldest transaction still
   running, evaluated in the same statement (same snapshot) as the scan.
   Every transaction with an id below that fence has ended, and a running or
   future transaction's events get a key >= its own id >= the fence. So
   nothing can ever appear *before* an event already returned: a reader that
   remembers the last ``(transaction_order, global_position)`` it consumed
   never skips and never repeats an event.

Consequences, all tested in ``tests/concurrency``:

- A rolled-back append leaves a hole in the positions; it never blocks reads.
- Any transaction that holds a transaction id (any write, in any database of
  the cluster) holds back the events committed after it began, until it ends.
  Readers *stall* behind it; they never skip. Keep write transactions short.
  Such a transaction sends no wake-up when it ends, so workers re-check on a
  short timer while events are held back (see :meth:`EventStore.held_back`).
- A reader must not hold a transaction id itself while it waits for the fence
  to move (it would wait for itself): read in a transaction that has not
  written yet, as :meth:`EventStore.read_all` does.

The ``after=`` argument of :meth:`EventStore.read_all` takes a plain
``global_position``; the store maps it to its order key.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from eventstore.appender import NOTIFY_CHANNEL, append_connections
from eventstore.database import autocommit_driver, create_engine, translate_driver_errors
from eventstore.errors import (
    DatabaseUnavailable,
    DuplicateEventId,
    InvalidEvent,
    UnknownPosition,
    WrongExpectedVersion,
)
from eventstore.types import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, ExpectedVersion, NewEvent, RecordedEvent

__all__ = ["NOTIFY_CHANNEL", "EventStore"]

logger = logging.getLogger(__name__)


MAX_STREAM_ID_LENGTH = 255
MAX_EVENT_TYPE_LENGTH = 255
MAX_JSON_DEPTH = 128
_MAX_INT32 = 2**31 - 1
_MAX_INT64 = 2**63 - 1
_APPEND_RETRIES = 20

# The fence of the gap rule; evaluated in the statement that scans, so that it
# belongs to the same snapshot.
_FENCE = "pg_snapshot_xmin(pg_current_snapshot())"

# Positional (see _recorded). The order key comes back as a bigint: an xid8
# is epoch << 32 | xid, far below 2**63 in practice.
_COLUMNS = (
    "global_position, CAST(CAST(transaction_order AS text) AS bigint), event_id, stream_id, "
    "stream_version, event_type, data, metadata, recorded_at"
)

# psycopg's named style (%b: arrays in binary, which needs no per-element
# escaping): the same text runs on a raw psycopg connection (our
# own one-statement transaction) and through Connection.exec_driver_sql.
_APPEND_TEMPLATE = """
    WITH last AS (
        SELECT stream_version, transaction_order FROM events
        WHERE stream_id = %(stream_id)s ORDER BY stream_version DESC LIMIT 1
    ), head AS (
        SELECT coalesce((SELECT stream_version FROM last), 0) AS version,
               greatest(pg_current_xact_id(), (SELECT transaction_order FROM last)) AS transaction_order,
               -- 'off' silences the NOTIFY trigger for this transaction (see eventstore/appender.py).
               set_config('eventstore.notify', 'TRIGGER_NOTIFIES', true) AS trigger_notifies
    )
    INSERT INTO events (transaction_order, event_id, stream_id, stream_version, event_type, data, metadata)
    SELECT head.transaction_order, e.event_id, %(stream_id)s, head.version + e.ordinal,
           e.event_type, CAST(e.data AS jsonb), CAST(e.metadata AS jsonb)
    FROM unnest(CAST(%(event_ids)b AS uuid[]), CAST(%(event_types)b AS text[]),
                CAST(%(datas)b AS text[]), CAST(%(metadatas)b AS text[]))
         WITH ORDINALITY AS e(event_id, event_type, data, metadata, ordinal)
         CROSS JOIN head  -- in this order the events stream through instead of being buffered
    WHERE CASE CAST(%(expected)s AS integer)
              WHEN -1 THEN true                   -- ANY
              WHEN -2 THEN head.version > 0       -- STREAM_EXISTS
              ELSE head.version = CAST(%(expected)s AS integer)
          END
    RETURNING global_position, stream_version
"""
# By the NOTIFY trigger's setting for the transaction: 'on' (it notifies at
# commit) or 'off' (the appender wakes workers itself, or nobody does).
_APPEND = {setting: _APPEND_TEMPLATE.replace("TRIGGER_NOTIFIES", setting) for setting in ("on", "off")}

_STREAM_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('eventstore:stream:' || %(stream_id)s, 0))"

_STORED_BY_ID = sa.text(
    "SELECT event_id, stream_id, stream_version, event_type, data, metadata, global_position "
    "FROM events WHERE event_id = ANY(CAST(:event_ids AS uuid[])) ORDER BY stream_id, stream_version"
)

_STREAM_VERSION = sa.text("SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = :stream_id")

_ORDER_OF_POSITION = sa.text("SELECT transaction_order::text FROM events WHERE global_position = :position")

_HEAD = sa.text(
    f"SELECT global_position FROM events WHERE transaction_order < {_FENCE} "  # noqa: S608 - constant
    "ORDER BY transaction_order DESC, global_position DESC LIMIT 1"
)

_HELD_BACK = sa.text(f"SELECT EXISTS (SELECT 1 FROM events WHERE transaction_order >= {_FENCE})")  # noqa: S608


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
    :mod:`eventstore.appender`). ``notify=False`` sends none, for bulk imports
    nobody needs to see live: workers then find the events on their fallback
    timer.

    Appends run on a few autocommit connections of the store's own (at most 4
    kept open between appends, opened through the engine and shared by every
    store on the same engine), outside the engine's pool: see
    :mod:`eventstore.appender` for why.
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
        self.max_append_events = max_append_events
        self.max_event_bytes = max_event_bytes
        self.read_batch_size = read_batch_size
        self.notify = notify
        self._append_connections = append_connections(self.engine)

    def __repr__(self) -> str:
        return f"EventStore({self.engine.url.render_as_string(hide_password=True)!r})"

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
        prepared = self._prepare(stream_id, events, expected_version)
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
                        raise InvalidEvent("events", _first_line(driver_error)) from error
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

    def _insert_in(self, connection: Connection, prepared: _PreparedAppend, *, queue: bool) -> list[Any]:
        if queue:
            # A transaction-scoped lock on the stream, taken in its own statement
            # so that the insert's snapshot (READ COMMITTED) is taken after the wait.
            connection.exec_driver_sql(_STREAM_LOCK, {"stream_id": prepared.stream_id})
        # The caller commits, so the trigger sends the wake-up then.
        statement = _APPEND["on" if self.notify else "off"]
        return list(connection.exec_driver_sql(statement, prepared.parameters).all())

    def _insert_in_own_transaction(self, prepared: _PreparedAppend, *, queue: bool) -> list[Any]:
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
                            driver.execute(_STREAM_LOCK, {"stream_id": prepared.stream_id})
                            rows = driver.execute(_APPEND["off"], parameters).fetchall()
                    else:
                        rows = driver.execute(_APPEND["off"], parameters).fetchall()
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
            return int(connection.execute(_STREAM_VERSION, {"stream_id": stream_id}).scalar_one())
        return self.stream_version(stream_id)

    def _explain_short_insert(self, connection: Connection | None, prepared: _PreparedAppend) -> AppendResult:
        """Nothing was inserted: a retried request, a reused event id, or a version mismatch."""
        if connection is None:
            with translate_driver_errors(self.engine), self.engine.connect() as own:
                return self._explain_short_insert(own, prepared)
        stored = connection.execute(_STORED_BY_ID, {"event_ids": prepared.event_ids}).all()
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
        actual = connection.execute(_STREAM_VERSION, {"stream_id": prepared.stream_id}).scalar_one()
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
        _check_text("stream_id", stream_id, MAX_STREAM_ID_LENGTH)
        start = _check_count("from_version", from_version, minimum=1, maximum=_MAX_INT32)
        count = _check_count("limit", limit, minimum=0, maximum=_MAX_INT64)
        comparison, direction = ("<=", "DESC") if backwards else (">=", "ASC")
        if start is None:
            start = _MAX_INT32 if backwards else 1
        query = (
            f"SELECT {_COLUMNS} FROM events WHERE stream_id = %(stream_id)s "  # noqa: S608 - constant fragments
            f"AND stream_version {comparison} %(start)s ORDER BY stream_version {direction} LIMIT %(limit)s"
        )
        with autocommit_driver(self.engine) as driver:
            rows = driver.execute(query, {"stream_id": stream_id, "start": start, "limit": count}).fetchall()
        return [_recorded(row) for row in rows]

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
        start = _check_count("after", after, minimum=0, maximum=_MAX_INT64)
        remaining = _check_count("limit", limit, minimum=0, maximum=_MAX_INT64)
        types = _check_names("event_types", event_types, MAX_EVENT_TYPE_LENGTH)
        wanted_categories = _check_names("categories", categories, MAX_STREAM_ID_LENGTH)
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
        filters = ""
        if event_types:
            filters += " AND event_type = ANY(%(event_types)s)"
        if categories:
            filters += " AND category = ANY(%(categories)s)"
        query = (
            f"SELECT {_COLUMNS} FROM events "  # noqa: S608 - constant fragments only
            "WHERE (transaction_order, global_position) > (CAST(%(after_order)s AS xid8), %(after_position)s) "
            f"AND transaction_order < {_FENCE}{filters} "
            "ORDER BY events.transaction_order, events.global_position LIMIT %(batch)s"
        )
        order, position = cursor
        while remaining is None or remaining > 0:
            batch = self.read_batch_size if remaining is None else min(self.read_batch_size, remaining)
            parameters = {
                "after_order": str(order),
                "after_position": position,
                "batch": batch,
                "event_types": event_types,
                "categories": categories,
            }
            # Each batch is its own autocommit statement: the reader never
            # holds a transaction id, so it cannot hold back the fence itself.
            with autocommit_driver(self.engine) as driver:
                rows = driver.execute(query, parameters).fetchall()
            for row in rows:
                yield _recorded(row)
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
            position = connection.execute(_HEAD).scalar_one_or_none()
        return int(position or 0)

    def held_back(self) -> bool:
        """True when committed events wait behind a still-running transaction (the fence)."""
        with translate_driver_errors(self.engine), self.engine.connect() as connection:
            return bool(connection.execute(_HELD_BACK).scalar_one())

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event (0 when the stream does not exist)."""
        _check_text("stream_id", stream_id, MAX_STREAM_ID_LENGTH)
        with translate_driver_errors(self.engine), self.engine.connect() as connection:
            return int(connection.execute(_STREAM_VERSION, {"stream_id": stream_id}).scalar_one())

    def order_of(self, position: int) -> tuple[int, int]:
        """The ``(transaction_order, global_position)`` cursor of a stored event.

        Raises:
            UnknownPosition: no stored event has this position.
        """
        with translate_driver_errors(self.engine), self.engine.connect() as connection:
            order = connection.execute(_ORDER_OF_POSITION, {"position": position}).scalar_one_or_none()
        if order is None:
            raise UnknownPosition(position)
        return int(order), position

    # -- validation -----------------------------------------------------------

    def _prepare(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int | ExpectedVersion
    ) -> _PreparedAppend:
        _check_text("stream_id", stream_id, MAX_STREAM_ID_LENGTH)
        expected = _check_expected(expected_version)
        if isinstance(events, NewEvent) or not isinstance(events, Sequence):
            raise InvalidEvent("events", f"must be a list of NewEvent, got {type(events).__name__}")
        if not events:
            raise InvalidEvent("events", "at least one event is required (an empty append writes nothing)")
        if len(events) > self.max_append_events:
            raise InvalidEvent(
                "events", f"{len(events)} events in one append; the limit is max_append_events={self.max_append_events}"
            )
        prepared = _PreparedAppend(stream_id, expected)
        seen_ids: set[uuid.UUID] = set()
        checked_types: set[str] = set()
        for index, event in enumerate(events):
            field = f"events[{index}]"
            if not isinstance(event, NewEvent):
                raise InvalidEvent(field, f"expected NewEvent, got {type(event).__name__}")
            if not isinstance(event.event_id, uuid.UUID):
                raise InvalidEvent(f"{field}.event_id", f"must be a UUID, got {event.event_id!r}")
            if event.event_id in seen_ids:
                raise InvalidEvent(f"{field}.event_id", f"{event.event_id} appears twice in this append")
            if type(event.type) is not str or event.type not in checked_types:
                _check_text(f"{field}.type", event.type, MAX_EVENT_TYPE_LENGTH)
                checked_types.add(event.type)
            data = _encode_object(f"{field}.data", event.data)
            if event.metadata is None or (type(event.metadata) is dict and not event.metadata):
                metadata = "{}"
            else:
                metadata = _encode_object(f"{field}.metadata", event.metadata)
            size = _utf8_length(data) + _utf8_length(metadata)
            if size > self.max_event_bytes:
                raise InvalidEvent(field, f"{size} bytes of JSON; the limit is max_event_bytes={self.max_event_bytes}")
            prepared.add(event.event_id, event.type, data, metadata)
            seen_ids.add(event.event_id)
        return prepared


class _PreparedAppend:
    """Validated arrays for the append statement."""

    def __init__(self, stream_id: str, expected: int | ExpectedVersion) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.event_ids: list[uuid.UUID] = []
        self.event_types: list[str] = []
        self.datas: list[str] = []
        self.metadatas: list[str] = []

    def add(self, event_id: uuid.UUID, event_type: str, data: str, metadata: str) -> None:
        self.event_ids.append(event_id)
        self.event_types.append(event_type)
        self.datas.append(data)
        self.metadatas.append(metadata)

    @property
    def parameters(self) -> dict[str, Any]:
        expected = 0  # NO_STREAM
        if self.expected is ANY:
            expected = -1
        elif self.expected is STREAM_EXISTS:
            expected = -2
        elif isinstance(self.expected, int):
            expected = self.expected
        return {
            "stream_id": self.stream_id,
            "event_ids": self.event_ids,
            "event_types": self.event_types,
            "datas": self.datas,
            "metadatas": self.metadatas,
            "expected": expected,
        }

    def differs_from(self, index: int, row: Any) -> tuple[uuid.UUID, str] | None:
        """How the stored row differs from event ``index`` of this append (None: identical)."""
        event_id = self.event_ids[index]
        if row.stream_id != self.stream_id:
            return event_id, f"in stream {row.stream_id!r}, not {self.stream_id!r}"
        if row.event_type != self.event_types[index]:
            return event_id, f"with type {row.event_type!r}, not {self.event_types[index]!r}"
        if row.data != json.loads(self.datas[index]) or row.metadata != json.loads(self.metadatas[index]):
            return event_id, "with different data or metadata"
        return None


def _recorded(row: Any) -> RecordedEvent:
    position, order, event_id, stream_id, version, event_type, data, metadata, recorded_at = row
    return RecordedEvent(
        event_id=event_id,
        stream_id=stream_id,
        stream_version=version,
        type=event_type,
        data=data,
        metadata=metadata,
        global_position=position,
        recorded_at=recorded_at,
        transaction_order=order,
    )


def _check_expected(expected: object) -> int | ExpectedVersion:
    if isinstance(expected, ExpectedVersion):
        return 0 if expected is NO_STREAM else expected
    if isinstance(expected, bool) or not isinstance(expected, int):
        raise InvalidEvent(
            "expected_version", f"must be ANY, NO_STREAM, STREAM_EXISTS or an integer >= 0, got {expected!r}"
        )
    if not 0 <= expected <= _MAX_INT32:
        raise InvalidEvent("expected_version", f"must be between 0 and {_MAX_INT32}, got {expected}")
    return expected


def _check_text(field: str, value: object, max_length: int) -> None:
    if not isinstance(value, str):
        raise InvalidEvent(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidEvent(field, "must not be empty")
    if len(value) > max_length:
        raise InvalidEvent(field, f"is {len(value)} characters long; the limit is {max_length}")
    _check_storable_string(field, value)


def _check_storable_string(field: str, value: str) -> None:
    # PostgreSQL text and jsonb cannot hold NUL, nor lone UTF-16 surrogates.
    if "\x00" in value:
        raise InvalidEvent(field, "contains a NUL character (\\u0000), which PostgreSQL cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidEvent(field, f"is not valid Unicode ({error.reason} at index {error.start})") from error


def _check_count(field: str, value: object, *, minimum: int, maximum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(field, f"must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise InvalidEvent(field, f"must be between {minimum} and {maximum}, got {value}")
    return value


def _check_names(field: str, values: Iterable[str] | None, max_length: int) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    names = list(values)
    for index, name in enumerate(names):
        _check_text(f"{field}[{index}]", name, max_length)
    return names or None


# Compact UTF-8 JSON without NaN/Infinity; one encoder for all (json.dumps
# with options builds a new one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _encode_object(field: str, value: object) -> str:
    """JSON text for a data/metadata object that round-trips exactly through jsonb.

    The structure is checked in one walk (keys, types, depth, finite floats);
    the strings are checked on the encoded text, and only when that shows a
    possible problem are they walked again to name the offending one.
    """
    if not isinstance(value, dict):
        raise InvalidEvent(field, f"must be a JSON object (a dict), got {type(value).__name__}")
    exponent_floats = _check_structure(field, value)
    try:
        text = _dumps_with_plain_floats(value) if exponent_floats else _JSON.encode(value)
    except ValueError as error:  # e.g. an integer too long to print
        raise InvalidEvent(field, str(error)) from error
    # The encoder escapes NUL as \u0000; a lone surrogate fails to encode.
    if "\\u0000" in text or not (text.isascii() or _encodes_as_utf8(text)):
        _check_strings(field, value)
    return text


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _check_structure(field: str, value: dict[Any, Any]) -> bool:
    """Raise for keys, types, depth or numbers JSON cannot hold; True if a float needs plain notation.

    Paths are kept as ``(parent, key)`` pairs and rendered only for an error.
    """
    # Most events are flat objects of strings, integers, booleans and nulls.
    if all(type(key) is str and type(child) in _SCALARS for key, child in value.items()):
        return False
    exponent_floats = False
    stack: list[tuple[object, int, Any]] = [(value, 1, None)]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str) or item is None or isinstance(item, int):  # bool is an int
            continue
        if isinstance(item, dict):
            if depth > MAX_JSON_DEPTH:
                raise InvalidEvent(field, f"is nested deeper than {MAX_JSON_DEPTH} levels")
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidEvent(
                        _render_path(field, path), f"has a key of type {type(key).__name__}; JSON keys are strings"
                    )
                stack.append((child, depth + 1, (path, f".{key}")))
        elif isinstance(item, list):
            if depth > MAX_JSON_DEPTH:
                raise InvalidEvent(field, f"is nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((child, depth + 1, (path, f"[{index}]")) for index, child in enumerate(item))
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidEvent(_render_path(field, path), f"{item} is not valid JSON (only finite numbers are)")
            exponent_floats = exponent_floats or "e" in repr(item)
        else:
            raise InvalidEvent(_render_path(field, path), f"{type(item).__name__} is not a JSON type")
    return exponent_floats


_SCALARS = frozenset({str, int, bool, type(None)})


def _render_path(field: str, path: Any) -> str:
    parts: list[str] = []
    while path is not None:
        path, part = path
        parts.append(part)
    return field + "".join(reversed(parts))


def _encodes_as_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_strings(field: str, value: object) -> None:
    """Name the key or string PostgreSQL cannot store (NUL, lone surrogate), if any."""
    stack: list[tuple[str, object]] = [(field, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                _check_storable_string(f"{path} key {key[:40]!r}", key)
                stack.append((f"{path}.{key}", child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(item))
        elif isinstance(item, str):
            _check_storable_string(path, item)


def _dumps_with_plain_floats(value: dict[str, Any]) -> str:
    """Dump floats such as ``1e300`` as ``1000...0.0``.

    jsonb keeps numbers as ``numeric`` and prints ``1e300`` back without an
    exponent or a decimal point, which JSON readers take for an integer. Plain
    notation with a decimal point survives the trip as the same float. The
    placeholders hold a NUL character, which validated strings never contain.
    """
    plain: list[str] = []

    def swap(item: object) -> object:
        if isinstance(item, dict):
            return {key: swap(child) for key, child in item.items()}
        if isinstance(item, list):
            return [swap(child) for child in item]
        if isinstance(item, float) and "e" in repr(item):
            text = format(Decimal(repr(item)), "f")
            plain.append(text if "." in text else f"{text}.0")
            return f"\x00{len(plain) - 1}"
        return item

    text = _JSON.encode(swap(value))
    for index, literal in enumerate(plain):
        text = text.replace(f'"\\u0000{index}"', literal, 1)
    return text


def _first_line(error: BaseException | None) -> str:
    text = str(error or "").strip()
    return text.splitlines()[0] if text else type(error).__name__

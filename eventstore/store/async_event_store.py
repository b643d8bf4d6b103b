"""The :class:`AsyncEventStore`: :class:`~eventstore.store.EventStore` for asyncio.

Every operation is the sync store's own, from :mod:`eventstore.store.protocol`
(validation, SQL, row decoding, what a refused insert means, the retry of a
lost race); this module only sends its statements on psycopg's
``AsyncConnection`` and awaits the rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from eventstore.database import describe_target, is_connection_error, translate_driver_error, url_of
from eventstore.store import progress, protocol
from eventstore.store.async_connections import AsyncConnections
from eventstore.store.poolers import PreparedStatements
from eventstore.store.subscription import Subscription
from eventstore.store.subscriptions import SubscriptionHub, SubscriptionSettings
from eventstore.store.telemetry import observe_append
from eventstore.types import ANY, AppendResult, ExpectedVersion, NewEvent, RecordedEvent

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["AsyncEventStore"]

logger = logging.getLogger(__name__)


class AsyncEventStore:
    """Append events to streams and read them back from asyncio code; the same guarantees as :class:`EventStore`.

    ``url_or_engine`` is a ``postgresql+psycopg://`` or libpq
    ``postgresql://`` URL, or a SQLAlchemy ``Engine`` / ``AsyncEngine`` whose
    URL is used (the store opens its own psycopg ``AsyncConnection``, so the
    engine's pool, ``connect_args`` and events do not apply). The schema must
    have been applied with :func:`eventstore.migrate`.

    Guarantees, errors and limits are :class:`EventStore`'s, by construction:
    both stores run the same operations (:mod:`eventstore.store.protocol`):

    - appends are atomic and idempotent by event id (a retried request gets
      the original result with ``already_stored=True``); an ``ANY`` append
      that loses a race for the next version goes again, queued behind the
      stream's other writers;
    - reads follow the gap rule (:mod:`eventstore.store`): ``read_all`` never
      skips or repeats an event and reads in batches of ``read_batch_size``;
    - bad input raises :class:`~eventstore.errors.InvalidEvent` naming the
      field before any SQL runs; an unreachable server raises
      :class:`~eventstore.errors.DatabaseUnavailable`, an unmigrated database
      :class:`~eventstore.errors.SchemaNotReady`, a role without the right
      :class:`~eventstore.errors.PermissionDenied`.

    Each append wakes the projection workers after its commit: the wake-up
    statement is sent on the same connection once the commit has returned,
    and its answer is read when that connection is next used, so the append
    waits for one round trip, as :class:`EventStore`'s does (see
    :mod:`eventstore.store.async_connections`). A wake-up that fails is logged
    and never fails the append. ``notify=False`` sends none.

    Connections: one per call in flight, at most 4 kept open between calls
    (:mod:`eventstore.store.async_connections`). Use a store from one event
    loop. ``await store.close()`` (or ``async with AsyncEventStore(url) as
    store:``) closes them; the store stays usable and reconnects on its next
    call. Live subscriptions (:meth:`subscribe`) share one more connection,
    for LISTEN, opened by the first one; ``subscription_settings`` tunes how
    they poll and reconnect (:class:`~eventstore.store.subscriptions.SubscriptionSettings`).

    ``prepared_statements`` is :class:`EventStore`'s: None (the default)
    keeps psycopg's server-side prepared statements only on a direct
    connection, seen at the first one (:mod:`eventstore.store.poolers`), so
    appends and reads work through a transaction-mode pooler such as
    PgBouncer 1.18; True or False decides explicitly.
    """

    def __init__(
        self,
        url_or_engine: str | Engine | AsyncEngine,
        *,
        max_append_events: int = 10_000,
        max_event_bytes: int = 1_048_576,
        read_batch_size: int = 500,
        notify: bool = True,
        subscription_settings: SubscriptionSettings | None = None,
        prepared_statements: bool | None = None,
    ) -> None:
        self.url = url_of(url_or_engine)
        self.max_append_events = max_append_events
        self.max_event_bytes = max_event_bytes
        self.read_batch_size = read_batch_size
        self.notify = notify
        self._connections = AsyncConnections(self.url)
        self._prepared = PreparedStatements(prepared_statements, describe_target(self.url))
        self.subscription_settings = subscription_settings or SubscriptionSettings()
        self._subscriptions: SubscriptionHub | None = None

    def __repr__(self) -> str:
        return f"AsyncEventStore({self.url.render_as_string(hide_password=True)!r})"

    async def close(self) -> None:
        """Close the idle connections and the LISTEN connection, ending every subscription's iteration.

        The store stays usable (a later call connects again).
        """
        hub, self._subscriptions = self._subscriptions, None
        if hub is not None:
            await hub.close()
        await self._connections.close()

    aclose = close
    """The same as :meth:`close` (the name :func:`contextlib.aclosing` calls)."""

    async def __aenter__(self) -> AsyncEventStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- append ---------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: int | ExpectedVersion = ANY,
        connection: AsyncConnection | None = None,
    ) -> AppendResult:
        """Append ``events`` to the end of ``stream_id``, atomically; returns once the events are committed.

        ``expected_version`` is :data:`~eventstore.ANY`, :data:`~eventstore.NO_STREAM`,
        :data:`~eventstore.STREAM_EXISTS`, or the version of the stream's last
        event (0 = no stream). Idempotent by event id, as :meth:`EventStore.append`.

        Without ``connection`` the append is one autocommit statement on one
        of the store's connections, and the wake-up follows its commit.

        With ``connection=`` (a SQLAlchemy ``AsyncConnection``, as
        :meth:`EventStore.append` takes a ``Connection``) the events are
        written inside the caller's transaction, in a savepoint, so a failed
        append (a wrong version, a reused event id) leaves that transaction
        usable; they, and the wake-up notification (sent by the ``events``
        trigger when that transaction commits, unless ``notify=False``), exist
        only if the caller commits. Nothing is retried there: a lost
        connection raises :class:`~eventstore.errors.DatabaseUnavailable` and
        the caller's transaction is gone.

        Cancelling the awaiting task is safe: a statement still running is
        cancelled on the server (so it either committed in full before, or
        never will) and its connection is reused only once it is idle again;
        retry with the same event ids to learn which.

        Raises:
            InvalidEvent: bad input (names the field); nothing was written.
            WrongExpectedVersion: the stream is at another version (``actual`` says which); nothing was written.
            DuplicateEventId: an event id is stored with other content; nothing was written.
            DatabaseUnavailable: PostgreSQL cannot be reached (the store's own connection is retried
                once first: event ids make that safe).
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
            return observation.done(await protocol.drive_async(steps, execute))

    async def _execute(self, step: protocol.Read | protocol.Write) -> list[Any]:
        """Run a step of :mod:`~eventstore.store.protocol` on one of the store's connections (errors translated)."""
        async with self._connections.connection() as connection:
            prepare = await self._prepared.decide_async(connection)
            if isinstance(step, protocol.Read):
                cursor = await connection.execute(step.statement, step.parameters, prepare=prepare)
                return await cursor.fetchall()
            if len(step.statements) == 1:
                cursor = await connection.execute(*step.statements[0], prepare=prepare)
                rows = await cursor.fetchall()
            else:
                async with connection.transaction():
                    for statement, parameters in step.statements:
                        cursor = await connection.execute(statement, parameters, prepare=prepare)
                    rows = await cursor.fetchall()
            if rows and step.wake_up:
                await self._connections.send_wake_up(connection)
            return rows

    # -- read -----------------------------------------------------------------

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """The events of one stream in version order (``backwards``: newest first); [] for an unknown stream.

        ``from_version`` is the first version returned: 1 by default going
        forwards, the last version going backwards.

        Raises:
            InvalidEvent: a bad argument (names it).
        """
        steps = protocol.read_stream(stream_id, from_version=from_version, backwards=backwards, limit=limit)
        return await protocol.drive_async(steps, self._execute)

    def read_all(
        self,
        *,
        after: int | None = None,
        limit: int | None = None,
        event_types: Iterable[str] | None = None,
        categories: Iterable[str] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Every event in the global order, fetched lazily in batches: ``async for event in store.read_all(...)``.

        ``after`` is the ``global_position`` of the last event the caller
        consumed (None or 0: from the start); reading continues exactly after
        it in the global order (the gap rule). Events held back by a running
        transaction are not returned yet: read again later. Each batch is one
        statement on a connection taken for it alone: no connection is held
        between batches, and cancelling the iterating task while a batch is
        read cancels that statement and gives its connection back.

        Raises:
            InvalidEvent: a bad argument (names it), at once.
            UnknownPosition: ``after`` is not the position of a stored event, at the first iteration.
        """
        arguments = protocol.read_all_arguments(after, limit, event_types, categories)
        return self._read_all(arguments)

    async def _read_all(self, arguments: protocol.ReadAllArguments) -> AsyncIterator[RecordedEvent]:
        cursor = await self.order_of(arguments.after) if arguments.after else (0, 0)
        steps = protocol.read_after(
            cursor,
            limit=arguments.limit,
            event_types=arguments.event_types,
            categories=arguments.categories,
            batch_size=self.read_batch_size,
        )
        async for event in protocol.stream_async(steps, self._execute):
            yield event

    async def head_position(self) -> int:
        """The ``global_position`` of the last event readers can see now (0 if none)."""
        return await protocol.drive_async(protocol.head_position(), self._execute)

    async def held_back(self) -> bool:
        """True when committed events wait behind a still-running transaction (the gap rule's fence)."""
        return await protocol.drive_async(protocol.held_back(), self._execute)

    async def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event (0 when the stream does not exist)."""
        return await protocol.drive_async(protocol.stream_version(stream_id), self._execute)

    async def order_of(self, position: int) -> tuple[int, int]:
        """The ``(transaction_order, global_position)`` cursor of a stored event.

        Raises:
            UnknownPosition: no stored event has this position.
        """
        return await protocol.drive_async(protocol.order_of(position), self._execute)

    # -- live -------------------------------------------------------------------

    def subscribe(
        self,
        *,
        after: int | Literal["head"] | None = None,
        categories: Iterable[str] | None = None,
        event_types: Iterable[str] | None = None,
        stream_ids: Iterable[str] | None = None,
        max_buffered: int = 1_000,
    ) -> Subscription:
        """The events after ``after``, then live, forever: ``async with store.subscribe(...) as feed: async for ...``.

        ``after`` is a ``global_position`` as in :meth:`read_all` (None or 0:
        from the start) or ``"head"`` (only what becomes readable from now on).
        The filters select as :meth:`read_all`'s do, plus ``stream_ids``.

        Guarantees: events come in the global order of the gap rule; none is
        skipped or repeated, across out-of-order commits, rolled-back appends,
        a lost LISTEN connection or a server restart (those only delay). All
        the store's subscriptions share one LISTEN connection and one read per
        wake-up, and each has a buffer of ``max_buffered`` events: a consumer
        that falls further behind is detached from the shared read and catches
        up from the database on its own, without slowing the others. The
        iteration never ends by itself: cancel the consuming task or leave the
        ``async with`` (it ends with ``StopAsyncIteration`` when the store is
        closed). See :mod:`eventstore.store.subscriptions`.

        Raises:
            InvalidEvent: a bad argument (names it), at once.
            UnknownPosition: ``after`` is not the position of a stored event, on entering the ``async with``.
            DatabaseUnavailable: the server cannot be reached on entering (later, the subscription waits).
        """
        if self._subscriptions is None or self._subscriptions.closed:
            self._subscriptions = SubscriptionHub(
                self.url, self._execute, batch_size=self.read_batch_size, settings=self.subscription_settings
            )
        return Subscription(
            self._subscriptions,
            after=after,
            categories=categories,
            event_types=event_types,
            stream_ids=stream_ids,
            max_buffered=max_buffered,
        )

    # -- projections ------------------------------------------------------------

    async def checkpoints(self, projection_names: Sequence[str]) -> dict[str, progress.Progress]:
        """Where each named projection is (those with a checkpoint), by name: position, state, last error."""
        return await protocol.drive_async(progress.load(projection_names), self._execute)

    async def wait_until_processed(
        self, projection_names: str | Sequence[str], position: int, *, timeout: float = 10.0
    ) -> None:
        """Return once every named projection has consumed ``position`` (and everything before it).

        For read-your-writes: ``await store.wait_until_processed("order_summaries",
        result.global_position, timeout=5)``. It polls the stored checkpoints
        (every 20 ms at most), so it works whichever runner applies the
        projections, and keeps waiting while the server is unreachable.

        Raises:
            ProjectionTimeout: not processed within ``timeout`` seconds; names each lagging projection,
                its position and, if it is failed, its stored error.
            UnknownPosition: no stored event has ``position``.
        """
        if position <= 0:
            return
        names = [projection_names] if isinstance(projection_names, str) else list(projection_names)
        wait = progress.ProgressWait(names, position, await self.order_of(position), timeout=timeout)
        while True:
            try:
                stored = await self.checkpoints(wait.names)
            except Exception as error:
                if not is_connection_error(error):
                    raise
                stored = {}  # the server is restarting: keep waiting
            seconds = wait.next_pause(stored)
            if seconds is None:
                return
            await asyncio.sleep(seconds)


def _in_transaction(connection: AsyncConnection) -> Callable[[protocol.Read | protocol.Write], Awaitable[list[Any]]]:
    """Run steps in the caller's transaction: writes in a savepoint, so a failure leaves it usable.

    :meth:`EventStore.append`'s ``connection=`` path, awaited: a lost
    connection, a missing table or a refused privilege is translated like
    everywhere else (:class:`DatabaseUnavailable`, ...); constraint violations
    pass untranslated, for the append to explain.
    """
    target = connection.sync_engine

    async def execute(step: protocol.Read | protocol.Write) -> list[Any]:
        try:
            if isinstance(step, protocol.Read):
                return list((await connection.exec_driver_sql(step.statement, step.parameters)).all())
            async with connection.begin_nested():
                for statement, parameters in step.statements:
                    result = await connection.exec_driver_sql(statement, parameters)
                return list(result.all())
        except Exception as error:
            translated = translate_driver_error(target, error)
            if translated is None:
                raise
            raise translated from error

    return execute

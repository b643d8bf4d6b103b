"""One projection's session: its lease, and the batches committed under it.

Guarantees
==========

- **Nothing skipped, nothing repeated.** Events are read after the stored
  checkpoint cursor with :meth:`EventStore.read_after_cursor` (the gap rule of
  :mod:`eventstore.store`), in a connection that holds no transaction id. The
  handlers' writes and the checkpoint move commit in one transaction, and the
  checkpoint only moves forward (:func:`eventstore.runner.checkpoints.advance_from`).
- **One active runner per projection**: the projection's lease
  (:mod:`eventstore.runner.ownership`). Every batch's first statement checks
  the lease's fencing token while it locks the checkpoint row, and keeps the
  lock until it commits: a batch commits only under a lease still held, and
  nobody takes the lease over while it runs. Any connection will do, so
  batches borrow one from the runner's small pool.
- **Poison events** follow :mod:`eventstore.runner.poison`; other projections
  keep running either way.
- **Observed**: each batch that applies events runs in a CONSUMER span
  (:mod:`eventstore.tracing`) and is reported, once committed, to
  :func:`eventstore.instruments.current` (its duration; poison events too).
- ``on_batch`` runs after each commit: at most once per batch (a crash between
  the commit and the call loses it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, Engine

from eventstore import instruments, tracing
from eventstore.errors import ProjectionBusy, ProjectionError
from eventstore.projection import Projection
from eventstore.runner import checkpoints, ownership
from eventstore.runner.checkpoints import Checkpoint, Cursor, StaleCheckpoint, cursor_of
from eventstore.runner.deferred import DeferredWrites
from eventstore.runner.ownership import Lease, LeaseLost
from eventstore.runner.poison import HandlerFailed, apply_policy, describe, guarded, handler_failure
from eventstore.runner.settings import RunnerSettings
from eventstore.store import EventStore
from eventstore.types import RecordedEvent

__all__ = ["CatchUpResult", "OnBatch", "OnCommit", "ProjectionSession"]

logger = logging.getLogger(__name__)

OnBatch = Callable[[str, list[RecordedEvent]], None]
OnCommit = Callable[[str, Cursor], None]


@dataclass(slots=True)
class CatchUpResult:
    """What one :meth:`ProjectionSession.catch_up` did."""

    processed: int = 0
    """Events consumed (applied, passed over, or skipped as poison)."""
    caught_up: bool = False
    failed: bool = False


class ProjectionSession:
    """A held projection lease, and the batches committed under it.

    Create with :meth:`acquire` (or let a runner make one for a lease it
    took); always :meth:`release`. Holds no connection of its own: each
    transaction borrows one from ``engine`` for its duration, so a runner's
    connections do not grow with its projections.
    """

    def __init__(
        self,
        store: EventStore,
        projection: Projection,
        engine: Engine,
        lease: Lease,
        *,
        settings: RunnerSettings,
        stop: threading.Event,
        on_batch: OnBatch | None = None,
        on_commit: OnCommit | None = None,
    ) -> None:
        self.store = store
        self.projection = projection
        self.name = projection.name
        self.engine = engine
        self.lease = lease
        self.owner = lease.owner
        self.settings = settings
        self.stop = stop
        self.on_batch = on_batch
        self.on_commit = on_commit
        self.ready = False
        """True once :meth:`set_up` ran under this lease."""
        self._filtered = bool(projection.categories or projection.event_types)
        # The checkpoint as this session last committed or read it. While the
        # lease is held only an operator's skip/retry (of a failed projection)
        # moves it, and every batch re-checks it under the row lock (StaleCheckpoint),
        # so the hot path needs no extra read per wake-up.
        self._cursor: Cursor | None = None

    @classmethod
    def acquire(
        cls,
        engine: Engine,
        store: EventStore,
        projection: Projection,
        *,
        settings: RunnerSettings,
        stop: threading.Event,
        owner: str | None = None,
        state: str = "running",
        on_batch: OnBatch | None = None,
        on_commit: OnCommit | None = None,
    ) -> ProjectionSession | None:
        """Take the projection's lease and set it up; None when another owner holds the lease.

        Creates the checkpoint row and runs ``projection.setup()``. Raises the
        driver's errors when the database cannot be reached.
        """
        owner = owner or ownership.owner_id()
        with engine.begin() as connection:
            checkpoints.ensure(connection, projection.name)
        with engine.begin() as connection:
            leases = ownership.acquire(connection, [projection.name], owner, ttl=settings.lease_ttl, state=state)
        if not leases:
            return None
        session = cls(
            store, projection, engine, leases[0], settings=settings, stop=stop, on_batch=on_batch, on_commit=on_commit
        )
        try:
            session.set_up()
        except BaseException:
            session.release()
            raise
        return session

    @classmethod
    def acquire_or_busy(
        cls, engine: Engine, store: EventStore, projection: Projection, **options: Any
    ) -> ProjectionSession:
        """Like :meth:`acquire`, for one-off work (catch up, rebuild, reset) that must not wait.

        Raises:
            ProjectionBusy: another owner holds the projection's lease (names it).
        """
        session = cls.acquire(engine, store, projection, **options)
        if session is None:
            with engine.connect() as connection:
                current = checkpoints.load(connection, projection.name)
            raise ProjectionBusy(projection.name, current.owner if current else None)
        return session

    def set_up(self) -> None:
        """Run ``projection.setup()`` under the lease (serialised with other projections' setup)."""
        with self.transaction() as connection:
            ownership.take_setup_lock(connection)
            self.projection.setup(connection)
        self.ready = True
        logger.info(
            "projection %s: lease acquired",
            self.name,
            extra={"projection_name": self.name, "owner": self.owner, "lease_token": self.lease.token},
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction that holds the checkpoint row and this lease (raises :class:`LeaseLost` if it is gone)."""
        with self.engine.connect() as connection, connection.begin():
            current = checkpoints.lock(connection, self.name)
            if current is None or current.lease_token != self.lease.token:
                raise LeaseLost(self.name)
            yield connection

    def release(self) -> None:
        """Free the lease now (state ``stopped`` unless failed); never raises (an unreleased lease expires)."""
        try:
            with self.engine.begin() as connection:
                ownership.release(connection, self.lease)
        except Exception as error:
            logger.debug("projection %s: release failed: %s", self.name, error, extra={"projection_name": self.name})
        logger.info("projection %s: lease released", self.name, extra={"projection_name": self.name})

    def load(self) -> Checkpoint:
        """The stored checkpoint (read without taking a transaction id); raises :class:`LeaseLost` if taken over."""
        with self.engine.connect() as connection:
            current = checkpoints.load(connection, self.name)
        if current is None:
            raise ProjectionError(f"projection {self.name!r}: its checkpoint row disappeared; restart the runner")
        if current.lease_token != self.lease.token:
            raise LeaseLost(self.name)
        return current

    # -- catching up ----------------------------------------------------------

    def catch_up(
        self, *, progress: Callable[[int], None] | None = None, max_batches: int | None = None
    ) -> CatchUpResult:
        """Apply every readable event after the checkpoint, batch by batch, until a short read.

        Returns early (``caught_up=False``) when :attr:`stop` is set (the
        current batch is finished and committed first) or after
        ``max_batches`` full batches (a runner's turn, so that one long
        catch-up does not starve its other projections). Returns with
        ``failed=True`` when the projection is (or becomes) failed. Raises
        :class:`LeaseLost` when another owner took the lease over.
        """
        result = CatchUpResult()
        while not self.stop.is_set():
            try:
                self._catch_up_from_checkpoint(result, progress, max_batches)
                return result
            except StaleCheckpoint:
                self._cursor = None
                logger.info(
                    "projection %s: checkpoint moved by someone else; re-reading it",
                    self.name,
                    extra={"projection_name": self.name},
                )
        return result

    def _catch_up_from_checkpoint(
        self, result: CatchUpResult, progress: Callable[[int], None] | None, max_batches: int | None
    ) -> None:
        cursor = self._cursor
        if cursor is None:
            current = self.load()
            if current.failed:
                result.failed = True
                return
            cursor = current.cursor
        # With filters, a short read proves every matching event up to the head
        # was seen, so the checkpoint may jump there (see _advance_to_head).
        head = self._head_cursor() if self._filtered else None
        batch_size = self.settings.batch_size
        batches = 0
        while True:
            events = list(
                self.store.read_after_cursor(
                    cursor,
                    limit=batch_size,
                    categories=self.projection.categories or None,
                    event_types=self.projection.event_types or None,
                )
            )
            if events:
                cursor, consumed, failed = self._apply(events, cursor)
                result.processed += consumed
                if progress is not None and consumed:
                    progress(consumed)
                if failed:
                    result.failed = True
                    return
                if consumed < len(events):  # stopped during a retry
                    return
            if len(events) < batch_size:
                if head is not None and head > cursor:
                    self._commit([], cursor, head)
                result.caught_up = True
                return
            batches += 1
            if self.stop.is_set() or (max_batches is not None and batches >= max_batches):
                return

    def _head_cursor(self) -> Cursor | None:
        # The head is read before the events: its fence is older than theirs,
        # so every event at or below it is visible to the reads that follow.
        position = self.store.head_position()
        return self.store.order_of(position) if position else None

    def _apply(self, events: list[RecordedEvent], cursor: Cursor) -> tuple[Cursor, int, bool]:
        """Apply ``events``; (new cursor, events consumed, failed)."""
        consumed = 0
        chunks: list[list[RecordedEvent]] = [events]
        while chunks:
            chunk = chunks.pop(0)
            try:
                cursor = self._commit(chunk, cursor, cursor_of(chunk[-1]))
                consumed += len(chunk)
                continue
            except HandlerFailed as failure:
                if failure.index is None and len(chunk) > 1:
                    # An apply_batch override failed somewhere: halve until the event is found.
                    middle = len(chunk) // 2
                    chunks[:0] = [chunk[:middle], chunk[middle:]]
                    continue
                if failure.index is not None and failure.index > 0:
                    # The events before the failing one are fine: commit them on their own.
                    chunks[:0] = [chunk[: failure.index], chunk[failure.index :]]
                    continue
                first_error = failure.error
            outcome = self._retry_poison(chunk[0], cursor, first_error)
            if outcome == "stopped":
                return cursor, consumed, False
            if outcome == "failed":
                return cursor, consumed, True
            cursor = cursor_of(chunk[0])
            consumed += 1
            if len(chunk) > 1:
                chunks.insert(0, chunk[1:])
        return cursor, consumed, False

    def _retry_poison(self, event: RecordedEvent, cursor: Cursor, error: BaseException) -> str:
        """Retry one failing event with backoff; then apply the policy. 'applied', 'skipped', 'failed', 'stopped'."""
        attempts = 1
        delay = self.settings.retry_delay
        while attempts < self.settings.retry_attempts:
            logger.warning(
                "projection %s: handler failed on position %d (attempt %d of %d): %s",
                self.name,
                event.global_position,
                attempts,
                self.settings.retry_attempts,
                describe(error),
                extra={"projection_name": self.name, "global_position": event.global_position, "attempt": attempts},
            )
            if self.stop.wait(delay):
                return "stopped"
            delay = min(delay * 2, self.settings.retry_max_delay)
            attempts += 1
            try:
                self._commit([event], cursor, cursor_of(event))
                return "applied"
            except HandlerFailed as failure:
                error = failure.error
        with self.engine.connect() as connection:
            outcome = apply_policy(connection, self.projection, event, cursor, error, attempts, token=self.lease.token)
        instruments.current().poison_event(self.name, event, outcome)
        if outcome == "skipped":
            self._cursor = cursor_of(event)
            if self.on_commit is not None:
                self.on_commit(self.name, cursor_of(event))
        else:
            self._cursor = None
        return outcome

    def _commit(self, events: list[RecordedEvent], cursor: Cursor, new_cursor: Cursor) -> Cursor:
        """Apply ``events`` and move the checkpoint from ``cursor`` to ``new_cursor``, in one transaction."""
        started = time.perf_counter()
        with self.engine.connect() as connection, self._span(events), connection.begin():
            # First the checkpoint row: its lock serialises this batch with operators'
            # skip/replay and with a takeover of the lease (see checkpoints and ownership),
            # and the move commits only with the handlers' writes, under a lease still held.
            if not checkpoints.advance_from(
                connection, self.name, cursor, new_cursor, token=self.lease.token, ttl=self.settings.lease_ttl
            ):
                current = checkpoints.load(connection, self.name)
                if current is None or current.lease_token != self.lease.token:
                    raise LeaseLost(self.name)
                raise StaleCheckpoint
            self._apply_in(connection, events)
            if time.perf_counter() - started > self.settings.lease_ttl / 3:
                ownership.extend(connection, self.lease, ttl=self.settings.lease_ttl)  # renewed at its start: again
        self._cursor = new_cursor
        if events:
            instruments.current().batch_committed(self.name, events, time.perf_counter() - started)
        if self.on_commit is not None:
            self.on_commit(self.name, new_cursor)
        if events and self.on_batch is not None:
            try:
                self.on_batch(self.name, events)
            except Exception:
                logger.exception("projection %s: on_batch callback failed", self.name,
                                 extra={"projection_name": self.name})  # fmt: skip
        return new_cursor

    def _span(self, events: list[RecordedEvent]) -> contextlib.AbstractContextManager[object]:
        """The batch's CONSUMER span (:mod:`eventstore.tracing`); none for a checkpoint-only move."""
        if not events:
            return contextlib.nullcontext()
        return tracing.batch_span(
            self.name, self.projection.categories, events[0].global_position, events[-1].global_position, len(events)
        )

    def _apply_in(self, connection: Connection, events: list[RecordedEvent]) -> None:
        """Run the handlers: one apply_batch call if overridden, else per event (to know which one failed).

        Per-event handlers of a batch of several events write through :class:`DeferredWrites` (unless
        ``defer_writes=False``): a failed flush may be an earlier event's statement, so it fails the batch
        as a whole (index None) and :meth:`_apply` halves it; a batch of one runs on the plain connection.
        """
        projection = self.projection
        kind = type(projection)
        if kind.apply_batch is not Projection.apply_batch:
            guarded(connection, None, functools.partial(projection.apply_batch, events, connection))
            return
        writes = DeferredWrites(connection) if len(events) > 1 and self.settings.defer_writes else None
        target = connection if writes is None else writes.connection
        # Projection.apply, inlined with its handler look-up done once per event type and batch (the per-event
        # cost is the runner's ceiling); an overridden apply or handler_for is called as it is, per event.
        apply = (
            None if kind.apply is Projection.apply and kind.handler_for is Projection.handler_for else projection.apply
        )
        handlers: dict[str, Callable[[RecordedEvent, Connection], Any] | None] = {}
        index = 0
        try:
            for index, event in enumerate(events):  # noqa: B007 (the except clause names the failing event by it)
                if apply is not None:
                    apply(event, target)
                    continue
                event_type = event.type
                if event_type in handlers:
                    handler = handlers[event_type]
                else:
                    handler = handlers[event_type] = projection.handler_for(event_type)
                if handler is not None:
                    handler(event, target)
        except Exception as error:
            failure = handler_failure(connection, index, error)
            if failure is None:
                raise
            if writes is not None and writes.failed is not None and isinstance(failure, HandlerFailed):
                raise HandlerFailed(None, error) from error  # maybe an earlier event's write: find it by halving
            raise failure from error
        if writes is not None:
            guarded(connection, None, writes.finish)

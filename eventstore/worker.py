"""One projection's worker: hold its lock, wait, read a batch, apply it with its checkpoint.

Guarantees
==========

- **Nothing skipped, nothing repeated.** Events are read after the stored
  checkpoint cursor with :meth:`EventStore.read_after_cursor` (the gap rule of
  :mod:`eventstore.store`), in a connection that holds no transaction id. The
  handlers' writes and the checkpoint move commit in one transaction, and the
  checkpoint only moves forward (:func:`eventstore.checkpoints.advance`).
- **One active runner per projection**, across processes and hosts: a
  session-level advisory lock (``pg_try_advisory_lock``, key derived from the
  projection name) held on a dedicated connection, the *session connection*.
  Every batch transaction runs **on that same connection**, so the lock check
  is free and exact: if the session (and with it the lock) is gone, the batch
  cannot commit; if the commit succeeds, the lock was held. A runner that loses
  its lock connection therefore stops applying at once. When a runner process
  dies, the kernel closes its socket and the server ends the backend, which
  releases the lock (PostgreSQL: session locks are released when the session
  ends, https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS);
  TCP keepalives on both ends cover a host that vanishes without closing.
  Standbys retry the lock every ``lock_retry_interval`` seconds.
- **Poison events.** A handler exception rolls the batch back. The events
  before the failing one are committed on their own, the failing one is
  retried ``retry_attempts`` times with exponential backoff, then the
  projection's ``on_error`` policy applies: ``stop`` marks it failed (position,
  error and a short traceback in ``projection_checkpoints``, a row in
  ``projection_failures``) and it waits for ``admin.retry`` / ``admin.skip``;
  ``skip`` records the event as skipped and moves on. Other projections keep
  running either way. A lost database connection is not a poison event: the
  worker reconnects with backoff and starts again from the stored checkpoint.
- ``on_batch`` runs after each commit: at most once per batch (a crash between
  the commit and the call loses it).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from eventstore import checkpoints
from eventstore.checkpoints import Checkpoint, Cursor
from eventstore.errors import ConfigurationError, DatabaseUnavailable, ProjectionError
from eventstore.listener import KEEPALIVE_OPTIONS
from eventstore.projection import Projection
from eventstore.store import EventStore
from eventstore.types import RecordedEvent

__all__ = [
    "CatchUpResult",
    "ProjectionSession",
    "RunnerSettings",
    "Worker",
    "is_connection_error",
    "lock_key",
    "lock_owners",
    "owner_id",
    "session_engine",
]

logger = logging.getLogger(__name__)

OnBatch = Callable[[str, list[RecordedEvent]], None]
OnCommit = Callable[[str, Cursor], None]

_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(:key)")
# Serialises projections' setup() (CREATE TABLE IF NOT EXISTS races on the catalog).
_SETUP_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")
_PING = sa.text("SELECT 1")
# A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.
_LOCK_HOLDERS = sa.text(
    """
    SELECT l.classid::bigint AS classid, l.objid::bigint AS objid, a.pid, a.application_name
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    """
)


def lock_key(projection_name: str) -> int:
    """The advisory lock key (signed 64-bit) of a projection: stable across processes and hosts."""
    digest = hashlib.sha256(f"eventstore.projection:{projection_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_SETUP_KEY = lock_key("\x00setup")


def owner_id() -> str:
    """``host:pid`` of this process, as shown in status reports."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lock_owners(conn: Connection, names: Sequence[str]) -> dict[str, int]:
    """Which projections' locks are held now, and by which backend pid."""
    wanted = {_split_key(lock_key(name)): name for name in names}
    held: dict[str, int] = {}
    for row in conn.execute(_LOCK_HOLDERS):
        name = wanted.get((int(row.classid), int(row.objid)))
        if name is not None:
            held[name] = int(row.pid)
    return held


def _split_key(key: int) -> tuple[int, int]:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


def session_engine(store: EventStore, *, application_name: str = "eventstore-runner") -> Engine:
    """An engine for session connections: no pool (a lock must die with its connection), keepalives on."""
    return sa.create_engine(
        store.engine.url,
        poolclass=sa.NullPool,
        connect_args={**KEEPALIVE_OPTIONS, "application_name": application_name},
    )


def is_connection_error(error: BaseException, connection: Connection | None = None) -> bool:
    """True when ``error`` means the database connection is gone (retry later), not a bug."""
    if connection is not None and (connection.invalidated or connection.closed):
        return True
    if isinstance(error, DatabaseUnavailable):
        return True
    if isinstance(error, sa.exc.DBAPIError):
        return bool(error.connection_invalidated) or _driver_says_gone(error.orig)
    return _driver_says_gone(error)


def _driver_says_gone(error: BaseException | None) -> bool:
    # No SQLSTATE: the socket broke; class 08: connection exception; 57P: the server is shutting down.
    if not isinstance(error, psycopg.OperationalError):
        return False
    return error.sqlstate is None or error.sqlstate.startswith(("08", "57P"))


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """Timing and retry knobs (seconds). Defaults suit production; tests shrink them."""

    batch_size: int = 500
    poll_interval: float = 5.0
    """Fallback re-check when no notification arrives (a lost wake-up only delays)."""
    held_back_interval: float = 0.2
    """Re-check period while events wait behind an open transaction (it may send no wake-up)."""
    lock_retry_interval: float = 1.0
    """How often a standby tries to take the projection lock."""
    retry_attempts: int = 3
    """Handler attempts on a poison event before the on_error policy applies."""
    retry_delay: float = 0.1
    retry_max_delay: float = 2.0
    reconnect_initial_delay: float = 0.1
    reconnect_max_delay: float = 5.0
    liveness_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size={self.batch_size}; it must be at least 1")
        if self.retry_attempts < 1:
            raise ConfigurationError(f"retry_attempts={self.retry_attempts}; it must be at least 1")
        for field in ("poll_interval", "held_back_interval", "lock_retry_interval", "reconnect_max_delay"):
            if getattr(self, field) <= 0:
                raise ConfigurationError(f"{field}={getattr(self, field)}; it must be a positive number of seconds")


@dataclass(slots=True)
class CatchUpResult:
    """What one :meth:`ProjectionSession.catch_up` did."""

    processed: int = 0
    """Events consumed (applied, passed over, or skipped as poison)."""
    caught_up: bool = False
    failed: bool = False


class _Stale(Exception):
    """The stored checkpoint is not where this session expected it (an operator moved it)."""


class _HandlerFailed(Exception):
    """A handler raised on event ``index`` of the batch (None: somewhere in an ``apply_batch``)."""

    def __init__(self, index: int | None, error: BaseException) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


class ProjectionSession:
    """A held projection lock and the connection every batch of that projection commits on.

    Create with :meth:`acquire`; always :meth:`release`.
    """

    def __init__(
        self,
        store: EventStore,
        projection: Projection,
        connection: Connection,
        *,
        settings: RunnerSettings,
        owner: str,
        stop: threading.Event,
        on_batch: OnBatch | None = None,
        on_commit: OnCommit | None = None,
    ) -> None:
        self.store = store
        self.projection = projection
        self.name = projection.name
        self.connection = connection
        self.settings = settings
        self.owner = owner
        self.stop = stop
        self.on_batch = on_batch
        self.on_commit = on_commit
        self._filtered = bool(projection.categories or projection.event_types)
        # The checkpoint as this session last committed or read it. While the
        # lock is held only an operator's skip/retry (of a failed projection)
        # moves it, and every batch re-checks it under the row lock (_Stale),
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
        """Take the projection's lock and set it up; None when another session holds the lock.

        Runs ``projection.setup()`` and creates the checkpoint row. Raises the
        driver's errors when the database cannot be reached.
        """
        connection = engine.connect()
        try:
            with connection.begin():
                held = bool(connection.execute(_TRY_LOCK, {"key": lock_key(projection.name)}).scalar_one())
            if not held:
                connection.close()
                return None
            owner = owner or owner_id()
            with connection.begin():
                connection.execute(_SETUP_LOCK, {"key": _SETUP_KEY})
                projection.setup(connection)
                checkpoints.ensure(connection, projection.name)
                current = checkpoints.lock(connection, projection.name)
                failed = current is not None and current.failed
                checkpoints.set_state(connection, projection.name, "failed" if failed else state, owner=owner)
        except BaseException:
            connection.close()
            raise
        logger.info(
            "projection %s: lock acquired",
            projection.name,
            extra={"projection_name": projection.name, "owner": owner, "state": state},
        )
        return cls(
            store,
            projection,
            connection,
            settings=settings,
            owner=owner,
            stop=stop,
            on_batch=on_batch,
            on_commit=on_commit,
        )

    def release(self) -> None:
        """Record the stopped state, unlock and close; never raises (a dead connection released already)."""
        try:
            if not (self.connection.invalidated or self.connection.closed):
                with self.connection.begin():
                    current = checkpoints.lock(self.connection, self.name)
                    if current is not None and current.state != "failed":
                        checkpoints.set_state(self.connection, self.name, "stopped", owner=None)
                with self.connection.begin():
                    self.connection.execute(_UNLOCK, {"key": lock_key(self.name)})
        except Exception as error:  # the lock dies with the connection anyway
            logger.debug("projection %s: release failed: %s", self.name, error, extra={"projection_name": self.name})
        finally:
            self.connection.close()
        logger.info("projection %s: lock released", self.name, extra={"projection_name": self.name})

    def ping(self) -> None:
        """Check the session connection (and so the lock) is alive; raises the driver error if not."""
        with self.connection.begin():
            self.connection.execute(_PING)

    def load(self) -> Checkpoint:
        """The stored checkpoint (read without taking a transaction id)."""
        with self.connection.begin():
            current = checkpoints.load(self.connection, self.name)
        if current is None:
            raise ProjectionError(f"projection {self.name!r}: its checkpoint row disappeared; restart the runner")
        return current

    # -- catching up ----------------------------------------------------------

    def catch_up(self, *, progress: Callable[[int], None] | None = None) -> CatchUpResult:
        """Apply every readable event after the checkpoint, batch by batch, until a short read.

        Returns early (``caught_up=False``) when :attr:`stop` is set; the
        current batch is finished and committed first. Returns with
        ``failed=True`` when the projection is (or becomes) failed.
        """
        result = CatchUpResult()
        while not self.stop.is_set():
            try:
                self._catch_up_from_checkpoint(result, progress)
                return result
            except _Stale:
                self._cursor = None
                logger.info(
                    "projection %s: checkpoint moved by someone else; re-reading it",
                    self.name,
                    extra={"projection_name": self.name},
                )
        return result

    def _catch_up_from_checkpoint(self, result: CatchUpResult, progress: Callable[[int], None] | None) -> None:
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
            if self.stop.is_set():
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
                cursor = self._commit(chunk, cursor, _cursor_of(chunk[-1]))
                consumed += len(chunk)
                continue
            except _HandlerFailed as failure:
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
            cursor = _cursor_of(chunk[0])
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
                _describe(error),
                extra={"projection_name": self.name, "global_position": event.global_position, "attempt": attempts},
            )
            if self.stop.wait(delay):
                return "stopped"
            delay = min(delay * 2, self.settings.retry_max_delay)
            attempts += 1
            try:
                self._commit([event], cursor, _cursor_of(event))
                return "applied"
            except _HandlerFailed as failure:
                error = failure.error
        return self._apply_policy(event, cursor, error, attempts)

    def _apply_policy(self, event: RecordedEvent, cursor: Cursor, error: BaseException, attempts: int) -> str:
        description = _describe(error)
        short_traceback = "".join(traceback.format_exception(error, limit=-8))[-4000:]
        skip = self.projection.on_error == "skip"
        with self.connection.begin():
            current = checkpoints.lock(self.connection, self.name)
            if current is None or current.cursor != cursor:
                raise _Stale
            status = "skipped" if skip else "failed"
            checkpoints.record_failure(
                self.connection,
                self.name,
                event,
                error=description,
                traceback=short_traceback,
                attempts=attempts,
                status=status,
            )
            if skip:
                checkpoints.advance(self.connection, self.name, _cursor_of(event))
                self._cursor = _cursor_of(event)
            else:
                self._cursor = None
                checkpoints.mark_failed(self.connection, self.name, event.global_position, description, short_traceback)
        extra = {
            "projection_name": self.name,
            "global_position": event.global_position,
            "event_type": event.type,
            "stream_id": event.stream_id,
            "attempts": attempts,
            "error": description,
        }
        if skip:
            logger.warning("projection %s: skipped poison event at position %d: %s", self.name,
                           event.global_position, description, extra=extra)  # fmt: skip
            if self.on_commit is not None:
                self.on_commit(self.name, _cursor_of(event))
            return "skipped"
        logger.error("projection %s: stopped at poison event at position %d: %s", self.name,
                     event.global_position, description, extra=extra)  # fmt: skip
        return "failed"

    def _commit(self, events: list[RecordedEvent], cursor: Cursor, new_cursor: Cursor) -> Cursor:
        """Apply ``events`` and move the checkpoint from ``cursor`` to ``new_cursor``, in one transaction."""
        connection = self.connection
        with connection.begin():
            # First the checkpoint row: its lock serialises this batch with operators'
            # skip/replay (see checkpoints), and the move commits only with the handlers' writes.
            if not checkpoints.advance_from(connection, self.name, cursor, new_cursor):
                raise _Stale
            self._apply_in(connection, events)
        self._cursor = new_cursor
        if self.on_commit is not None:
            self.on_commit(self.name, new_cursor)
        if events and self.on_batch is not None:
            try:
                self.on_batch(self.name, events)
            except Exception:
                logger.exception("projection %s: on_batch callback failed", self.name,
                                 extra={"projection_name": self.name})  # fmt: skip
        return new_cursor

    def _apply_in(self, connection: Connection, events: list[RecordedEvent]) -> None:
        """Run the handlers: one apply_batch call if overridden, else per event (to know which one failed)."""
        if type(self.projection).apply_batch is not Projection.apply_batch:
            self._guarded(connection, None, functools.partial(self.projection.apply_batch, events, connection))
            return
        for index, event in enumerate(events):
            self._guarded(connection, index, functools.partial(self.projection.apply, event, connection))

    @staticmethod
    def _guarded(connection: Connection, index: int | None, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception as error:
            if is_connection_error(error, connection):
                raise
            raise _HandlerFailed(index, error) from error


def _cursor_of(event: RecordedEvent) -> Cursor:
    return event.transaction_order, event.global_position


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 2000 else text[:1997] + "..."


class Worker:
    """The thread that keeps one projection up to date while this runner holds its lock.

    Waits for the first of: ``wake`` (a notification, a reconnect of the
    listener, a stop request), the fallback ``poll_interval``, or, while the
    gap rule holds events back, ``held_back_interval``. Then catches up.
    """

    def __init__(
        self,
        store: EventStore,
        projection: Projection,
        *,
        engine: Engine,
        settings: RunnerSettings,
        stop: threading.Event,
        owner: str,
        on_batch: OnBatch | None = None,
        on_commit: OnCommit | None = None,
    ) -> None:
        self.store = store
        self.projection = projection
        self.engine = engine
        self.settings = settings
        self.stop = stop
        self.owner = owner
        self.on_batch = on_batch
        self.on_commit = on_commit
        self.wake = threading.Event()
        self.active = threading.Event()
        """Set while this worker holds the projection's lock."""
        self.thread = threading.Thread(target=self.run, name=f"eventstore-projection-{projection.name}", daemon=True)

    def run(self) -> None:
        """Thread body: acquire (or stand by), serve, reconnect with backoff; returns when stopped."""
        name = self.projection.name
        delay = self.settings.reconnect_initial_delay
        standby_logged = False
        while not self.stop.is_set():
            session: ProjectionSession | None = None
            try:
                session = ProjectionSession.acquire(
                    self.engine,
                    self.store,
                    self.projection,
                    settings=self.settings,
                    stop=self.stop,
                    owner=self.owner,
                    on_batch=self.on_batch,
                    on_commit=self.on_commit,
                )
                if session is None:
                    if not standby_logged:
                        logger.info("projection %s: locked by another runner; standing by", name,
                                    extra={"projection_name": name})  # fmt: skip
                        standby_logged = True
                    self.stop.wait(self.settings.lock_retry_interval)
                    continue
                standby_logged = False
                delay = self.settings.reconnect_initial_delay
                self._serve(session)
            except Exception as error:
                if is_connection_error(error, session.connection if session else None):
                    logger.warning("projection %s: database connection lost (%s); retrying in %.1f s", name,
                                   str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
                                   delay, extra={"projection_name": name, "retry_in": delay})  # fmt: skip
                else:
                    logger.exception("projection %s: worker error; retrying in %.1f s", name, delay,
                                     extra={"projection_name": name, "retry_in": delay})  # fmt: skip
                self.stop.wait(delay)
                delay = min(delay * 2, self.settings.reconnect_max_delay)
            finally:
                self.active.clear()
                if session is not None:
                    session.release()

    def _serve(self, session: ProjectionSession) -> None:
        self.active.set()
        while not self.stop.is_set():
            self.wake.clear()
            result = session.catch_up()
            if self.stop.is_set():
                return
            timeout = self.settings.poll_interval
            if not result.failed and self.store.held_back():
                timeout = min(timeout, self.settings.held_back_interval)
            if not self.wake.wait(timeout):
                session.ping()

    def notify(self) -> None:
        """Wake the worker (a notification arrived, the listener reconnected, or stop)."""
        self.wake.set()

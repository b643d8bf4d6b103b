"""The :class:`ProjectionRunner`: one listener, a lease keeper, a few workers for any number of projections.

``ProjectionRunner(store, projections).run()`` blocks until :meth:`stop` or
SIGTERM/SIGINT. On the first signal every worker finishes its current batch,
commits its checkpoint and releases its lock, and :meth:`run` returns (a CLI
then exits 0) within ``shutdown_timeout`` seconds; a second signal aborts at
once with :class:`KeyboardInterrupt`. Signal handlers are installed only when
:meth:`run` is called in the main thread, and restored when it returns.

Any number of runners may run the same projections, in any processes on any
hosts, directly or through a connection pooler: for each projection exactly
one applies at a time, the one holding its lease; the others stand by (see
:mod:`eventstore.runner.ownership` for how, and
:mod:`eventstore.runner.session` for the delivery guarantees).

A runner's connections do not grow with its projections (the connection
budget, ``connections``, 6 by default): one LISTEN connection, and a pool of
``connections - 1`` shared by the lease keeper and ``connections - 2`` worker
threads that take turns on the projections due (:mod:`eventstore.runner.worker`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore import instruments
from eventstore.database import is_connection_error, libpq_url, translate_driver_errors, url_of
from eventstore.errors import ConfigurationError, ProjectionError, ProjectionTimeout, first_line
from eventstore.projection import Projection
from eventstore.runner import checkpoints, ownership
from eventstore.runner.checkpoints import Cursor
from eventstore.runner.connections import session_engine
from eventstore.runner.listener import Listener
from eventstore.runner.ownership import owner_id
from eventstore.runner.session import ProjectionSession
from eventstore.runner.settings import RunnerSettings
from eventstore.runner.stalls import StallWatch
from eventstore.runner.waiting import wait_until_processed
from eventstore.runner.worker import Schedule, Worker
from eventstore.store import NOTIFY_CHANNEL, EventStore
from eventstore.types import RecordedEvent

__all__ = ["ProjectionRunner"]

logger = logging.getLogger(__name__)

# How many more connections the server accepts now (checked against the budget at start).
_ROOM = sa.text(
    """
    SELECT m.max_connections, u.used, m.max_connections - r.reserved - u.used AS free
    FROM (SELECT current_setting('max_connections')::int AS max_connections) AS m,
         (SELECT current_setting('superuser_reserved_connections')::int AS reserved) AS r,
         (SELECT count(*)::int AS used FROM pg_stat_activity WHERE backend_type = 'client backend') AS u
    """
)


class ProjectionRunner:
    """Keep ``projections`` up to date from ``store``.

    Keyword arguments: ``poll_interval`` (fallback re-check, seconds),
    ``on_batch(projection_name, events)`` (called after each committed batch),
    and the :class:`~eventstore.runner.RunnerSettings` fields (``batch_size``,
    ``held_back_interval``, ``lock_retry_interval``, ``retry_attempts``,
    ``retry_delay``, ``retry_max_delay``, ``reconnect_max_delay``,
    ``liveness_interval``, ``stall_warning_after``, ``lease_ttl``, and
    ``connections``: the connection budget), plus ``shutdown_timeout``
    and ``listen_url`` (a direct connection URL for the LISTEN session, for
    when ``store`` goes through a transaction-mode pooler; default: the
    store's URL).

    Raises :class:`ConfigurationError` for a bad projection list (names the
    projection and the fix).

    :meth:`close` (or a ``with`` block) stops a running :meth:`run` and waits
    for it; the store stays open (close it yourself, e.g. ``with
    EventStore(url) as store, ProjectionRunner(store, [...]) as runner:``).
    """

    def __init__(
        self,
        store: EventStore,
        projections: Sequence[Projection],
        *,
        poll_interval: float = 5.0,
        on_batch: Callable[[str, list[RecordedEvent]], None] | None = None,
        shutdown_timeout: float = 8.0,
        listen_url: str | None = None,
        **settings: Any,
    ) -> None:
        if isinstance(projections, Projection) or not projections:
            raise ConfigurationError("ProjectionRunner needs a non-empty list of Projection instances")
        names: set[str] = set()
        for projection in projections:
            if not isinstance(projection, Projection):
                raise ConfigurationError(
                    f"expected Projection instances, got {projection!r}; pass e.g. OrderTotals(), not OrderTotals"
                )
            projection.check()
            if projection.name in names:
                raise ConfigurationError(f"two projections are named {projection.name!r}; names must be unique")
            names.add(projection.name)
        try:
            self.settings = RunnerSettings(poll_interval=poll_interval, **settings)
        except TypeError as error:
            raise ConfigurationError(f"ProjectionRunner: {error}") from error
        self.store = store
        self.projections = list(projections)
        self.on_batch = on_batch
        self.shutdown_timeout = shutdown_timeout
        self.listen_url = listen_url
        self.owner = owner_id()
        self._stop = threading.Event()
        self._signalled = 0
        self._ran = False
        self._running = threading.Event()
        self._done = threading.Event()
        self.failed: list[str] = []
        """Projections the last :meth:`run_until_caught_up` left stopped on a poison event."""
        self._progress = threading.Condition()
        self._lock = threading.Lock()
        self._sessions: dict[str, ProjectionSession] = {}
        self._standing_by: set[str] = set()
        self._schedule = Schedule()
        self._workers: list[Worker] = []
        self._held_back_lock = threading.Lock()
        self._held_back_at = -1e9
        self._held_back_value = False
        self._held_back_wakes = -1
        self._wakes = 0
        self.listener: Listener = Listener(
            libpq_url(url_of(listen_url) if listen_url else store.engine),
            NOTIFY_CHANNEL,
            self._on_wake,
            liveness_interval=self.settings.liveness_interval,
            reconnect_initial_delay=self.settings.reconnect_initial_delay,
            reconnect_max_delay=self.settings.reconnect_max_delay,
        )
        """The LISTEN side (its ``listening`` event is set while notifications can arrive)."""

    def __repr__(self) -> str:
        return f"ProjectionRunner({[projection.name for projection in self.projections]!r})"

    # -- running ---------------------------------------------------------------

    def run(self) -> None:
        """Run until :meth:`stop` or SIGTERM/SIGINT; returns after a clean shutdown.

        A runner runs once; create a new one to run again.
        """
        if self._ran:
            raise ProjectionError("this ProjectionRunner has already run; create a new one to run again")
        self._ran = True
        settings = self.settings
        # The connection budget: the LISTEN connection, plus a pool shared by the
        # lease keeper and the workers, whose reads go through it too.
        engine = session_engine(self.store.engine, application_name="eventstore-runner",
                                pool_size=settings.connections - 1)  # fmt: skip
        store = EventStore(engine, read_batch_size=self.store.read_batch_size)
        listener = self.listener
        self._engine, self._store = engine, store
        self._stalls = StallWatch(store, warn_after=settings.stall_warning_after)
        self._workers = [
            Worker(
                number,
                self._schedule,
                self._session,
                settings=settings,
                stop=self._stop,
                held_back=self._held_back,
                on_lost=self._lost,
            )
            for number in range(1, min(settings.connections - 2, len(self.projections)) + 1)
        ]
        threads = [
            threading.Thread(target=listener.run, args=(self._stop,), name="eventstore-listener", daemon=True),
            threading.Thread(target=self._keep_leases, name="eventstore-leases", daemon=True),
        ]
        with self._signal_handlers():
            logger.info("runner starting", extra={"owner": self.owner, "projections": self._names(),
                                                  "connections": settings.connections})  # fmt: skip
            for thread in [*threads, *(worker.thread for worker in self._workers)]:
                thread.start()
            self._running.set()
            try:
                while not self._stop.wait(1.0):
                    pass
                if self._signalled:
                    logger.info("runner: signal received; finishing current batches",
                                extra={"owner": self.owner})  # fmt: skip
                self._shutdown(threads)
            finally:
                self._running.clear()
                store.close()
                engine.dispose()
                self._done.set()
        logger.info("runner stopped", extra={"owner": self.owner, "projections": self._names()})

    def stop(self) -> None:
        """Ask :meth:`run` to finish the current batches and return; safe from any thread."""
        self._stop.set()
        self._schedule.close()

    @property
    def running(self) -> bool:
        """True while :meth:`run` is active."""
        return self._running.is_set()

    def active_projections(self) -> list[str]:
        """Names of the projections this runner holds the lease of and has set up (the others stand by)."""
        with self._lock:
            return [p.name for p in self.projections if p.name in self._sessions and self._sessions[p.name].ready]

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        deadline = time.monotonic() + self.shutdown_timeout
        self._schedule.close()
        for worker in self._workers:
            worker.thread.join(max(0.0, deadline - time.monotonic()))
            if worker.thread.is_alive():
                logger.error("%s did not finish its batch within %.1f s; abandoning it", worker.thread.name,
                             self.shutdown_timeout)  # fmt: skip
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            instruments.current().projection_active(session.name, False)
            session.release()

    # -- leases -----------------------------------------------------------------

    def _keep_leases(self) -> None:
        """Thread body: renew the leases held, and take the free ones, on one pooled connection at a time.

        A standby's retry is one query for all its projections, on a pooled
        connection: no new connection per retry.
        """
        settings = self.settings
        renew_every = settings.lease_ttl / 3
        next_renew = next_take = 0.0
        renewed_at = time.monotonic()
        delay = settings.reconnect_initial_delay
        started = False
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if not started:
                    self._start_leases()
                    started = True
                if now >= next_renew:
                    with self._lock:
                        held = [session.lease for session in self._sessions.values()]
                    with self._engine.begin() as connection:
                        lost = ownership.renew(connection, held, ttl=settings.lease_ttl)
                    renewed_at, next_renew = now, now + renew_every
                    for lease in lost:
                        self._lost(lease.name)
                if now >= next_take:
                    self._take_free_leases()
                    next_take = now + settings.lock_retry_interval
                delay = settings.reconnect_initial_delay
            except Exception as error:
                if is_connection_error(error):
                    logger.warning("runner: database connection lost (%s); retrying in %.1f s", first_line(error),
                                   delay, extra={"owner": self.owner, "retry_in": delay})  # fmt: skip
                else:
                    logger.exception("runner: lease keeping failed; retrying in %.1f s", delay,
                                     extra={"owner": self.owner, "retry_in": delay})  # fmt: skip
                if time.monotonic() - renewed_at > settings.lease_ttl:
                    for name in self._names():
                        self._lost(name)  # expired by now: whoever takes over next has a new token
                self._stop.wait(delay)
                delay = min(delay * 2, settings.reconnect_max_delay)
                continue
            self._stop.wait(max(0.0, min(next_renew, next_take) - time.monotonic()))

    def _start_leases(self) -> None:
        with self._engine.begin() as connection:
            for projection in self.projections:
                checkpoints.ensure(connection, projection.name)
            room = connection.execute(_ROOM).one()
        if room.free < self.settings.connections:
            logger.warning(
                "runner: the server has room for %d more connection(s) (max_connections=%d, %d in use) but this "
                "runner's budget is %d; raise max_connections or lower connections=",
                room.free, room.max_connections, room.used, self.settings.connections,
                extra={"owner": self.owner},
            )  # fmt: skip

    def _take_free_leases(self) -> None:
        with self._lock:
            free = [name for name in self._names() if name not in self._sessions]
        if not free:
            return
        with self._engine.begin() as connection:
            taken = ownership.acquire(connection, free, self.owner, ttl=self.settings.lease_ttl)
        by_name = {projection.name: projection for projection in self.projections}
        for lease in taken:
            session = ProjectionSession(
                self._store,
                by_name[lease.name],
                self._engine,
                lease,
                settings=self.settings,
                stop=self._stop,
                on_batch=self.on_batch,
                on_commit=self._on_commit,
            )
            with self._lock:
                self._sessions[lease.name] = session
            self._standing_by.discard(lease.name)
            instruments.current().projection_active(lease.name, True)
        self._schedule.wake(lease.name for lease in taken)
        for name in set(free) - {lease.name for lease in taken} - self._standing_by:
            self._standing_by.add(name)
            logger.info("projection %s: leased by another runner; standing by", name,
                        extra={"projection_name": name})  # fmt: skip

    def _session(self, name: str) -> ProjectionSession | None:
        with self._lock:
            return self._sessions.get(name)

    def _lost(self, name: str) -> None:
        with self._lock:
            session = self._sessions.pop(name, None)
        if session is None:
            return
        self._schedule.forget(name)
        instruments.current().projection_active(name, False)
        logger.warning("projection %s: lease lost (another owner took it over after it expired); standing by",
                       name, extra={"projection_name": name, "owner": self.owner})  # fmt: skip

    def _held_back(self) -> bool:
        """Whether events wait behind the fence, asked before a read (see :meth:`Worker._turn`).

        One answer serves every worker until the next wake-up (an event that
        becomes held back was committed, and so sent a wake-up, after it) or
        for ``held_back_interval`` at most.
        """
        now = time.monotonic()
        with self._held_back_lock:
            if self._held_back_wakes == self._wakes and now - self._held_back_at < self.settings.held_back_interval:
                return self._held_back_value
            wakes = self._wakes
        try:
            value = self._store.held_back()
        except Exception:  # the turn's read reports a lost connection; re-check soon meanwhile
            return True
        with self._held_back_lock:
            self._held_back_at, self._held_back_value, self._held_back_wakes = now, value, wakes
        self._stalls.observe(value)
        return value

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
        for number in previous:
            signal.signal(number, self._on_signal)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No logging here: a signal handler may interrupt the logging module while it holds its lock.
        self._signalled += 1
        if self._signalled > 1:
            raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name}): aborting")
        self.stop()

    def _on_wake(self, reason: str) -> None:
        with self._held_back_lock:
            self._wakes += 1
        with self._lock:
            owned = list(self._sessions)
        self._schedule.wake(owned)

    def _on_commit(self, name: str, cursor: Cursor) -> None:
        with self._progress:
            self._progress.notify_all()

    def _names(self) -> list[str]:
        return [projection.name for projection in self.projections]

    # -- catching up and waiting ------------------------------------------------

    def run_until_caught_up(self, timeout: float | None = None) -> int:
        """Process every projection up to the current head, then return the number of events consumed.

        While :meth:`run` is active this only waits for its workers. Otherwise
        it takes each projection's lock for the duration (raises
        :class:`ProjectionBusy` when another runner holds it). A projection
        that is or becomes failed is left failed; :attr:`failed` then names it.
        Raises :class:`~eventstore.errors.ProjectionTimeout` (a
        :class:`TimeoutError`) after ``timeout`` seconds.
        """
        if self._running.is_set():
            self.wait_until_processed(self.store.head_position(), timeout=timeout or 3600.0)
            return 0
        stop = threading.Event()
        timer = threading.Timer(timeout, stop.set) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        engine = session_engine(self.store.engine, application_name="eventstore-catch-up", pool_size=2)
        store = EventStore(engine, read_batch_size=self.store.read_batch_size)
        self.failed = []
        total = 0
        try:
            with translate_driver_errors(self.store.engine):
                for projection in self.projections:
                    total += self._catch_up_one(engine, store, projection, stop)
        finally:
            if timer is not None:
                timer.cancel()
            store.close()
            engine.dispose()
        return total

    def _catch_up_one(self, engine: Engine, store: EventStore, projection: Projection, stop: threading.Event) -> int:
        session = ProjectionSession.acquire_or_busy(
            engine,
            store,
            projection,
            settings=self.settings,
            stop=stop,
            owner=self.owner,
            on_batch=self.on_batch,
            on_commit=self._on_commit,
        )
        try:
            result = session.catch_up()
        finally:
            session.release()
        if result.failed:
            self.failed.append(projection.name)
        elif not result.caught_up:
            raise ProjectionTimeout(
                f"projection {projection.name!r} did not catch up in time ({result.processed} events processed); "
                "pass a larger timeout"
            )
        return result.processed

    def wait_until_processed(self, position: int, timeout: float = 10.0) -> None:
        """Return once every projection has consumed the event at ``position`` (and all before it).

        Works whichever runner (process, host) applies the projections.
        Raises :class:`~eventstore.errors.ProjectionTimeout` naming the lagging
        projections (and their stored error, if failed),
        :class:`~eventstore.errors.UnknownPosition` if no event has that position.
        """
        wait_until_processed(self.store, self._names(), position, timeout=timeout, pause=self._wait_for_progress)

    def _wait_for_progress(self, seconds: float) -> None:
        with self._progress:
            self._progress.wait(seconds)

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Stop :meth:`run` if it is running (finishing the current batches) and wait for it to return."""
        self.stop()
        if self._running.is_set():
            self._done.wait(self.shutdown_timeout + 2.0)

    def __enter__(self) -> ProjectionRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from eventstore.database import libpq_url, translate_driver_errors, url_of
from eventstore.errors import ConfigurationError, ProjectionError, ProjectionTimeout
from eventstore.projection import Projection
from eventstore.runner.checkpoints import Cursor
from eventstore.runner.connections import session_engine
from eventstore.runner.leases import LeaseKeeper
from eventstore.runner.listener import Listener
from eventstore.runner.ownership import owner_id
from eventstore.runner.session import ProjectionSession
from eventstore.runner.settings import RunnerOptions, RunnerSettings
from eventstore.runner.stalls import HeldBackCheck, StallWatch
from eventstore.runner.waiting import wait_until_processed
from eventstore.runner.worker import Schedule, Worker
from eventstore.store import NOTIFY_CHANNEL, EventStore
from eventstore.types import RecordedEvent

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.12

__all__ = ["ProjectionRunner"]

logger = logging.getLogger(__name__)


class ProjectionRunner:
    """Keep ``projections`` up to date from ``store``.

    Keyword arguments: ``poll_interval`` (fallback re-check, seconds),
    ``on_batch(projection_name, events)`` (called after each committed batch),
    and the :class:`~eventstore.runner.RunnerSettings` fields (``batch_size``,
    ``held_back_interval``, ``lock_retry_interval``, ``retry_attempts``,
    ``retry_delay``, ``retry_max_delay``, ``reconnect_max_delay``,
    ``liveness_interval``, ``stall_warning_after``, ``lease_ttl``, and
    ``connections``: the connection budget; typed as
    :class:`~eventstore.runner.RunnerOptions` for type checkers), plus ``shutdown_timeout``
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
        **settings: Unpack[RunnerOptions],
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
        self._schedule = Schedule()
        self._leases = LeaseKeeper(
            self.projections,
            owner=self.owner,
            settings=self.settings,
            stop=self._stop,
            schedule=self._schedule,
            on_batch=on_batch,
            on_commit=self._on_commit,
        )
        self._held_back: HeldBackCheck | None = None
        self._workers: list[Worker] = []
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
        watch = StallWatch(store, warn_after=settings.stall_warning_after)
        self._held_back = held_back = HeldBackCheck(store, watch, interval=settings.held_back_interval)
        self._workers = [
            Worker(
                number,
                self._schedule,
                self._leases.session,
                settings=settings,
                stop=self._stop,
                held_back=held_back,
                on_lost=self._leases.lost,
            )
            for number in range(1, min(settings.connections - 2, len(self.projections)) + 1)
        ]
        threads = [
            threading.Thread(target=self.listener.run, args=(self._stop,), name="eventstore-listener", daemon=True),
            threading.Thread(target=self._leases.run, args=(engine, store), name="eventstore-leases", daemon=True),
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
        return self._leases.active()

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
        self._leases.release_all()

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
        if self._held_back is not None:
            self._held_back.woken()
        self._schedule.wake(self._leases.owned())

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

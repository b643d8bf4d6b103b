"""A runner's lease keeper: the projections it owns, renewing their leases and taking the free ones.

One thread per runner (:meth:`LeaseKeeper.run`), on one pooled connection at
a time: every third of ``lease_ttl`` it renews every lease the runner holds
(one statement) and notices the ones another owner took over; every
``lock_retry_interval`` it tries to take the free ones (one statement for all
of them), so a standby costs no new connection per retry. Each lease taken
becomes a :class:`~eventstore.runner.session.ProjectionSession` that the
workers catch up (see :mod:`eventstore.runner.worker`); the rules of the
leases themselves are in :mod:`eventstore.runner.ownership`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore import instruments
from eventstore.database import is_connection_error
from eventstore.errors import first_line
from eventstore.projection import Projection
from eventstore.runner import checkpoints, ownership
from eventstore.runner.session import OnBatch, OnCommit, ProjectionSession
from eventstore.runner.settings import RunnerSettings
from eventstore.runner.worker import Schedule
from eventstore.store import EventStore

__all__ = ["LeaseKeeper"]

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


class LeaseKeeper:
    """The leases one runner holds, and the sessions that apply its projections under them; thread-safe."""

    def __init__(
        self,
        projections: Sequence[Projection],
        *,
        owner: str,
        settings: RunnerSettings,
        stop: threading.Event,
        schedule: Schedule,
        on_batch: OnBatch | None,
        on_commit: OnCommit | None,
    ) -> None:
        self.projections = list(projections)
        self.owner = owner
        self.settings = settings
        self.stop = stop
        self.schedule = schedule
        self.on_batch = on_batch
        self.on_commit = on_commit
        self._lock = threading.Lock()
        self._sessions: dict[str, ProjectionSession] = {}
        self._standing_by: set[str] = set()

    # -- what the runner and its workers ask ----------------------------------------

    def session(self, name: str) -> ProjectionSession | None:
        """The session of ``name`` while this runner holds its lease."""
        with self._lock:
            return self._sessions.get(name)

    def owned(self) -> list[str]:
        """The projections whose lease this runner holds."""
        with self._lock:
            return list(self._sessions)

    def active(self) -> list[str]:
        """The projections whose lease this runner holds and that are set up, in the runner's order."""
        with self._lock:
            return [p.name for p in self.projections if p.name in self._sessions and self._sessions[p.name].ready]

    def lost(self, name: str) -> None:
        """Forget ``name``: another owner took its lease over (its next batch would fail the token check)."""
        with self._lock:
            session = self._sessions.pop(name, None)
        if session is None:
            return
        self.schedule.forget(name)
        instruments.current().projection_active(name, False)
        logger.warning("projection %s: lease lost (another owner took it over after it expired); standing by",
                       name, extra={"projection_name": name, "owner": self.owner})  # fmt: skip

    def release_all(self) -> None:
        """Free every lease held, at once (a stopping runner, after its workers finished)."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            instruments.current().projection_active(session.name, False)
            session.release()

    # -- the thread ------------------------------------------------------------------

    def run(self, engine: Engine, store: EventStore) -> None:
        """Thread body: renew and take leases on ``engine`` until :attr:`stop`; never raises."""
        settings = self.settings
        renew_every = settings.lease_ttl / 3
        next_renew = next_take = 0.0
        renewed_at = time.monotonic()
        delay = settings.reconnect_initial_delay
        started = False
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                if not started:
                    self._start(engine)
                    started = True
                if now >= next_renew:
                    held = [session.lease for session in self._snapshot()]
                    with engine.begin() as connection:
                        lost = ownership.renew(connection, held, ttl=settings.lease_ttl)
                    renewed_at, next_renew = now, now + renew_every
                    for lease in lost:
                        self.lost(lease.name)
                if now >= next_take:
                    self._take_free(engine, store)
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
                    for name in self.owned():
                        self.lost(name)  # expired by now: whoever takes over next has a new token
                self.stop.wait(delay)
                delay = min(delay * 2, settings.reconnect_max_delay)
                continue
            self.stop.wait(max(0.0, min(next_renew, next_take) - time.monotonic()))

    def _snapshot(self) -> list[ProjectionSession]:
        with self._lock:
            return list(self._sessions.values())

    def _start(self, engine: Engine) -> None:
        """Create the missing checkpoint rows; warn when the server has less room than the connection budget."""
        with engine.begin() as connection:
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

    def _take_free(self, engine: Engine, store: EventStore) -> None:
        with self._lock:
            free = [p.name for p in self.projections if p.name not in self._sessions]
        if not free:
            return
        with engine.begin() as connection:
            taken = ownership.acquire(connection, free, self.owner, ttl=self.settings.lease_ttl)
        by_name = {projection.name: projection for projection in self.projections}
        for lease in taken:
            session = ProjectionSession(
                store,
                by_name[lease.name],
                engine,
                lease,
                settings=self.settings,
                stop=self.stop,
                on_batch=self.on_batch,
                on_commit=self.on_commit,
            )
            with self._lock:
                self._sessions[lease.name] = session
            self._standing_by.discard(lease.name)
            instruments.current().projection_active(lease.name, True)
        self.schedule.wake(lease.name for lease in taken)
        for name in set(free) - {lease.name for lease in taken} - self._standing_by:
            self._standing_by.add(name)
            logger.info("projection %s: leased by another runner; standing by", name,
                        extra={"projection_name": name})  # fmt: skip

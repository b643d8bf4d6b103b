"""The thread that keeps one projection up to date while its runner owns it."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine

from eventstore import instruments
from eventstore.database import is_connection_error
from eventstore.errors import first_line
from eventstore.projection import Projection
from eventstore.runner.session import OnBatch, OnCommit, ProjectionSession
from eventstore.runner.settings import RunnerSettings
from eventstore.runner.stalls import StallWatch
from eventstore.store import EventStore

__all__ = ["Worker"]

logger = logging.getLogger(__name__)


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
        stalls: StallWatch | None = None,
    ) -> None:
        self.store = store
        self.projection = projection
        self.engine = engine
        self.settings = settings
        self.stop = stop
        self.owner = owner
        self.on_batch = on_batch
        self.on_commit = on_commit
        self.stalls = stalls
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
                                   first_line(error),
                                   delay, extra={"projection_name": name, "retry_in": delay})  # fmt: skip
                else:
                    logger.exception("projection %s: worker error; retrying in %.1f s", name, delay,
                                     extra={"projection_name": name, "retry_in": delay})  # fmt: skip
                self.stop.wait(delay)
                delay = min(delay * 2, self.settings.reconnect_max_delay)
            finally:
                if self.active.is_set():
                    instruments.current().projection_active(name, False)
                self.active.clear()
                if session is not None:
                    session.release()

    def _serve(self, session: ProjectionSession) -> None:
        self.active.set()
        instruments.current().projection_active(self.projection.name, True)
        while not self.stop.is_set():
            self.wake.clear()
            result = session.catch_up()
            if self.stop.is_set():
                return
            timeout = self.settings.poll_interval
            held_back = not result.failed and self.store.held_back()
            if held_back:
                timeout = min(timeout, self.settings.held_back_interval)
            if self.stalls is not None and not result.failed:
                self.stalls.observe(held_back)
            if not self.wake.wait(timeout):
                session.ping()

    def notify(self) -> None:
        """Wake the worker (a notification arrived, the listener reconnected, or stop)."""
        self.wake.set()

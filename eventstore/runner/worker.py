"""The runner's few worker threads, and the schedule that hands them projections to catch up.

A runner does not give each projection a thread and a connection: a
:class:`Schedule` keeps which owned projections are due (woken by a
notification, a reconnect, a timer), and ``connections - 2`` :class:`Worker`
threads take turns: each takes a due projection, catches it up for at most
``max_batches`` batches on a connection borrowed from the runner's pool, and
hands it back (due again at once if it has more to do, else when its timer
fires). A projection is never worked on by two workers at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from eventstore.database import is_connection_error
from eventstore.errors import first_line
from eventstore.runner.ownership import LeaseLost
from eventstore.runner.session import ProjectionSession
from eventstore.runner.settings import RunnerSettings

__all__ = ["Schedule", "Worker"]

logger = logging.getLogger(__name__)

MAX_BATCHES_PER_TURN = 10
"""Full batches one turn may commit before the projection goes to the back of the queue."""


class Schedule:
    """Which projections are due, which are being worked on, and when the others are due next."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._due: dict[str, None] = {}  # insertion-ordered: first come, first served
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._timers: dict[str, float] = {}
        self._closed = False

    def wake(self, names: Iterable[str]) -> None:
        """Make ``names`` due now (again after the current turn, for one being worked on)."""
        with self._condition:
            for name in names:
                self._timers.pop(name, None)
                if name in self._busy:
                    self._again.add(name)
                else:
                    self._due.setdefault(name, None)
            self._condition.notify_all()

    def forget(self, name: str) -> None:
        """Stop scheduling ``name`` (its lease is gone)."""
        with self._condition:
            self._due.pop(name, None)
            self._again.discard(name)
            self._timers.pop(name, None)

    def take(self, timeout: float) -> str | None:
        """The next due projection, now marked busy; None after ``timeout`` or once closed."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while not self._closed:
                now = time.monotonic()
                for name, due_at in list(self._timers.items()):
                    if due_at <= now:
                        del self._timers[name]
                        if name not in self._busy:
                            self._due.setdefault(name, None)
                if self._due:
                    name = next(iter(self._due))
                    del self._due[name]
                    self._busy.add(name)
                    return name
                wait = deadline - now
                if self._timers:
                    wait = min(wait, min(self._timers.values()) - now)
                if wait <= 0 and now >= deadline:
                    return None
                self._condition.wait(max(wait, 0.001))
            return None

    def done(self, name: str, *, more: bool, recheck_in: float | None) -> None:
        """End the turn on ``name``: due again now if ``more`` (or woken meanwhile), else after ``recheck_in``."""
        with self._condition:
            self._busy.discard(name)
            if more or name in self._again:
                self._again.discard(name)
                self._due.setdefault(name, None)
                self._condition.notify_all()
            elif recheck_in is not None:
                self._timers[name] = time.monotonic() + recheck_in
                self._condition.notify_all()

    def close(self) -> None:
        """Wake every waiting worker; :meth:`take` returns None from now on."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class Worker:
    """One of a runner's worker threads: takes due projections from the schedule and catches them up."""

    def __init__(
        self,
        number: int,
        schedule: Schedule,
        sessions: Callable[[str], ProjectionSession | None],
        *,
        settings: RunnerSettings,
        stop: threading.Event,
        held_back: Callable[[], bool],
        on_lost: Callable[[str], None],
    ) -> None:
        self.schedule = schedule
        self.sessions = sessions
        self.settings = settings
        self.stop = stop
        self.held_back = held_back
        self.on_lost = on_lost
        self._delays: dict[str, float] = {}
        self.thread = threading.Thread(target=self.run, name=f"eventstore-worker-{number}", daemon=True)

    def run(self) -> None:
        """Thread body: take turns until stopped."""
        while not self.stop.is_set():
            name = self.schedule.take(timeout=1.0)
            if name is None:
                continue
            more, recheck_in = False, None
            session = self.sessions(name)
            try:
                if session is not None:
                    more, recheck_in = self._turn(session)
            finally:
                self.schedule.done(name, more=more, recheck_in=recheck_in)

    def _turn(self, session: ProjectionSession) -> tuple[bool, float | None]:
        """Catch ``session`` up for one turn; (more to do now, seconds until the next check)."""
        name = session.name
        try:
            if not session.ready:
                session.set_up()
            # Asked before the read, never after: an event the read cannot see yet (committed
            # behind an older open transaction, the fence) was committed before this check, which
            # then says so; one committed after it sends a wake-up of its own. Asked after the read,
            # a blocker that ended in between would hide the event until the poll timer.
            held_back = self.held_back()
            result = session.catch_up(max_batches=MAX_BATCHES_PER_TURN)
        except LeaseLost:
            self.on_lost(name)
            return False, None
        except Exception as error:
            delay = self._delays.get(name, self.settings.reconnect_initial_delay)
            self._delays[name] = min(delay * 2, self.settings.reconnect_max_delay)
            if is_connection_error(error):
                logger.warning("projection %s: database connection lost (%s); retrying in %.1f s", name,
                               first_line(error), delay,
                               extra={"projection_name": name, "retry_in": delay})  # fmt: skip
            else:
                logger.exception("projection %s: worker error; retrying in %.1f s", name, delay,
                                 extra={"projection_name": name, "retry_in": delay})  # fmt: skip
            return False, delay
        self._delays.pop(name, None)
        if self.stop.is_set():
            return False, None
        if not result.caught_up and not result.failed:
            return True, None
        timeout = self.settings.poll_interval
        if not result.failed and held_back:
            timeout = min(timeout, self.settings.held_back_interval)
        return False, timeout

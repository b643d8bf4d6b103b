"""Say when projections are held back by the fence for long, naming the blocker, and when it clears.

Events held back behind a running transaction are never skipped, only
delayed (the stall caveat of :mod:`eventstore.store`); a stall that lasts is
almost always a forgotten transaction somewhere in the cluster. The runner's
workers report every check to one :class:`StallWatch`, which logs one WARNING
once the stall has lasted ``stall_warning_after`` seconds (naming the blocking
sessions) and one when it clears.
"""

from __future__ import annotations

import logging
import threading
import time

from eventstore.errors import first_line
from eventstore.store import EventStore
from eventstore.store.stalls import fence_blockers

__all__ = ["HeldBackCheck", "StallWatch"]

logger = logging.getLogger(__name__)


class StallWatch:
    """Shared by a runner's workers; thread-safe."""

    def __init__(self, store: EventStore, *, warn_after: float) -> None:
        self.store = store
        self.warn_after = warn_after
        self._lock = threading.Lock()
        self._since: float | None = None
        self._warned = False

    def observe(self, held_back: bool) -> None:
        """Record one check of ``store.held_back()``; logs when the stall passes the threshold or ends."""
        now = time.monotonic()
        with self._lock:
            if not held_back:
                since, warned = self._since, self._warned
                self._since, self._warned = None, False
                if warned and since is not None:
                    logger.warning(
                        "events are no longer held back (after %.0f s)",
                        now - since,
                        extra={"stall_seconds": now - since},
                    )
                return
            if self._since is None:
                self._since = now
            if self._warned or now - self._since < self.warn_after:
                return
            self._warned = True
            stalled = now - self._since
        try:
            blockers = fence_blockers(self.store.engine)
            who = "; ".join(blocker.describe() for blocker in blockers) or "a transaction this role cannot see"
        except Exception as error:  # naming the blocker is best effort
            who = f"a transaction that could not be named ({first_line(error)})"
        logger.warning(
            "events have been held back for %.0f s by %s; they are applied once it ends (keep write transactions "
            "short, or end that session)",
            stalled,
            who,
            extra={"stall_seconds": stalled, "blockers": who},
        )


class HeldBackCheck:
    """Whether events wait behind the fence: asked by the workers before each read, one query for them all.

    Asked before the read, never after (see :meth:`eventstore.runner.worker.Worker`):
    an event the read cannot see yet was committed before the check, which
    then says so. One answer serves every worker until the next wake-up (an
    event that becomes held back was committed, and so sent a wake-up, after
    it) or for ``interval`` seconds at most. Each answer also goes to ``watch``.
    """

    def __init__(self, store: EventStore, watch: StallWatch, *, interval: float) -> None:
        self.store = store
        self.watch = watch
        self.interval = interval
        self._lock = threading.Lock()
        self._wakes = 0
        self._answered_at = -1e9
        self._answered_wakes = -1
        self._answer = False

    def woken(self) -> None:
        """A wake-up arrived: the next question gets a fresh answer."""
        with self._lock:
            self._wakes += 1

    def __call__(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._answered_wakes == self._wakes and now - self._answered_at < self.interval:
                return self._answer
            wakes = self._wakes
        try:
            answer = self.store.held_back()
        except Exception:  # the turn's read reports a lost connection; re-check soon meanwhile
            return True
        with self._lock:
            self._answered_at, self._answered_wakes, self._answer = now, wakes, answer
        self.watch.observe(answer)
        return answer

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

__all__ = ["StallWatch"]

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

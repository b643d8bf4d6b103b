"""LISTEN for wake-ups on a dedicated autocommit psycopg connection, proven to work, else poll.

A notification is only a wake-up: the events table is the truth, and workers
read from their checkpoints. So the listener never needs to be reliable, only
prompt: it calls ``on_wake`` on every notification, and also after every
(re)connect, because notifications sent while it was away are lost (PostgreSQL
keeps none for sessions that were not listening; see
https://www.postgresql.org/docs/current/sql-listen.html).

The connection is never taken from a pool: LISTEN belongs to the session, and
a pooled connection would carry it to other users or lose it on reset. It is in
autocommit mode because notifications are delivered only between transactions.
When idle it checks liveness with ``SELECT 1``; when the connection or the
server dies it reconnects with bounded exponential backoff.

**Proving that LISTEN works.** Through a transaction-mode pooler (PgBouncer's
``pool_mode = transaction``) a LISTEN succeeds, but on whichever server
session ran it, which then goes back to the pool: notifications reach that
session, never this client (https://www.pgbouncer.org/features.html). So
after each LISTEN the listener also listens on a private probe channel and
has a second, short-lived connection send ``pg_notify(probe, token)``: from
another session, because a session's own notification comes back with the
reply to its ``NOTIFY`` even through a pooler, which would prove nothing. If
the probe does not arrive within ``probe_timeout`` seconds, LISTEN cannot
work through this URL: the listener logs one WARNING naming the cause and the
fix (a direct or session-mode URL as ``listen_url=`` / ``--listen-url`` /
``EVENTSTORE_LISTEN_URL``), closes the connection and calls
``on_wake("poll")`` every ``fallback_poll_interval`` seconds until stopped.
A probe that cannot be judged (the cluster's NOTIFY queue at least half full,
where wake-ups are skipped anyway; the second connection refused; its
``pg_notify`` failing) proves nothing either way: the listener keeps
listening, logs at DEBUG, and probes again at its next liveness check.
The probe's logic, its SQL and the warning's words are
:mod:`eventstore.store.listen_probe`'s, shared with ``AsyncEventStore.subscribe``
and ``eventstore tail``; this module only performs its I/O.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import psycopg

from eventstore.errors import first_line
from eventstore.runner.connections import KEEPALIVE_OPTIONS
from eventstore.store.listen_probe import (
    PROBE_QUEUE_LIMIT,
    WAIT_SLICE,
    listen_statement,
    new_probe_channel,
    probe,
    run_probe,
    warn_listen_does_not_deliver,
)

__all__ = ["Listener", "Mode"]

logger = logging.getLogger(__name__)

Mode = Literal["connecting", "listening", "polling"]

# The probe's queue limit as this listener uses it (read at each probe: tests lower it).
_PROBE_QUEUE_LIMIT = PROBE_QUEUE_LIMIT

_FIX = (
    "give the runner a direct or session-mode URL for listening: listen_url= (ProjectionRunner), "
    "--listen-url or EVENTSTORE_LISTEN_URL (eventstore projections run)"
)


class Listener:
    """LISTEN on ``channel`` and call ``on_wake(reason)`` on notifications and reconnects; poll if LISTEN cannot work.

    ``reason`` is ``"notification"``, ``"connected"`` (after each LISTEN:
    catch up), or ``"poll"`` (every ``fallback_poll_interval`` seconds once
    LISTEN proved not to work, see the module docstring). Run :meth:`run` in
    a thread; it returns once ``stop`` is set (within about 0.25 s, plus a
    connection attempt or statement in flight) and never raises driver errors.

    State, for callers and tests: :attr:`mode` is ``"connecting"``,
    ``"listening"`` or ``"polling"``; :attr:`listening` is set while a LISTEN
    is in place that delivered a probe (or whose probe could not be judged);
    :attr:`ready` is set while wake-ups are in place either way (listening or
    polling), and is what to wait on before relying on wake-ups.
    """

    def __init__(
        self,
        conninfo: str,
        channel: str,
        on_wake: Callable[[str], None],
        *,
        liveness_interval: float = 5.0,
        reconnect_initial_delay: float = 0.1,
        reconnect_max_delay: float = 5.0,
        application_name: str = "eventstore-listener",
        probe_timeout: float = 2.0,
        fallback_poll_interval: float = 1.0,
    ) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.on_wake = on_wake
        self.liveness_interval = liveness_interval
        self.reconnect_initial_delay = reconnect_initial_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.application_name = application_name
        self.probe_timeout = probe_timeout
        self.fallback_poll_interval = fallback_poll_interval
        self.probe_channel = new_probe_channel()
        """This listener's own channel for proving that notifications arrive (unique per listener)."""
        self.mode: Mode = "connecting"
        self.listening = threading.Event()
        self.ready = threading.Event()
        self.connections = 0
        """How many times a LISTEN connection was established (1 + reconnects)."""
        self.backend_pid: int | None = None
        self._warned = False

    def run(self, stop: threading.Event) -> None:
        """Listen (or poll) until ``stop`` is set, reconnecting with backoff; never raises driver errors."""
        delay = self.reconnect_initial_delay
        try:
            while not stop.is_set():
                try:
                    connection = psycopg.connect(
                        self.conninfo,
                        autocommit=True,
                        application_name=self.application_name,
                        prepare_threshold=None,  # SELECT 1 runs forever: never prepared, whatever is in between
                        **KEEPALIVE_OPTIONS,
                    )
                except psycopg.Error as error:
                    logger.warning(
                        "listener cannot connect (%s); retrying in %.1f s",
                        first_line(error),
                        delay,
                        extra={"channel": self.channel, "retry_in": delay},
                    )
                    stop.wait(delay)
                    delay = min(delay * 2, self.reconnect_max_delay)
                    continue
                works = True
                try:
                    with connection:
                        works = self._listen(connection, stop)
                        delay = self.reconnect_initial_delay
                except psycopg.Error as error:
                    self.mode = "connecting"
                    logger.warning(
                        "listener connection lost (%s); reconnecting",
                        first_line(error),
                        extra={"channel": self.channel, "backend_pid": self.backend_pid},
                    )
                    # Reconnect at once the first time; back off if it keeps failing.
                    stop.wait(delay)
                    delay = min(delay * 2, self.reconnect_max_delay)
                finally:
                    self.listening.clear()
                    self.ready.clear()
                    self.backend_pid = None
                if not works:
                    self._poll(stop)
        finally:
            self.listening.clear()
            self.ready.clear()

    def _listen(self, connection: psycopg.Connection[Any], stop: threading.Event) -> bool:
        """LISTEN, prove it, then deliver wake-ups until ``stop``; False when LISTEN proved not to work."""
        connection.execute(listen_statement(self.channel))
        connection.execute(listen_statement(self.probe_channel))
        self.backend_pid = connection.info.backend_pid
        self.connections += 1
        proven = self._probe(connection, stop)
        if proven is False:
            self._give_up_listening(connection)
            return False
        if stop.is_set():
            return True
        self.mode = "listening"
        self.listening.set()
        self.ready.set()
        logger.info(
            "listening on %s",
            self.channel,
            extra={"channel": self.channel, "backend_pid": self.backend_pid, "connections": self.connections},
        )
        # Events committed before the LISTEN sent no wake-up we could receive: catch up.
        self.on_wake("connected")
        last_activity = time.monotonic()
        while not stop.is_set():
            received = False
            for notification in connection.notifies(timeout=WAIT_SLICE, stop_after=1):
                received = received or notification.channel == self.channel  # a late probe is no wake-up
            now = time.monotonic()
            if received:
                last_activity = now
                self.on_wake("notification")
            elif now - last_activity >= self.liveness_interval:
                # Idle for a while: make sure the session (and so the LISTEN) still exists,
                # and judge a probe that could not be judged before.
                if proven is None:
                    proven = self._probe(connection, stop)
                    if proven is False:
                        self.listening.clear()
                        self._give_up_listening(connection)
                        return False
                else:
                    connection.execute("SELECT 1")
                last_activity = time.monotonic()
        return True

    def _probe(self, connection: psycopg.Connection[Any], stop: threading.Event) -> bool | None:
        """Whether a notification sent from another session reaches this one: True, False, or None (no verdict).

        The logic is :func:`eventstore.store.listen_probe.probe`, shared with the asyncio subscriptions and
        ``eventstore tail``.
        """
        steps = probe(
            self.probe_channel,
            timeout=self.probe_timeout,
            logger=logger,
            who="listener",
            queue_limit=_PROBE_QUEUE_LIMIT,
            extra={"channel": self.channel},
        )
        return run_probe(connection, self.conninfo, steps, application_name=self.application_name, stopping=stop.is_set)

    def _give_up_listening(self, connection: psycopg.Connection[Any]) -> None:
        """Warn (once per listener), drop the LISTENs this session may still hold somewhere, and switch to polling."""
        if not self._warned:
            self._warned = True
            warn_listen_does_not_deliver(
                logger,
                who="listener",
                conninfo=self.conninfo,
                probe_timeout=self.probe_timeout,
                poll_interval=self.fallback_poll_interval,
                fix=_FIX,
                extra={"channel": self.channel},
            )
        self.mode = "polling"
        try:  # Best effort: the server session that ran the LISTEN should not keep receiving wake-ups.
            connection.execute("UNLISTEN *")
        except psycopg.Error as error:
            logger.debug("listener: UNLISTEN failed (%s)", first_line(error), extra={"channel": self.channel})

    def _poll(self, stop: threading.Event) -> None:
        """Call ``on_wake("poll")`` now and every ``fallback_poll_interval`` seconds until ``stop``."""
        self.mode = "polling"
        self.ready.set()
        try:
            while not stop.is_set():
                self.on_wake("poll")
                stop.wait(self.fallback_poll_interval)
        finally:
            self.ready.clear()

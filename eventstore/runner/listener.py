"""LISTEN for wake-ups on a dedicated autocommit psycopg connection.

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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from eventstore.errors import first_line
from eventstore.runner.connections import KEEPALIVE_OPTIONS

__all__ = ["Listener"]

logger = logging.getLogger(__name__)


# How long one wait for notifications lasts: bounds how late a stop request is seen.
_WAIT_SLICE = 0.25


class Listener:
    """LISTEN on ``channel`` and call ``on_wake(reason)`` on notifications and reconnects.

    ``reason`` is ``"notification"`` or ``"connected"``. Run :meth:`run` in a
    thread; it returns once ``stop`` is set. :attr:`listening` is set while the
    LISTEN is in place (tests and benchmarks wait on it).
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
    ) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.on_wake = on_wake
        self.liveness_interval = liveness_interval
        self.reconnect_initial_delay = reconnect_initial_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.application_name = application_name
        self.listening = threading.Event()
        self.connections = 0
        """How many times a LISTEN connection was established (1 + reconnects)."""
        self.backend_pid: int | None = None

    def run(self, stop: threading.Event) -> None:
        """Listen until ``stop`` is set, reconnecting with backoff; never raises driver errors."""
        delay = self.reconnect_initial_delay
        while not stop.is_set():
            try:
                connection = psycopg.connect(
                    self.conninfo, autocommit=True, application_name=self.application_name, **KEEPALIVE_OPTIONS
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
            try:
                with connection:
                    self._listen(connection, stop)
                    delay = self.reconnect_initial_delay
            except psycopg.Error as error:
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
                self.backend_pid = None

    def _listen(self, connection: psycopg.Connection[Any], stop: threading.Event) -> None:
        connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        self.backend_pid = connection.info.backend_pid
        self.connections += 1
        self.listening.set()
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
            for _ in connection.notifies(timeout=_WAIT_SLICE, stop_after=1):
                received = True
            now = time.monotonic()
            if received:
                last_activity = now
                self.on_wake("notification")
            elif now - last_activity >= self.liveness_interval:
                # Idle for a while: make sure the session (and so the LISTEN) still exists.
                connection.execute("SELECT 1")
                last_activity = now

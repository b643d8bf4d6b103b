"""The runner's listener proves that LISTEN delivers, through a real PgBouncer (Debian's 1.18), or polls.

Through transaction pooling a LISTEN "succeeds" on whichever server session
ran it, and that session goes back to the pool: the client receives nothing
(:func:`test_a_plain_listen_through_transaction_mode_receives_nothing` shows
the fault). The :class:`~eventstore.runner.listener.Listener` sends itself a
probe from another session after each LISTEN; when it does not arrive it warns
once and polls instead.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from eventstore import EventStore, NewEvent
from eventstore.database import libpq_url, url_of
from eventstore.runner import listener as listener_module
from eventstore.runner.listener import Listener
from eventstore.store import NOTIFY_CHANNEL

LOGGER = "eventstore.runner.listener"


class Wakes:
    """An ``on_wake`` that records each reason with the time it came."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self._changed = threading.Condition()

    def __call__(self, reason: str) -> None:
        with self._changed:
            self.calls.append((time.monotonic(), reason))
            self._changed.notify_all()

    def times(self, reason: str) -> list[float]:
        with self._changed:
            return [at for at, said in self.calls if said == reason]

    def wait_for(self, reason: str, count: int = 1, timeout: float = 10.0) -> list[float]:
        """Wait until ``reason`` came ``count`` times; their times."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.times(reason)) >= count, timeout):
                raise AssertionError(f"on_wake({reason!r}) came {len(self.times(reason))} times, not {count}")
        return self.times(reason)


@contextlib.contextmanager
def running_listener(url: str, **options: Any) -> Iterator[tuple[Listener, Wakes]]:
    """A :class:`Listener` on ``url`` in a thread; stopped (and checked to stop within 2 s) at the end."""
    wakes = Wakes()
    listener = Listener(libpq_url(url_of(url)), NOTIFY_CHANNEL, wakes, liveness_interval=0.5, **options)
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), name="test-listener", daemon=True)
    thread.start()
    try:
        yield listener, wakes
    finally:
        stop.set()
        started = time.monotonic()
        thread.join(10)
        assert not thread.is_alive(), "the listener did not stop"
        assert time.monotonic() - started < 2.0, "the listener took more than 2 s to stop"


def listener_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER and record.levelno >= logging.WARNING]


def test_a_plain_listen_through_transaction_mode_receives_nothing(
    pgbouncer: Callable[..., Any], database_url: str, store: EventStore
) -> None:
    """The fault the probe detects: LISTEN succeeds through transaction pooling, and nothing ever arrives."""
    bouncer = pgbouncer("transaction")
    received: dict[str, int] = {}
    for route, url in (("direct", database_url), ("transaction", bouncer.url)):
        with psycopg.connect(libpq_url(url_of(url)), autocommit=True, prepare_threshold=None) as connection:
            connection.execute(f"LISTEN {NOTIFY_CHANNEL}")  # no error either way
            for number in range(3):
                store.append(f"probe-{route}-{number}", [NewEvent("Tick", {})])
            received[route] = sum(1 for _ in connection.notifies(timeout=1.5, stop_after=3))
    assert received == {"direct": 3, "transaction": 0}


def test_through_transaction_mode_it_warns_once_then_polls(
    pgbouncer: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    bouncer = pgbouncer("transaction")
    with running_listener(bouncer.url, probe_timeout=1.0, fallback_poll_interval=0.2) as (listener, wakes):
        assert listener.ready.wait(10)
        assert listener.mode == "polling"
        assert not listener.listening.is_set()
        polls = wakes.wait_for("poll", count=6)
        assert min(later - earlier for earlier, later in itertools.pairwise(polls)) >= 0.15
        assert wakes.times("connected") == []  # never claimed a working LISTEN
    [warning] = listener_warnings(caplog)
    message = warning.getMessage()
    assert f"127.0.0.1:{bouncer.port}/" in message
    for words in ("transaction", "listen_url=", "--listen-url", "EVENTSTORE_LISTEN_URL", "polling every 0.2 s"):
        assert words in message
    assert warning.__dict__["mode"] == "polling"


@pytest.mark.parametrize("route", ["direct", "session"])
def test_direct_and_through_session_mode_it_listens(
    route: str,
    pgbouncer: Callable[..., Any],
    database_url: str,
    store: EventStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    url = database_url if route == "direct" else pgbouncer("session", pool_size=5).url
    with running_listener(url, fallback_poll_interval=0.2) as (listener, wakes):
        assert listener.ready.wait(10) and listener.listening.is_set()
        assert listener.mode == "listening"
        wakes.wait_for("connected")
        store.append("order-1", [NewEvent("Placed", {})])
        wakes.wait_for("notification", timeout=5)
        assert wakes.times("poll") == []
    assert listener_warnings(caplog) == []
    assert any("probe arrived" in record.getMessage() for record in caplog.records)


def test_a_probe_that_cannot_be_judged_does_not_declare_listen_broken(
    pgbouncer: Callable[..., Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the NOTIFY queue (as if) half full the probe proves nothing: keep listening, say so at DEBUG."""
    monkeypatch.setattr(listener_module, "_PROBE_QUEUE_LIMIT", 0.0)  # any usage counts as "nearly full"
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    bouncer = pgbouncer("transaction")
    with running_listener(bouncer.url, probe_timeout=0.5) as (listener, wakes):
        assert listener.ready.wait(10)
        assert listener.mode == "listening"
        wakes.wait_for("connected")
    assert listener_warnings(caplog) == []
    assert any("NOTIFY queue" in record.getMessage() and record.levelno == logging.DEBUG for record in caplog.records)

"""``follow()`` (``eventstore tail``) through a real PgBouncer (Debian's 1.18): it proves LISTEN delivers, or polls.

Through transaction pooling a LISTEN "succeeds" and nothing ever arrives
(``test_listener_through_pgbouncer.py`` shows the fault). ``follow`` probes
with the runner listener's probe (:mod:`eventstore.store.listen_probe`)
before its LISTEN; when the probe does not arrive it warns once and re-reads
every ``recheck_interval`` seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from eventstore import EventStore, NewEvent, RecordedEvent
from eventstore.cli import app
from eventstore.store.follow import follow

LOGGER = "eventstore.store.follow"
TIMEOUT = 20.0
APPENDS = 6


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == LOGGER and record.levelno >= logging.WARNING]


def follow_in_a_thread(
    followed: EventStore, writer: EventStore, **options: Any
) -> tuple[list[RecordedEvent], list[RecordedEvent]]:
    """Follow ``followed`` from its head in a thread until it has every event ``writer`` appends once it is ready."""
    received: list[RecordedEvent] = []
    failures: list[BaseException] = []
    ready = threading.Event()
    count = sum(1 + number % 2 for number in range(APPENDS))

    def run() -> None:
        try:
            received.extend(follow(followed, limit=count, ready=lambda position: ready.set(), **options))
        except BaseException as error:  # reported by the test's thread
            failures.append(error)
            ready.set()

    head = writer.head_position()
    thread = threading.Thread(target=run, name="test-follow", daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT), "follow() never became ready"
    for number in range(APPENDS):
        events = [NewEvent("Happened", {"number": number, "part": part}) for part in range(1 + number % 2)]
        writer.append(f"order-{number % 3}", events)
    thread.join(TIMEOUT)
    assert not thread.is_alive(), f"follow() got {len(received)} of {count} events"
    assert not failures, failures
    return received, list(writer.read_all(after=head or None))


def positions(events: list[RecordedEvent]) -> list[int]:
    return [event.global_position for event in events]


def test_follow_through_transaction_mode_gets_every_event_and_warns_once(
    pgbouncer: Callable[..., Any], store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    bouncer = pgbouncer("transaction")
    pooled = EventStore(bouncer.url)
    try:
        received, in_table = follow_in_a_thread(pooled, store, recheck_interval=0.1, probe_timeout=0.5)
    finally:
        pooled.engine.dispose()
    assert positions(received) == positions(in_table)  # every event, once, in the global order
    [warning] = warnings_from(caplog)
    message = warning.getMessage()
    assert message.startswith("follow: LISTEN through ")
    for words in (f"127.0.0.1:{bouncer.port}/", "within 0.5 s", "polling every 0.1 s", "eventstore tail --url"):
        assert words in message
    assert warning.__dict__["mode"] == "polling"


def test_follow_on_a_direct_connection_listens_without_a_warning(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    # A re-read timer out of reach: only notifications can deliver within the test's timeout.
    received, in_table = follow_in_a_thread(store, store, recheck_interval=60.0)
    assert positions(received) == positions(in_table)
    assert warnings_from(caplog) == []
    assert any(record.getMessage() == "follow: probe arrived; LISTEN works" for record in caplog.records)


def test_eventstore_tail_through_transaction_mode_prints_the_warning_and_the_events(
    pgbouncer: Callable[..., Any], store: EventStore
) -> None:
    """The command's user sees the warning (and its fix) on stderr, and still every event."""
    bouncer = pgbouncer("transaction")
    store.append("order-1", [NewEvent("OrderPlaced", {"amount": 5})])
    store.append("order-1", [NewEvent("OrderPaid", {"amount": 5})])
    url = sa.make_url(bouncer.url).render_as_string(hide_password=False)
    package_logger = logging.getLogger("eventstore")
    handlers, level = list(package_logger.handlers), package_logger.level
    try:
        result = CliRunner().invoke(app, ["--url", url, "tail", "--after", "0", "--count", "2"])
    finally:  # the command configures the package's logging; later tests get it back as it was
        package_logger.handlers[:] = handlers
        package_logger.setLevel(level)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "order-1@1  OrderPlaced" in lines[0] and "order-1@2  OrderPaid" in lines[1]
    assert "does not deliver notifications" in result.stderr
    assert "eventstore tail --url" in result.stderr

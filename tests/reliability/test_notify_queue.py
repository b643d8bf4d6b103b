"""A full NOTIFY queue must never fail a writer's commit (a wake-up is only a hint).

PostgreSQL keeps notifications in one queue for the whole cluster until every
listening session has read them; a listener that stops reading fills it, and
then every notifying transaction fails at commit. The test runs its own small
server (``max_notify_queue_pages = 64``, PostgreSQL 17+) so that a stuck
listener fills the queue within a few hundred notifications, shows that a
plain NOTIFY then really fails at commit, and that appends through every path
(plain SQL through the trigger, ``append(connection=...)``, the store's own
append) still commit, their wake-ups skipped and counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from eventstore import EventStore, NewEvent, migrate
from eventstore.embedded import LocalPostgres
from eventstore.store import NOTIFY_CHANNEL, sql


@pytest.fixture
def small_queue_server(outside_tmp: Path) -> Iterator[LocalPostgres]:
    server = LocalPostgres(outside_tmp / "pg").ensure_running()
    try:
        with psycopg.connect(_libpq(server.url()), autocommit=True) as admin:
            if admin.info.server_version < 170000:
                pytest.skip("max_notify_queue_pages needs PostgreSQL 17 or later")
            admin.execute("ALTER SYSTEM SET max_notify_queue_pages = 64")
            admin.execute("CREATE DATABASE shop")
        server.restart()
        yield server
    finally:
        server.destroy()


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _usage(connection: psycopg.Connection[tuple[object, ...]]) -> float:
    row = connection.execute("SELECT pg_notification_queue_usage()").fetchone()
    assert row is not None
    return float(str(row[0]))


def _fill_queue(filler: psycopg.Connection[tuple[object, ...]]) -> None:
    """Notify (large payloads, one transaction each) until the queue refuses more."""
    for _ in range(5000):
        try:
            filler.execute("SELECT pg_notify('filler', repeat('x', 7900))")
        except psycopg.errors.ProgramLimitExceeded:
            return
    pytest.fail(f"the NOTIFY queue never filled (usage {_usage(filler)})")


def test_a_full_notify_queue_fails_no_append(small_queue_server: LocalPostgres) -> None:
    url = small_queue_server.url("shop")
    migrate(url)
    store = EventStore(url)
    stuck = psycopg.connect(_libpq(url), autocommit=True)
    filler = psycopg.connect(_libpq(url), autocommit=True)
    try:
        # A listener that stops reading: LISTEN, then sit in a transaction (notifications
        # are delivered only between transactions, so its queue position stays put).
        stuck.execute(f"LISTEN {NOTIFY_CHANNEL}")
        stuck.execute("BEGIN")
        stuck.execute("SELECT 1")
        _fill_queue(filler)
        assert _usage(filler) > 0.5

        # The fault is real: a transaction that notifies cannot commit now.
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="too many notifications"):
            filler.execute("SELECT pg_notify('filler', 'one more')")

        # ... but appends commit, on every path.
        engine = sa.create_engine(url)
        with engine.begin() as connection:  # plain SQL: the trigger's wake-up
            connection.execute(
                sa.text(
                    "INSERT INTO events (transaction_order, event_id, stream_id, stream_version, event_type, data, "
                    "metadata) VALUES (pg_current_xact_id(), gen_random_uuid(), 'order-sql', 1, 'OrderPlaced', "
                    "'{}', '{}')"
                )
            )
        with engine.begin() as connection:  # the caller's transaction
            store.append("order-connection", [NewEvent("OrderPlaced", {})], connection=connection)
        store.append("order-own", [NewEvent("OrderPlaced", {})])  # the store's own wake-up after the commit
        store.append("order-own", [NewEvent("OrderPaid", {})])
        assert [event.stream_id for event in store.read_all()] == [
            "order-sql",
            "order-connection",
            "order-own",
            "order-own",
        ]
        with engine.connect() as connection:
            skipped = connection.exec_driver_sql(sql.WAKE_UPS_SKIPPED).scalar_one()
        assert skipped >= 3  # the trigger twice, the store at least once (its wake-ups run before collection)
        engine.dispose()

        # Once the stuck listener goes, the queue drains and wake-ups flow again.
        stuck.close()
        listener = psycopg.connect(_libpq(url), autocommit=True)
        try:
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            filler.execute("SELECT 1")  # any statement lets the queue's tail advance
            assert _usage(filler) < 0.5
            store.append("order-later", [NewEvent("OrderPlaced", {})])
            assert sum(1 for _ in listener.notifies(timeout=5, stop_after=1)) == 1
        finally:
            listener.close()
    finally:
        stuck.close()
        filler.close()
        store.close()
        store.engine.dispose()

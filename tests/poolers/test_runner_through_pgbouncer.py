"""The projection runner through a real PgBouncer (Debian's 1.18), one runner per projection.

- Transaction mode, with an ini that does not set ``ignore_startup_parameters
  = options``: the runner connects (its keepalives need no ``options`` startup
  parameter, which PgBouncer refuses: :func:`test_pgbouncer_refuses_the_options_startup_parameter`)
  and its engine prepares no server-side statement
  (:func:`test_the_runner_engine_prepares_nothing_through_transaction_mode` forces the failure).
- Without ``listen_url=`` through transaction mode the listener warns once and
  polls, and events are still applied; with a direct ``listen_url=`` (or
  through session mode) a wake-up applies an append long before the poll
  interval (30 s here, so only a wake-up can explain it).

Competing runners through transaction mode belong to the ownership tests.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from eventstore import EventStore, NewEvent, ProjectionRunner, admin
from eventstore.cli import app
from eventstore.database import libpq_url, url_of
from eventstore.errors import ConfigurationError
from eventstore.runner.connections import KEEPALIVE_OPTIONS, session_engine
from projections import Ledger, ledger_positions
from tests.process_output import drain, lines_of, wait_for_line
from tests.runner.runner_helpers import FAST, append_many, running

LISTENER = "eventstore.runner.listener"
SLOW_POLL = {**FAST, "poll_interval": 30.0}
"""Workers re-check on their own every 30 s: within the waits below only wake-ups (or the listener's polls) act."""

SERVER_KEEPALIVES = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
"""What the runner used to send in the ``options`` startup parameter."""


EVENTSTORE = Path(sys.executable).parent / "eventstore"
CLI_PROJECTIONS = Path(__file__).parent.parent / "cli"
"""Where ``--projections cli_sample_projections`` imports from."""
POLLING = "Falling back to polling"
"""From the listener's one WARNING when LISTEN does not deliver."""


def warnings_from(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


def applied(store: EventStore, name: str) -> list[int]:
    with store.engine.connect() as connection:
        return ledger_positions(connection, name)


def test_pgbouncer_refuses_the_options_startup_parameter(pgbouncer: Callable[..., Any]) -> None:
    """The fault behind "the runner cannot connect": the old server-side keepalives, refused at login."""
    bouncer = pgbouncer("transaction")
    assert "ignore_startup_parameters" not in bouncer.ini.read_text()
    conninfo = libpq_url(url_of(bouncer.url))
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
        psycopg.connect(conninfo, **KEEPALIVE_OPTIONS, options=SERVER_KEEPALIVES).close()
    assert "options" not in KEEPALIVE_OPTIONS
    with psycopg.connect(conninfo, **KEEPALIVE_OPTIONS) as connection:  # what the runner sends now
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_a_runner_through_transaction_mode_connects_and_catches_up(
    pgbouncer: Callable[..., Any], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="eventstore")
    bouncer = pgbouncer("transaction")
    with EventStore(bouncer.url) as store:
        before = append_many(store, "before", 30)  # caught up at start
        runner = ProjectionRunner(store, [Ledger("pooled")], listen_url=database_url, **SLOW_POLL)
        with running(runner):
            runner.wait_until_processed(before, timeout=20)
            # Far more batches than psycopg's prepare threshold (5) on the runner's connections.
            for number in range(12):
                last = store.append(f"after-{number}", [NewEvent("Tick", {"n": number})]).global_position
                runner.wait_until_processed(last, timeout=10)
            assert runner.listener is not None and runner.listener.mode == "listening"
        assert applied(store, "pooled") == [event.global_position for event in store.read_all()]
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert "unsupported startup parameter" not in bouncer.log.read_text()


def test_without_listen_url_through_transaction_mode_it_warns_once_and_polls(
    pgbouncer: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LISTENER)
    bouncer = pgbouncer("transaction")
    with EventStore(bouncer.url) as store:
        runner = ProjectionRunner(store, [Ledger("polled")], **SLOW_POLL)
        with running(runner):
            assert runner.listener is not None and runner.listener.ready.wait(15)
            assert runner.listener.mode == "polling"
            assert not runner.listener.listening.is_set()
            for round_ in range(3):  # the listener's polls (every 1 s), not the workers' 30 s timer
                last = append_many(store, f"polled-{round_}", 5)
                runner.wait_until_processed(last, timeout=8)
        assert len(applied(store, "polled")) == 15
    [warning] = warnings_from(caplog, LISTENER)
    assert "transaction" in warning and "--listen-url" in warning and "EVENTSTORE_LISTEN_URL" in warning


@pytest.mark.parametrize("route", ["listen_url", "session"])
def test_a_wake_up_applies_an_append_long_before_the_poll_interval(
    route: str, pgbouncer: Callable[..., Any], database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``listen_url=`` a direct URL while the store goes through transaction mode; or all through session mode."""
    caplog.set_level(logging.INFO, logger=LISTENER)
    if route == "listen_url":
        store_url, listen_url = pgbouncer("transaction").url, database_url
    else:
        store_url, listen_url = pgbouncer("session", pool_size=20).url, None
    with EventStore(store_url) as store:
        runner = ProjectionRunner(store, [Ledger("woken")], listen_url=listen_url, **SLOW_POLL)
        with running(runner):
            assert runner.listener is not None and runner.listener.listening.wait(15)
            assert runner.listener.mode == "listening"
            for number in range(3):
                position = store.append(f"woken-{number}", [NewEvent("Tick", {})]).global_position
                runner.wait_until_processed(position, timeout=3)  # the poll interval is 30 s
    assert warnings_from(caplog, LISTENER) == []


def test_the_runner_engine_prepares_nothing_through_transaction_mode(pgbouncer: Callable[..., Any]) -> None:
    """session_engine() follows the store's choice; forced to prepare, the same work fails (the test can fail)."""
    bouncer = pgbouncer("transaction")
    with EventStore(bouncer.url) as store:
        store.append("order-1", [NewEvent("Placed", {})])
        for prepared_statements, should_fail in ((None, False), (True, True)):
            engine = session_engine(store.engine, pool_size=4, prepared_statements=prepared_statements)
            failures: list[BaseException] = []

            def work(engine: sa.Engine = engine, failures: list[BaseException] = failures) -> None:
                with engine.connect() as connection:
                    for number in range(30):  # one transaction each: each may get another server session
                        try:
                            connection.execute(
                                sa.text("SELECT count(*) FROM events WHERE global_position > :p"), {"p": number}
                            )
                            connection.commit()
                        except sa.exc.DBAPIError as error:
                            failures.append(error.orig or error)
                            connection.rollback()

            threads = [threading.Thread(target=work) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            engine.dispose()
            kinds = {type(failure) for failure in failures}
            if should_fail:
                assert kinds & {psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement}
            else:
                assert failures == []


def test_session_engine_pool_size(database_url: str) -> None:
    """None: no pool (a connection per checkout); N: exactly N connections, a further checkout waits for one."""
    with EventStore(database_url) as store:
        for wrong in (0, -1, 2.5, True):
            with pytest.raises(ConfigurationError, match="pool_size"):
                session_engine(store.engine, pool_size=wrong)  # type: ignore[arg-type]
        unpooled = session_engine(store.engine)
        pooled = session_engine(store.engine, application_name="eventstore-pool-test", pool_size=2)
        try:
            assert isinstance(unpooled.pool, sa.NullPool)
            assert isinstance(pooled.pool, sa.QueuePool)
            with pooled.connect() as first, pooled.connect():
                third = threading.Thread(target=lambda: pooled.connect().close(), daemon=True)
                third.start()
                third.join(0.5)
                assert third.is_alive(), "a third connection was opened"
                count = first.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'eventstore-pool-test'")
                ).scalar_one()
                assert count == 2
            third.join(10)
            assert not third.is_alive()
            assert pooled.pool.checkedin() == 2  # kept open for the next checkout
        finally:
            unpooled.dispose()
            pooled.dispose()


@pytest.mark.skipif(not EVENTSTORE.exists(), reason="the console script is not installed in this environment")
@pytest.mark.parametrize("given", ["option", "environment", "neither"])
def test_projections_run_listen_url_reaches_the_listener(
    given: str, pgbouncer: Callable[..., Any], database_url: str, store: EventStore
) -> None:
    """``projections run`` through transaction mode, with ``--listen-url``, ``EVENTSTORE_LISTEN_URL`` or neither."""
    bouncer = pgbouncer("transaction")
    command = [str(EVENTSTORE), "-v", "--url", bouncer.url, "--projections", "cli_sample_projections"]
    command += ["projections", "run", "cli_stream_counts", "--poll-interval", "30"]
    env = {key: value for key, value in os.environ.items() if key != "EVENTSTORE_LISTEN_URL"}
    if given == "option":
        command += ["--listen-url", database_url]
    elif given == "environment":
        env["EVENTSTORE_LISTEN_URL"] = database_url
    with subprocess.Popen(
        command, cwd=CLI_PROJECTIONS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stderr is not None
        lines = lines_of(process.stderr)
        seen: list[str] = []
        try:
            seen = wait_for_line(lines, POLLING if given == "neither" else "listening on", timeout=30)
            position = store.append("order-1", [NewEvent("OrderPlaced", {})]).global_position
            admin.wait_until_processed(store, "cli_stream_counts", position, timeout=10)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(20)
    assert process.returncode == 0
    stderr = "".join(seen + drain(lines))
    assert stderr.count(POLLING) == (1 if given == "neither" else 0)


def test_an_invalid_listen_url_is_one_line_without_the_password(database_url: str) -> None:
    result = CliRunner().invoke(
        app,
        ["--url", database_url, "projections", "run", "--listen-url", "postgresql://app:s3cret@db:port/shop"],
    )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: --listen-url: invalid database URL; expected")
    assert "s3cret" not in result.output

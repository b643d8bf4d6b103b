"""Connection passwords never appear in errors, reprs, logs, tracebacks or CLI output."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from eventstore import EventStore, NewEvent
from eventstore.cli import app
from eventstore.errors import ConfigurationError, DatabaseUnavailable, EventStoreError
from eventstore.testing import TestServer

SECRET = "SeCrEt-p4ss"
UNREACHABLE = f"postgresql://alice:{SECRET}@127.0.0.1:1/shop"


def _everything_about(error: BaseException) -> str:
    """The error's message, its causes and the full traceback text."""
    return "".join(traceback.format_exception(error))


def _with_password(database_url: str) -> str:
    # The local test server uses trust authentication: the password is ignored but present in the URL.
    return sa.make_url(database_url).set(password=SECRET).render_as_string(hide_password=False)


@pytest.mark.parametrize(
    "operation",
    [
        lambda store: store.append("order-1", [NewEvent("OrderPlaced", {})]),
        lambda store: list(store.read_all()),
        lambda store: store.read_stream("order-1"),
        lambda store: store.head_position(),
    ],
    ids=["append", "read_all", "read_stream", "head_position"],
)
def test_unreachable_database_errors_hide_the_password(
    operation: Callable[[EventStore], object], caplog: pytest.LogCaptureFixture
) -> None:
    store = EventStore(UNREACHABLE)
    assert SECRET not in repr(store) and "***" in repr(store)
    with caplog.at_level(logging.DEBUG), pytest.raises(DatabaseUnavailable) as caught:
        operation(store)
    text = _everything_about(caught.value)
    assert "127.0.0.1:1/shop" in str(caught.value)
    assert SECRET not in text
    assert SECRET not in caplog.text
    store.engine.dispose()


@pytest.mark.parametrize(
    "url",
    [f"mysql://alice:{SECRET}@db/shop", f"postgresql://alice:{SECRET}@[::1/shop", f"postgres://alice:{SECRET}@h:x/db"],
)  # fmt: skip
def test_bad_urls_never_show_the_password(url: str) -> None:
    with pytest.raises(Exception) as caught:
        EventStore(url).head_position()
    assert SECRET not in _everything_about(caught.value)
    result = CliRunner().invoke(app, ["--url", url, "log"])
    assert result.exit_code == 1 and SECRET not in result.output


@pytest.mark.parametrize("url", [f"postgresql://alice:{SECRET}@[::1/shop", f"postgres://alice:{SECRET}@h:x/db"])
def test_malformed_url_is_a_configuration_error_and_one_cli_line(url: str) -> None:
    # Found here: SQLAlchemy raised ValueError for these, which escaped as a traceback (fixed in database.py).
    result = CliRunner().invoke(app, ["--url", url, "log"])
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    with pytest.raises(ConfigurationError):
        EventStore(url)


def test_reachable_but_unmigrated_database_hides_the_password(test_server: TestServer) -> None:
    name = test_server.create_database(migrated=False)
    store = EventStore(_with_password(test_server.url(name)))
    try:
        with pytest.raises(EventStoreError) as caught:
            store.head_position()
        assert "migrate" in str(caught.value)
        assert SECRET not in _everything_about(caught.value)
    finally:
        store.engine.dispose()
        test_server.drop_database(name)


@pytest.mark.parametrize("verbose", [[], ["-v"]], ids=["plain", "verbose"])
def test_cli_error_output_hides_the_password(verbose: list[str]) -> None:
    result = CliRunner().invoke(app, ["--url", UNREACHABLE, *verbose, "log"])
    assert result.exit_code == 1, result.output
    assert "127.0.0.1" in result.output
    assert SECRET not in result.output
    assert SECRET not in repr(result.exception or "")


def test_cli_output_and_json_of_a_reachable_database_hide_the_password(database_url: str) -> None:
    url = _with_password(database_url)
    runner = CliRunner()
    outputs = []
    for arguments in (
        ["append", "order-1", "OrderPlaced", "-d", '{"total": 1}', "--json"],
        ["log", "--json"],
        ["read", "order-1", "--json"],
        ["migrate"],
        ["projections", "status", "--json"],
        ["projections", "list", "--json"],
        ["-v", "log"],
    ):
        result = runner.invoke(app, ["--url", url, *arguments])
        outputs.append(result.output)
        assert SECRET not in result.output, arguments
    assert '"stream_id": "order-1"' in outputs[1] or '"stream_id":"order-1"' in outputs[1]


def test_configuration_error_names_the_url_masked() -> None:
    with pytest.raises(ConfigurationError) as caught:
        EventStore(f"mysql://alice:{SECRET}@db/shop")
    assert "***" in str(caught.value) and SECRET not in str(caught.value)


def test_runner_logs_never_show_the_password(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    import threading

    import projections
    from eventstore import ProjectionRunner

    store = EventStore(_with_password(database_url))
    store.append("order-1", [NewEvent("Anything", {})])
    runner = ProjectionRunner(store, [projections.Ledger()], poll_interval=0.2)
    with caplog.at_level(logging.DEBUG):
        thread = threading.Thread(target=runner.run)
        thread.start()
        try:
            runner.wait_until_processed(store.head_position(), timeout=30)
        finally:
            runner.stop()
            thread.join(30)
    store.engine.dispose()
    assert "lease acquired" in caplog.text  # the runner did log
    assert SECRET not in caplog.text
    assert SECRET not in repr(runner)

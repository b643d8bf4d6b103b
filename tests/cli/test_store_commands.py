"""migrate, append, read and log through typer's CliRunner, against a real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from typer.testing import Result

from eventstore import EventStore, NewEvent
from eventstore.testing import TestServer

Invoke = Callable[..., Result]


def test_migrate_is_idempotent_and_sql_prints_the_schema(cli: Invoke) -> None:
    result = cli("migrate")
    assert result.exit_code == 0, result.output
    assert "schema is at revision 0004_projection_leases" in result.stdout

    sql = cli("migrate", "--sql")
    assert sql.exit_code == 0, sql.output
    assert "CREATE TABLE events" in sql.stdout
    assert "eventstore_events_v1" in sql.stdout


def test_append_then_read_and_log(cli: Invoke, store: EventStore) -> None:
    first = cli("append", "order-1", "OrderPlaced", "--data", '{"amount": 10}', "--expected-version", "no-stream")
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("appended OrderPlaced to order-1@1 at position ")

    second = cli("append", "order-1", "OrderPaid", "-d", '{"amount": 10}', "-m", '{"user": "ann"}', "-e", "1", "--json")
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["stream_version"] == 2
    assert cli("append", "customer-7", "CustomerRegistered").exit_code == 0

    stored = store.read_stream("order-1")
    assert [(e.type, e.data, e.metadata) for e in stored] == [
        ("OrderPlaced", {"amount": 10}, {}),
        ("OrderPaid", {"amount": 10}, {"user": "ann"}),
    ]

    read = cli("read", "order-1")
    assert read.exit_code == 0, read.output
    lines = read.stdout.splitlines()
    assert len(lines) == 2
    assert 'order-1@1  OrderPlaced  {"amount":10}' in lines[0]
    assert "order-1@2  OrderPaid" in lines[1]

    as_json = json.loads(cli("read", "order-1", "--json").stdout)
    assert [event["stream_version"] for event in as_json] == [1, 2]
    assert as_json[1]["metadata"] == {"user": "ann"}

    everything = cli("log", "--json")
    assert [event["type"] for event in json.loads(everything.stdout)] == [
        "OrderPlaced",
        "OrderPaid",
        "CustomerRegistered",
    ]
    assert "3 event(s)" in everything.stderr

    after_first = cli("log", "--after", str(stored[0].global_position), "--limit", "1")
    assert after_first.stdout.count("\n") == 1 and "OrderPaid" in after_first.stdout

    by_category = cli("log", "--category", "customer")
    assert "CustomerRegistered" in by_category.stdout and "order-1" not in by_category.stdout
    by_type = json.loads(cli("log", "--type", "OrderPaid", "--json").stdout)
    assert [event["type"] for event in by_type] == ["OrderPaid"]


def test_data_from_a_file_and_from_stdin(cli: Invoke, store: EventStore, tmp_path: Path) -> None:
    payload = tmp_path / "event.json"
    payload.write_text('{\n  "sku": "A-1",\n  "qty": 2\n}\n')
    assert cli("append", "order-2", "ItemAdded", "--data", f"@{payload}").exit_code == 0
    assert cli("append", "order-2", "ItemAdded", "--data", "@-", input='{"sku": "B-2"}').exit_code == 0
    assert [e.data for e in store.read_stream("order-2")] == [{"sku": "A-1", "qty": 2}, {"sku": "B-2"}]


def test_options_come_from_environment_variables(bare_cli: Invoke, database_url: str, store: EventStore) -> None:
    env = {"EVENTSTORE_URL": database_url, "EVENTSTORE_DATA": '{"from": "env"}', "EVENTSTORE_EXPECTED_VERSION": "0"}
    result = bare_cli("append", "order-9", "OrderPlaced", env=env)
    assert result.exit_code == 0, result.output
    assert store.read_stream("order-9")[0].data == {"from": "env"}


def test_invalid_json_names_option_line_and_column_and_writes_nothing(
    cli: Invoke, store: EventStore, tmp_path: Path
) -> None:
    result = cli("append", "order-1", "OrderPlaced", "--data", '{"amount": }')
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: --data: invalid JSON in the value at line 1, column 12: Expecting value; "
        """pass a JSON object such as '{"amount": 10}' (quote it for your shell)"""
    ]
    bad_file = tmp_path / "bad.json"
    bad_file.write_text('{\n  "a": 1,\n  "b": \n}')
    from_file = cli("append", "order-1", "OrderPlaced", "--metadata", f"@{bad_file}")
    assert from_file.exit_code == 1
    assert f"--metadata: invalid JSON in {bad_file} at line 4, column 1" in from_file.stderr
    not_object = cli("append", "order-1", "OrderPlaced", "--data", "[1, 2]")
    assert not_object.exit_code == 1 and "expected a JSON object, got an array" in not_object.stderr
    assert store.head_position() == 0


def test_wrong_expected_version_says_expected_and_actual(cli: Invoke, store: EventStore) -> None:
    store.append("order-1", [NewEvent("OrderPlaced", {}), NewEvent("OrderPaid", {})])
    result = cli("append", "order-1", "OrderShipped", "--expected-version", "1")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "Error: stream 'order-1': expected version 1, but it is at version 2; nothing was written. "
        "Read it with `eventstore read order-1` and retry with --expected-version 2 (or any)"
    )
    assert cli("append", "order-2", "OrderPaid", "-e", "exists").exit_code == 1
    assert store.stream_version("order-1") == 2 and store.stream_version("order-2") == 0


def test_bad_expected_version_is_a_usage_error(cli: Invoke) -> None:
    result = cli("append", "order-1", "OrderPlaced", "--expected-version", "soon")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --expected-version: 'soon' is not a stream version; use an integer from 0 to 2147483647 "
        "(the version of the stream's last event, 0 for a new stream), any, no-stream or exists"
    )


def test_unknown_stream(cli: Invoke) -> None:
    result = cli("read", "order-404")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: stream 'order-404' has no events; list streams with `eventstore log` (check the spelling)"
    )


def test_unreachable_database_names_host_and_port_but_not_the_password(bare_cli: Invoke) -> None:
    url = "postgresql://app:s3cret-pw@127.0.0.1:1/shop?connect_timeout=2"
    result = bare_cli("--url", url, "log")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: cannot reach PostgreSQL at 127.0.0.1:1/shop")
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output

    verbose = bare_cli("--url", url, "-v", "log")
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.stderr and "s3cret" not in verbose.stderr


def test_schema_missing_says_run_migrate(bare_cli: Invoke, test_server: TestServer) -> None:
    name = test_server.create_database(migrated=False)
    try:
        result = bare_cli("--url", test_server.url(name), "log")
        assert result.exit_code == 1
        assert "run `eventstore migrate`" in result.stderr
        assert bare_cli("--url", test_server.url(name), "migrate").exit_code == 0
        assert bare_cli("--url", test_server.url(name), "log").exit_code == 0
    finally:
        test_server.drop_database(name)


def test_malformed_url(bare_cli: Invoke) -> None:
    result = bare_cli("--url", "mysql://root:pw@db/x", "log")
    assert result.exit_code == 1
    assert "database URL must start with postgresql://" in result.stderr
    assert "pw@" not in result.stderr

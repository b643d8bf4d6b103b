"""projections list/status/run/rebuild/reset/failures/retry/skip and streams replay, via CliRunner.

The projections come from tests/cli/cli_sample_projections.py (``--projections cli_sample_projections``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner, Result

from eventstore import EventStore, NewEvent, admin
from eventstore.cli import app

Invoke = Callable[..., Result]
MODULE = "cli_sample_projections"


@pytest.fixture
def pcli(database_url: str) -> Invoke:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, ["--url", database_url, "--projections", MODULE, *args])

    return invoke


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT stream_id, events FROM cli_stream_counts")).all()
    return {row.stream_id: row.events for row in rows}


def _orders(store: EventStore) -> None:
    store.append("order-1", [NewEvent("OrderPlaced", {}), NewEvent("OrderPaid", {})])
    store.append("customer-1", [NewEvent("CustomerRegistered", {})])
    store.append("order-2", [NewEvent("OrderPlaced", {})])


def test_list_shows_the_module_projections(pcli: Invoke) -> None:
    result = pcli("projections", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = {item["name"]: item for item in json.loads(result.stdout)}
    assert set(listed) == {"cli_stream_counts", "cli_totals"}
    assert listed["cli_stream_counts"]["categories"] == "order"
    text = pcli("projections", "list").stdout.splitlines()
    assert text[0].split() == ["NAME", "CATEGORIES", "EVENT_TYPES", "ON_ERROR", "CLASS"]
    assert len(text) == 3


def test_run_until_caught_up_then_status_shows_no_lag(pcli: Invoke, store: EventStore, engine: Engine) -> None:
    _orders(store)
    result = pcli("projections", "run", "cli_stream_counts", "--until-caught-up")
    assert result.exit_code == 0, result.output
    assert _counts(engine) == {"order-1": 2, "order-2": 1}

    status = pcli("projections", "status", "--json")
    assert status.exit_code == 0, status.output
    by_name = {item["name"]: item for item in json.loads(status.stdout)}
    head = store.head_position()
    assert by_name["cli_stream_counts"]["position"] == head
    assert by_name["cli_stream_counts"]["lag_events"] == 0
    assert by_name["cli_stream_counts"]["owner"] is None  # released when the catch-up ended, and since when:
    assert datetime.fromisoformat(by_name["cli_stream_counts"]["unowned_since"]) <= datetime.now(UTC)
    assert by_name["cli_totals"]["position"] in (0, None)
    assert "cli_stream_counts" in pcli("projections", "status").stdout


def test_rebuild_reset_and_replay_one_stream(pcli: Invoke, store: EventStore, engine: Engine) -> None:
    _orders(store)
    assert pcli("projections", "run", "--until-caught-up").exit_code == 0
    with engine.begin() as connection:  # damage the read model
        connection.execute(sa.text("UPDATE cli_stream_counts SET events = 99"))

    replay = pcli("streams", "replay", "order-1", "--projection", "cli_stream_counts")
    assert replay.exit_code == 0, replay.output
    assert "replayed 2 event(s) of order-1 through cli_stream_counts" in replay.stdout
    assert _counts(engine) == {"order-1": 2, "order-2": 99}

    rebuild = pcli("projections", "rebuild", "cli_stream_counts")
    assert rebuild.exit_code == 0, rebuild.output
    assert rebuild.stdout.startswith("rebuilt cli_stream_counts:")
    assert "rebuilding cli_stream_counts:" in rebuild.stderr  # log lines when not on a terminal
    assert _counts(engine) == {"order-1": 2, "order-2": 1}

    reset = pcli("projections", "reset", "cli_stream_counts")
    assert reset.exit_code == 0, reset.output
    assert _counts(engine) == {}

    events = pcli("streams", "replay", "order-1", "--json")
    assert [event["type"] for event in json.loads(events.stdout)] == ["OrderPlaced", "OrderPaid"]


def test_replay_without_forget_stream_and_of_an_unknown_stream(pcli: Invoke, store: EventStore) -> None:
    _orders(store)
    never_run = pcli("streams", "replay", "order-1", "--projection", "cli_totals")
    assert never_run.exit_code == 1
    assert "projection 'cli_totals' has never run" in never_run.stderr
    assert "run `eventstore projections run cli_totals --until-caught-up` first" in never_run.stderr
    assert pcli("projections", "run", "--until-caught-up").exit_code == 0
    no_hook = pcli("streams", "replay", "order-1", "--projection", "cli_totals")
    assert no_hook.exit_code == 1
    assert "cli_totals" in no_hook.stderr and "forget_stream" in no_hook.stderr
    unknown = pcli("streams", "replay", "order-404")
    assert unknown.exit_code == 1
    assert "stream 'order-404' has no events" in unknown.stderr


def test_failures_skip_and_retry(pcli: Invoke, store: EventStore, engine: Engine) -> None:
    store.append("order-1", [NewEvent("OrderPlaced", {})])
    poison = store.append("order-1", [NewEvent("Poison", {})])
    store.append("order-2", [NewEvent("OrderPlaced", {})])
    pcli("projections", "run", "cli_stream_counts", "--until-caught-up")

    failures = pcli("projections", "failures", "--json")
    assert failures.exit_code == 0, failures.output
    listed = json.loads(failures.stdout)
    assert [(f["projection_name"], f["global_position"], f["event_type"]) for f in listed] == [
        ("cli_stream_counts", poison.global_position, "Poison")
    ]
    assert "cannot digest event" in listed[0]["error"]
    assert _counts(engine) == {"order-1": 1}

    retried = pcli("projections", "retry", "cli_stream_counts")
    assert retried.exit_code == 0, retried.output
    assert retried.stdout.strip() == f"retry of cli_stream_counts requested at position {poison.global_position}"
    pcli("projections", "run", "cli_stream_counts", "--until-caught-up")  # still poisoned: fails again
    assert _counts(engine) == {"order-1": 1}
    skipped = pcli("projections", "skip", "cli_stream_counts")
    assert skipped.exit_code == 0, skipped.output
    assert skipped.stdout.strip() == f"skipped the event at position {poison.global_position} for cli_stream_counts"
    assert pcli("projections", "run", "cli_stream_counts", "--until-caught-up").exit_code == 0
    assert _counts(engine) == {"order-1": 1, "order-2": 1}
    not_failed = pcli("projections", "skip", "cli_stream_counts")
    assert not_failed.exit_code == 1
    assert "is not failed" in not_failed.stderr


def test_unknown_projection_lists_the_known_ones(pcli: Invoke) -> None:
    for command in (["rebuild", "nope"], ["reset", "nope"], ["run", "nope"], ["skip", "nope"]):
        result = pcli("projections", *command)
        assert result.exit_code == 1, command
        assert result.stderr.strip() == (
            "Error: unknown projection 'nope'; known projections: cli_stream_counts, cli_totals "
            "(see `eventstore projections list`)"
        )


def test_projections_module_that_fails_to_import(database_url: str) -> None:
    result = CliRunner().invoke(
        app, ["--url", database_url, "--projections", "cli_broken_projections", "projections", "list"]
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "Error: cannot import projections module 'cli_broken_projections': ModuleNotFoundError: "
        "No module named 'eventstore_no_such_module'; fix the module or pass --projections MODULE "
        "(env EVENTSTORE_PROJECTIONS)"
    )
    missing = CliRunner().invoke(
        app, ["--url", database_url, "projections", "list"], env={"EVENTSTORE_PROJECTIONS": "no_such_projections"}
    )
    assert missing.exit_code == 1
    assert "cannot import projections module 'no_such_projections'" in missing.stderr


@pytest.fixture
def running_runner(store: EventStore) -> Iterator[threading.Thread]:
    """A runner for cli_stream_counts in a background thread, holding its lock."""
    # pytest puts tests/cli on sys.path and the CLI loads this module by that bare name;
    # mypy (explicit_package_bases) knows the same file as tests.cli.cli_sample_projections.
    if TYPE_CHECKING:
        from tests.cli import cli_sample_projections
    else:
        import cli_sample_projections

    from eventstore import admin
    from eventstore.runner import ProjectionRunner

    runner = ProjectionRunner(store, [cli_sample_projections.StreamCounts()], poll_interval=0.2)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    store.append("order-1", [NewEvent("OrderPlaced", {})])
    admin.wait_until_processed(store, "cli_stream_counts", store.head_position(), timeout=20)
    yield thread
    runner.stop()
    thread.join(timeout=20)


def test_rebuild_refuses_while_a_runner_holds_the_lock(pcli: Invoke, running_runner: threading.Thread) -> None:
    result = pcli("projections", "rebuild", "cli_stream_counts")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: projection 'cli_stream_counts' is locked by another runner (held by ")
    assert lines[-1].endswith("stop that runner or wait for it, then try again")
    assert "Traceback" not in result.output


def test_run_refuses_a_connection_budget_too_small_to_work(pcli: Invoke) -> None:
    result = pcli("projections", "run", "--connections", "2")
    assert result.exit_code == 2
    assert "--connections" in result.stderr and "greater than or equal to 3" in result.stderr
    assert "Traceback" not in result.output


def test_run_with_a_budget_of_three_connections_applies_new_events(
    database_url: str, store: EventStore, engine: Engine
) -> None:
    """EVENTSTORE_RUNNER_CONNECTIONS reaches the runner: with 3 it holds at most 3 connections and still applies."""
    command = [str(Path(sys.executable).with_name("eventstore")), "--url", database_url, "--projections", MODULE]
    environment = {**os.environ, "EVENTSTORE_RUNNER_CONNECTIONS": "3"}
    cwd = Path(__file__).parent
    with subprocess.Popen(
        [*command, "projections", "run", "cli_stream_counts"], cwd=cwd, env=environment, stderr=subprocess.PIPE
    ) as process:
        try:
            _orders(store)
            admin.wait_until_processed(store, "cli_stream_counts", store.head_position(), timeout=30)
            with engine.connect() as connection:
                held = connection.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name IN ('eventstore-runner', 'eventstore-listener')"
                    )
                ).scalar_one()
            assert 1 <= held <= 3
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(20)
    assert process.returncode == 0
    assert _counts(engine) == {"order-1": 2, "order-2": 1}  # its category filter leaves customer-1 out

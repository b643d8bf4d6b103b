"""``eventstore demo`` in-process (CliRunner) against the test database."""

from __future__ import annotations

from typer.testing import CliRunner

from eventstore import EventStore
from eventstore.cli import app


def test_demo_writes_runs_the_projections_and_verifies_them(database_url: str, store: EventStore) -> None:
    result = CliRunner().invoke(app, ["--url", database_url, "demo", "--duration", "1", "--writers", "2"])
    assert result.exit_code == 0, result.output
    appended = store.head_position()
    assert appended > 0
    for name in ("order_summaries", "dashboard_daily", "customer_orders", "high_value_orders"):
        assert f"verified {name}: read model equals a recomputation from the events" in result.stdout
    assert "OK: every read model agrees with the events" in result.stdout
    assert "writing:" in result.stderr and "caught up:" in result.stderr  # plain log lines, not a TTY


def test_demo_fails_when_a_read_model_disagrees(database_url: str, store: EventStore) -> None:
    arguments = ["--url", database_url, "--projections", "cli_buggy_projections", "demo", "--events", "150"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 1, result.output
    assert "PROBLEM order_summaries: read model differs from the events" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: the demo found 1 problem(s), listed above (PROBLEM lines)"
    )
    shipped = list(store.read_all(event_types=["OrderShipped"]))
    assert shipped, "the workload shipped no order; the check above would prove nothing"

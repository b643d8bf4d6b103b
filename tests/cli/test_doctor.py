"""``eventstore doctor``: a healthy database exits 0; each fault, forced for real, gives its exit code and message.

"Healthy" here: a fresh migrated database with idle_in_transaction_session_timeout
set for it (ALTER DATABASE ... SET; the test server leaves it at 0, which is a
warning), no eventstore roles (info) and a direct connection (no pooler). The
pooler probe is tested against a direct connection only; a real PgBouncer in
transaction mode is a separate test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import Result

from eventstore import EventStore, NewEvent, ProjectionRunner
from eventstore.doctor import SCHEMA_REVISION, Severity, detect_transaction_pooler, run_checks
from eventstore.migrations import head_revision
from eventstore.roles import create_roles, drop_roles
from eventstore.testing.server import TestServer
from projections import Ledger
from tests.cli.conftest import Invoke
from tests.runner.runner_helpers import FAST


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _healthy(url: str) -> None:
    """Set the one setting the test server leaves at a warning, for this database only."""
    with psycopg.connect(_libpq(url), autocommit=True) as connection:
        name = connection.execute("SELECT current_database()").fetchone()
        assert name is not None
        connection.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET idle_in_transaction_session_timeout = '1min'").format(
                psycopg.sql.Identifier(name[0])
            )
        )


@pytest.fixture
def doctor(cli: Invoke, database_url: str) -> Invoke:
    """``doctor("--json")`` runs ``eventstore doctor`` on this test's database, made healthy first."""
    _healthy(database_url)

    def invoke(*args: str) -> Result:
        return cli("doctor", *args)

    return invoke


def _lines(result: Result, word: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(word)]


def test_expected_objects_follow_the_head_revision() -> None:
    # A new migration must update doctor's list of triggers, indexes and functions.
    assert head_revision() == SCHEMA_REVISION


def test_a_healthy_database_exits_0(doctor: Invoke) -> None:
    result = doctor()
    assert result.exit_code == 0, result.output
    assert not _lines(result, "WARNING") and not _lines(result, "PROBLEM")
    checks = {line.split()[1].rstrip(":") for line in result.stdout.splitlines()[:-1]}
    assert {"connection", "server_version", "schema_revision", "schema_objects", "pooler", "fence"} <= checks
    assert {"notify_queue", "projections", "ownership", "roles", "max_connections", "idle_timeout"} <= checks
    assert result.stdout.splitlines()[-1].startswith("doctor: healthy (0 problem(s), 0 warning(s)")

    report = json.loads(doctor("--json").stdout)
    assert report["exit_code"] == 0 and report["counts"]["problem"] == 0
    [roles] = [f for f in report["findings"] if f["check"] == "roles"]
    assert roles["severity"] == "info" and "do not exist" in roles["message"]


def test_idle_in_transaction_session_timeout_unset_is_a_warning(cli: Invoke) -> None:
    result = cli("doctor")
    assert result.exit_code == 1, result.output
    [line] = _lines(result, "WARNING")
    assert "idle_timeout: idle_in_transaction_session_timeout is 0" in line and "ALTER DATABASE" in line


def test_an_unmigrated_database_is_a_problem(test_server: TestServer, bare_cli: Invoke) -> None:
    name = test_server.create_database(migrated=False)
    try:
        result = bare_cli("--url", test_server.url(name), "doctor")
        assert result.exit_code == 2, result.output
        [line] = _lines(result, "PROBLEM")
        assert "schema_revision: the database has no eventstore schema" in line and "eventstore migrate" in line
        assert "schema_objects: not checked" in result.stdout
    finally:
        test_server.drop_database(name)


def test_a_disabled_trigger_is_a_problem(doctor: Invoke, engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE events DISABLE TRIGGER events_notify_v3"))
    result = doctor()
    assert result.exit_code == 2, result.output
    [line] = _lines(result, "PROBLEM")
    assert "trigger events_notify_v3 on events is disabled" in line
    assert "ALTER TABLE events ENABLE TRIGGER events_notify_v3" in line


def test_a_dropped_trigger_and_index_are_problems(doctor: Invoke, engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TRIGGER events_forbid_truncate_v1 ON events"))
        connection.execute(sa.text("DROP INDEX ix_events_category_order"))
    result = doctor()
    assert result.exit_code == 2, result.output
    assert "trigger events_forbid_truncate_v1 on events is missing" in "".join(_lines(result, "PROBLEM"))
    assert "index ix_events_category_order on events is missing" in "".join(_lines(result, "WARNING"))


def test_an_idle_transaction_holding_back_events_is_a_warning(
    doctor: Invoke, database_url: str, store: EventStore
) -> None:
    with psycopg.connect(_libpq(database_url), application_name="forgotten-batch") as blocker:
        pid = blocker.info.backend_pid
        blocker.execute("SELECT pg_current_xact_id()")  # takes an xid, then sits idle in its transaction
        store.append("order-1", [NewEvent("OrderPlaced", {"total": 1})])
        result = doctor("--transaction-age", "0")
        report = json.loads(doctor("--transaction-age", "0", "--json").stdout)
    assert result.exit_code == 1, result.output
    warnings = "\n".join(_lines(result, "WARNING"))
    assert f"fence: 1 event(s) held back by pid {pid} (app `forgotten-batch`" in warnings
    assert f"idle_in_transaction: pid {pid} (app `forgotten-batch`" in warnings
    assert f"pg_terminate_backend({pid})" in warnings
    [fence] = [f for f in report["findings"] if f["check"] == "fence"]
    assert fence["details"]["held_back"] == 1 and fence["details"]["blocked_by"][0]["pid"] == pid


def test_a_failed_projection_is_a_problem(doctor: Invoke, store: EventStore) -> None:
    store.append("order-1", [NewEvent("Good", {})])
    poison = store.append("order-2", [NewEvent("Bad", {})]).global_position
    failing = Ledger("failing", poison_types={"Bad"})
    ProjectionRunner(store, [failing], **{**FAST, "retry_attempts": 1}).run_until_caught_up(timeout=30)
    result = doctor()
    assert result.exit_code == 2, result.output
    [line] = _lines(result, "PROBLEM")
    assert f"projection 'failing' failed at position {poison}" in line
    assert "ValueError: ledger 'failing': poison event Bad" in line
    assert "eventstore projections retry failing" in line


def test_a_projection_without_progress_is_stalled(doctor: Invoke, engine: Engine, store: EventStore) -> None:
    store.append("order-1", [NewEvent("OrderPlaced", {})])
    with engine.begin() as connection:
        connection.execute(
            sa.text("INSERT INTO projection_checkpoints (projection_name, state) VALUES ('slow', 'stopped')")
        )
    assert doctor().exit_code == 0  # within --stall-after (300 s)
    result = doctor("--stall-after", "0")
    assert result.exit_code == 1, result.output
    [line] = _lines(result, "WARNING")
    assert "projection 'slow' is stalled: 1 readable event(s) after position 0" in line and "no runner holds it" in line


def test_an_owner_that_died_holding_a_projection_is_a_warning(doctor: Invoke, engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO projection_checkpoints (projection_name, state, owner) "
                "VALUES ('orphaned', 'running', 'gone-host:4242')"
            )
        )
    result = doctor()
    assert result.exit_code == 1, result.output
    [line] = _lines(result, "WARNING")
    assert "ownership: projection 'orphaned' is marked running by gone-host:4242" in line
    assert "its lease expired" in line


@pytest.fixture
def role_prefix(database_url: str) -> Iterator[str]:
    """Roles are cluster-wide: a prefix of this test's own, dropped at the end."""
    prefix = sa.make_url(database_url).database
    assert prefix is not None
    yield prefix
    drop_roles(database_url, prefix=prefix)


def test_roles_missing_a_grant_are_a_problem(doctor: Invoke, database_url: str, role_prefix: str) -> None:
    names = create_roles(database_url, prefix=role_prefix)
    assert doctor("--role-prefix", role_prefix).exit_code == 0
    with psycopg.connect(_libpq(database_url), autocommit=True) as connection:
        connection.execute(
            psycopg.sql.SQL("REVOKE INSERT ON events FROM {}").format(psycopg.sql.Identifier(names.writer))
        )
    result = doctor("--role-prefix", role_prefix)
    assert result.exit_code == 2, result.output
    [line] = _lines(result, "PROBLEM")
    assert f"roles: roles lack grants that roles.sql gives: INSERT on table public.events to {names.writer}" in line
    assert "create_roles" in line


def test_the_pooler_probe_sees_a_direct_connection(engine: Engine) -> None:
    probe = detect_transaction_pooler(engine)
    assert not probe.detected, probe.evidence
    first, after, other = probe.backend_pids
    assert first == after and other != first and probe.setting_kept


def test_an_unreachable_server_is_one_problem() -> None:
    with EventStore("postgresql+psycopg://nobody@127.0.0.1:1/nowhere") as store:
        [finding] = run_checks(store)
    assert finding.check == "connection" and finding.severity == Severity.PROBLEM
    assert "127.0.0.1:1" in finding.message


def test_a_bad_role_prefix_is_a_usage_error(cli: Invoke) -> None:
    result = cli("doctor", "--role-prefix", "Bad-Prefix")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --role-prefix: role prefix 'Bad-Prefix' is not allowed")

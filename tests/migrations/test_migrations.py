"""The schema is applied by alembic: directly, offline (--sql), and from a user's own alembic project."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config

from alembic import command
from eventstore import EventStore, NewEvent, migrate
from eventstore.migrations import current_revision, head_revision, versions_path
from eventstore.testing import TestServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def empty_database(test_server: TestServer) -> Iterator[str]:
    name = test_server.create_database(migrated=False)
    yield test_server.url(name)
    test_server.drop_database(name)


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrate_creates_the_schema_and_is_idempotent(empty_database: str) -> None:
    migrate(empty_database)
    migrate(empty_database)

    assert {"events", "projection_checkpoints", "projection_failures"} <= tables(empty_database)
    engine = sa.create_engine(empty_database, poolclass=sa.NullPool)
    assert current_revision(engine) == head_revision()
    engine.dispose()
    store = EventStore(empty_database)
    assert store.append("order-1", [NewEvent("OrderPlaced", {})]).stream_version == 1
    store.engine.dispose()


def test_offline_sql_holds_the_whole_schema() -> None:
    sql = migrate("postgresql://nobody@127.0.0.1:1/nothing", sql=True)
    assert sql is not None
    for fragment in (
        "CREATE TABLE events",
        "transaction_order",
        "CREATE TRIGGER events_notify_v3",
        "pg_notification_queue_usage() < 0.5",
        "current_setting('eventstore.notify', true)",
        "pg_notify('eventstore_events_v1', '')",
        "events_forbid_truncate_v1",
        "CREATE TABLE projection_checkpoints",
        "INSERT INTO eventstore_alembic_version",
    ):
        assert fragment in sql


def test_offline_sql_applies_cleanly_with_psql_semantics(empty_database: str) -> None:
    sql = migrate(empty_database, sql=True)
    assert sql is not None
    engine = sa.create_engine(empty_database, poolclass=sa.NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql(sql.replace("BEGIN;", "").replace("COMMIT;", ""))
    assert current_revision(engine) == head_revision()
    engine.dispose()


def user_project(tmp_path: Path, url: str) -> Config:
    """A user's alembic project with its own revision and ours in version_locations."""
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(
        textwrap.dedent(
            """
            from alembic import context
            from sqlalchemy import create_engine, pool

            engine = create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
            with engine.connect() as connection:
                context.configure(connection=connection)
                with context.begin_transaction():
                    context.run_migrations()
            engine.dispose()
            """
        )
    )
    (tmp_path / "script.py.mako").write_text((ROOT / "alembic" / "script.py.mako").read_text())
    (tmp_path / "versions" / "app_0001.py").write_text(
        textwrap.dedent(
            """
            from alembic import op

            revision = "app_0001"
            down_revision = None
            branch_labels = ("app",)
            depends_on = None

            def upgrade():
                op.execute("CREATE TABLE app_orders (id int PRIMARY KEY)")

            def downgrade():
                op.execute("DROP TABLE app_orders")
            """
        )
    )
    config = Config()
    config.set_main_option("script_location", str(tmp_path))
    config.set_main_option("version_locations", f"{tmp_path / 'versions'} {versions_path()}")
    config.set_main_option("path_separator", "space")
    config.set_main_option("sqlalchemy.url", url)
    return config


def test_users_run_our_revisions_from_their_own_alembic_project(tmp_path: Path, empty_database: str) -> None:
    config = user_project(tmp_path, empty_database)

    command.upgrade(config, "heads")

    assert {"app_orders", "events", "projection_checkpoints", "alembic_version"} <= tables(empty_database)
    command.downgrade(config, "eventstore@base")
    assert "events" not in tables(empty_database)
    assert "app_orders" in tables(empty_database)


def test_the_wheel_ships_the_migrations(tmp_path: Path, empty_database: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), ROOT],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("eventstore-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "eventstore/_alembic/env.py" in names
    assert "eventstore/_alembic/versions/0001_events.py" in names
    assert "eventstore/py.typed" in names

    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = "import eventstore, eventstore.migrations as m, sys;eventstore.migrate(sys.argv[1]);print(m.alembic_dir())"
    result = subprocess.run(
        [sys.executable, "-c", probe, empty_database],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert result.stdout.strip() == str(target / "eventstore" / "_alembic")
    assert "events" in tables(empty_database)

"""Least-privilege roles: connect as each role and show what it can and cannot do.

The local test server uses trust authentication, so the LOGIN users created
here need no password. Roles are cluster-wide: every test uses a prefix
derived from its own database name and drops its roles at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from eventstore import EventStore, NewEvent
from eventstore.errors import ConfigurationError, PermissionDenied
from eventstore.roles import RoleNames, create_roles, drop_roles, render_roles_sql, role_names


@dataclass
class Users:
    """LOGIN users, one per group role, and URLs to connect as them."""

    names: RoleNames
    writer_url: str
    projector_url: str
    reader_url: str


def _libpq(url: str) -> str:
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def users(database_url: str) -> Iterator[Users]:
    prefix = sa.make_url(database_url).database
    assert prefix is not None
    names = create_roles(database_url, prefix=prefix)
    logins = {role: f"{role}_login" for role in names.all()}
    with psycopg.connect(_libpq(database_url), autocommit=True) as admin:
        for role, login in logins.items():
            statement = sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}")
            admin.execute(statement.format(sql.Identifier(login), sql.Identifier(role)))
    url = sa.make_url(database_url)
    yield Users(
        names,
        url.set(username=logins[names.writer]).render_as_string(hide_password=False),
        url.set(username=logins[names.projector]).render_as_string(hide_password=False),
        url.set(username=logins[names.reader]).render_as_string(hide_password=False),
    )
    with psycopg.connect(_libpq(database_url), autocommit=True) as admin:
        for login in logins.values():
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                (login,),
            )
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(login)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))
    drop_roles(database_url, prefix=prefix)


def _execute(url: str, statement: str, parameters: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(_libpq(url)) as connection:
        cursor = connection.execute(statement, parameters)
        rows = cursor.fetchall() if cursor.description else []
        connection.commit()
        return rows


def _refused(url: str, statement: str) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        _execute(url, statement)
    return str(caught.value)


def _seed(database_url: str) -> int:
    store = EventStore(database_url)
    result = store.append("order-1", [NewEvent("OrderPlaced", {"total": 10})])
    store.engine.dispose()
    return result.global_position


# -- the owner: the append-only triggers refuse history rewrites for everyone --


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("UPDATE events SET data = '{}'::jsonb", "UPDATE"),
        ("DELETE FROM events", "DELETE"),
        ("TRUNCATE events", "TRUNCATE"),
    ],
)
def test_owner_cannot_rewrite_history(database_url: str, statement: str, operation: str) -> None:
    _seed(database_url)
    with pytest.raises(psycopg.errors.RestrictViolation) as caught:
        _execute(database_url, statement)
    assert f"the events table is append-only; {operation} is not allowed" in str(caught.value)
    assert caught.value.diag.message_hint == "append new events that correct or compensate instead"
    assert _execute(database_url, "SELECT count(*) FROM events") == [(1,)]


# -- writer ---------------------------------------------------------------------


def test_writer_appends_and_reads_but_cannot_rewrite_or_touch_checkpoints(database_url: str, users: Users) -> None:
    writer = EventStore(users.writer_url)
    try:
        first = writer.append("order-7", [NewEvent("OrderPlaced", {"total": 5})])
        again = writer.append("order-7", [NewEvent("OrderPaid", {"amount": 5})], expected_version=1)
        assert (first.stream_version, again.stream_version) == (1, 2)
        assert [event.type for event in writer.read_stream("order-7")] == ["OrderPlaced", "OrderPaid"]
        assert [event.global_position for event in writer.read_all()] == [first.global_position, again.global_position]
    finally:
        writer.engine.dispose()

    for statement in ("UPDATE events SET data = '{}'::jsonb", "DELETE FROM events", "TRUNCATE events"):
        assert "permission denied for table events" in _refused(users.writer_url, statement)
    assert "permission denied for table projection_checkpoints" in _refused(
        users.writer_url, "INSERT INTO projection_checkpoints (projection_name) VALUES ('x')"
    )
    assert "permission denied for table projection_checkpoints" in _refused(
        users.writer_url, "SELECT * FROM projection_checkpoints"
    )
    assert "permission denied for schema public" in _refused(users.writer_url, "CREATE TABLE sneaky (id int)")
    assert _execute(database_url, "SELECT count(*) FROM events") == [(2,)]


# -- projector --------------------------------------------------------------------


def test_a_writer_that_may_not_notify_still_appends(
    database_url: str, users: Users, caplog: pytest.LogCaptureFixture
) -> None:
    # The wake-up is a hint sent after the commit: failing it must not fail the append.
    _execute(database_url, "REVOKE EXECUTE ON FUNCTION pg_notify(text, text) FROM PUBLIC")
    store = EventStore(users.writer_url)
    with caplog.at_level(logging.WARNING, logger="eventstore"):
        # A wake-up's answer (here its error) is read when its connection is next taken. An append skips a
        # connection whose answer has not arrived yet and opens another, up to max_idle=4: by the fifth
        # append at the latest one is taken again and its error collected.
        for number in range(1, 6):
            store.append(f"order-{number}", [NewEvent("OrderPlaced", {})])
    assert [event.stream_id for event in store.read_all()] == [f"order-{number}" for number in range(1, 6)]
    assert any("wake-up failed" in r.getMessage() and "permission denied" in r.getMessage() for r in caplog.records)
    store.engine.dispose()


def test_projector_reads_events_writes_checkpoints_and_owns_its_read_models(database_url: str, users: Users) -> None:
    position = _seed(database_url)
    projector = EventStore(users.projector_url)
    try:
        assert [event.global_position for event in projector.read_all()] == [position]
    finally:
        projector.engine.dispose()

    _execute(
        users.projector_url,
        "INSERT INTO projection_checkpoints (projection_name, global_position) VALUES ('totals', %s)",
        (position,),
    )
    _execute(
        users.projector_url, "UPDATE projection_checkpoints SET state = 'running' WHERE projection_name = 'totals'"
    )
    _execute(
        users.projector_url,
        "INSERT INTO projection_failures (projection_name, global_position, error, status) "
        "VALUES ('totals', %s, 'boom', 'failed')",
        (position,),
    )
    # setup() creates a read model, reset() truncates it: the projector owns it.
    _execute(users.projector_url, "CREATE TABLE order_totals (stream_id text PRIMARY KEY, total int)")
    _execute(users.projector_url, "INSERT INTO order_totals VALUES ('order-1', 10)")
    _execute(users.projector_url, "TRUNCATE order_totals")
    assert _execute(users.projector_url, "SELECT count(*) FROM order_totals") == [(0,)]
    assert _execute(database_url, "SELECT state, global_position FROM projection_checkpoints") == [
        ("running", position)
    ]

    assert "permission denied for table events" in _refused(
        users.projector_url,
        "INSERT INTO events (transaction_order, event_id, stream_id, stream_version, event_type, data) "
        "VALUES (pg_current_xact_id(), gen_random_uuid(), 'x', 1, 'T', '{}')",
    )
    for statement in ("UPDATE events SET data = '{}'::jsonb", "DELETE FROM events", "TRUNCATE events"):
        assert "permission denied for table events" in _refused(users.projector_url, statement)
    assert "must be owner of table events" in _refused(users.projector_url, "DROP TABLE events")
    assert _execute(database_url, "SELECT count(*) FROM events") == [(1,)]


def test_projection_runner_works_as_projector(database_url: str, users: Users) -> None:
    import projections
    from eventstore import ProjectionRunner
    from projections.orders import place

    owner_store = EventStore(database_url)
    place(owner_store, "order-1", customer="c-1", total=10)
    position = owner_store.head_position()
    owner_store.engine.dispose()
    projector = EventStore(users.projector_url)
    try:
        instances = [type(projection)() for projection in projections.ALL]
        consumed = ProjectionRunner(projector, instances).run_until_caught_up(timeout=60)
        assert consumed == len(instances)  # each projection consumed the one event
    finally:
        projector.engine.dispose()
    rows = _execute(database_url, "SELECT projection_name, global_position FROM projection_checkpoints ORDER BY 1")
    assert rows == sorted((projection.name, position) for projection in projections.ALL)
    assert _execute(users.projector_url, "SELECT total FROM order_summaries") == [(10,)]


# -- reader -------------------------------------------------------------------------


def test_reader_reads_events_only(database_url: str, users: Users) -> None:
    position = _seed(database_url)
    reader = EventStore(users.reader_url)
    try:
        assert [event.global_position for event in reader.read_all()] == [position]
        assert reader.read_stream("order-1")[0].data == {"total": 10}
        with pytest.raises(PermissionDenied) as caught:
            reader.append("order-1", [NewEvent("OrderPaid", {"amount": 10})])
        assert isinstance(caught.value.__cause__, psycopg.errors.InsufficientPrivilege)
        assert "permission denied for table events" in str(caught.value)
    finally:
        reader.engine.dispose()
    assert "permission denied for table projection_checkpoints" in _refused(
        users.reader_url, "SELECT * FROM projection_checkpoints"
    )
    assert "permission denied for table projection_checkpoints" in _refused(
        users.reader_url, "INSERT INTO projection_checkpoints (projection_name) VALUES ('x')"
    )
    assert "permission denied for schema public" in _refused(users.reader_url, "CREATE TABLE sneaky (id int)")
    assert _execute(database_url, "SELECT count(*) FROM events") == [(1,)]


# -- the script itself ----------------------------------------------------------------


def test_create_roles_is_idempotent(database_url: str, users: Users) -> None:
    prefix = users.names.writer.removesuffix("_writer")
    assert create_roles(database_url, prefix=prefix) == users.names
    rows = _execute(
        database_url,
        "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
        "WHERE table_name = 'events' AND grantee = ANY(%s) ORDER BY grantee, privilege_type",
        (list(users.names.all()),),
    )
    assert rows == [
        (users.names.projector, "SELECT"),
        (users.names.reader, "SELECT"),
        (users.names.writer, "INSERT"),
        (users.names.writer, "SELECT"),
    ]


@pytest.mark.parametrize("prefix", ['x"; DROP TABLE events; --', "Upper", "", "a" * 50, "1abc", "a-b"])
def test_role_prefix_is_validated(database_url: str, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="role prefix"):
        create_roles(database_url, prefix=prefix)
    assert _execute(database_url, "SELECT count(*) FROM events") == [(0,)]


def test_rendered_script_quotes_every_identifier() -> None:
    script = render_roles_sql("shop")
    assert 'CREATE ROLE "shop_writer" NOLOGIN;' in script
    assert 'GRANT SELECT, INSERT ON TABLE "public".events TO "shop_writer";' in script
    on_events = [line for line in script.splitlines() if '"public".events ' in line]
    assert len(on_events) == 3
    assert not [line for line in on_events if any(word in line for word in ("UPDATE", "DELETE", "TRUNCATE", "ALL"))]
    assert role_names("shop").all() == ("shop_writer", "shop_projector", "shop_reader")

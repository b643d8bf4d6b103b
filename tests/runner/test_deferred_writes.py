"""Deferred writes (eventstore/runner/deferred.py): per-event handlers, same results, fewer round trips.

Every test runs the same projection with ``defer_writes`` on and off (and
often with batches of one) and compares what it leaves behind: the read
model, the checkpoint, the poison events with their errors and attempts.
Statements are counted on the way to the driver (SQLAlchemy's
``before_cursor_execute``: one per ``cursor.execute`` or ``executemany``, and
psycopg sends an ``executemany`` in one pipeline) to show the batching
happened; nothing is timed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

import projections
from eventstore import EventStore, NewEvent, Projection, ProjectionRunner, RecordedEvent, admin, handles
from eventstore.admin import list_failures, projection_status
from eventstore.runner.deferred import deferrable_sql
from projections.orders import workload
from tests.runner.per_event_orders import PER_EVENT

Snapshot = dict[str, list[tuple[Any, ...]]]


@pytest.mark.parametrize(
    ("sql", "deferrable"),
    [
        ("INSERT INTO t VALUES (:a)", True),
        ("  update t set n = n + 1", True),
        ("-- a comment\n/* another */ DELETE FROM t WHERE a = :a;", True),
        ("INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET n = t.n + 1", True),
        ("INSERT INTO t VALUES (:a) RETURNING a", False),
        ("UPDATE t SET n = 1 returning n", False),
        ("SELECT * FROM t", False),
        ("WITH x AS (SELECT 1) UPDATE t SET n = 1", False),
        ("UPDATE t SET n = 1; SELECT 1", False),
        ("CREATE TABLE t (a int)", False),
        ("TRUNCATE t", False),
        ("", False),
    ],
)
def test_only_single_writes_without_returning_are_deferred(sql: str, deferrable: bool) -> None:
    assert deferrable_sql(sql) is deferrable


# -- helpers -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def driver_calls() -> Iterator[list[tuple[str, int, bool]]]:
    """Every statement sent to the driver meanwhile: (SQL, parameter sets, executemany?)."""
    calls: list[tuple[str, int, bool]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        calls.append((statement, len(parameters) if executemany else 1, executemany))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield calls
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def run(
    store: EventStore,
    projection: Projection,
    *,
    batch_size: int = 500,
    defer_writes: bool = True,
    tables: tuple[str, ...] = (),
) -> tuple[Snapshot, list[tuple[int, str, str, int]], int]:
    """Reset ``projection`` and run it to the head: (its tables, its failures, its checkpoint position)."""
    admin.reset(store, projection)
    with store.engine.begin() as connection:
        connection.execute(
            sa.text("DELETE FROM projection_failures WHERE projection_name = :n"), {"n": projection.name}
        )
    runner = ProjectionRunner(
        store, [projection], batch_size=batch_size, defer_writes=defer_writes, retry_attempts=2, retry_delay=0.001
    )
    runner.run_until_caught_up(timeout=120)
    failures = [(f.global_position, f.status, f.error, f.attempts) for f in list_failures(store, projection.name)]
    return snapshot(store, tables), failures, projection_status(store, [projection])[0].position


def snapshot(store: EventStore, tables: tuple[str, ...]) -> Snapshot:
    with store.engine.connect() as connection:
        return {
            table: sorted(tuple(row) for row in connection.execute(sa.text(f"SELECT * FROM {table}")))
            for table in tables
        }


def append_each(store: EventStore, events: list[tuple[str, dict[str, Any]]], stream: str = "t") -> list[int]:
    """Append each (type, data) as its own event of stream ``<stream>-<index>``; their positions."""
    return [
        store.append(f"{stream}-{index}", [NewEvent(event_type, data)]).global_position
        for index, (event_type, data) in enumerate(events)
    ]


# -- the demo workload ---------------------------------------------------------------------------------------

DEMO_TABLES = {
    "order_summaries": ("order_summaries",),
    "dashboard_daily": ("dashboard_daily", "dashboard_orders"),
    "customer_orders": ("customer_orders", "customer_order_states"),
    "high_value_orders": ("high_value_orders",),
}


def test_per_event_demo_projections_match_a_recomputation_with_and_without_deferral(store: EventStore) -> None:
    workload(store, 150, seed=11, customers=6)
    for projection in PER_EVENT:
        tables = DEMO_TABLES[projection.name]
        with driver_calls() as deferred_calls:
            deferred = run(store, projection, tables=tables)
        assert deferred[1] == [], projection.name
        assert projections.verify(store, projection) == [], projection.name
        with driver_calls() as plain_calls:
            plain = run(store, projection, defer_writes=False, tables=tables)
        one_by_one = run(store, projection, batch_size=1, tables=tables)
        assert deferred == plain == one_by_one, projection.name
        assert all(rows for rows in deferred[0].values()), projection.name
        # The same statements, in fewer round trips where one write follows another (the dashboard and
        # customer projections read with RETURNING in every event, so little can wait for them).
        deferred_sent = [call for call in deferred_calls if any(table in call[0] for table in tables)]
        plain_sent = [call for call in plain_calls if any(table in call[0] for table in tables)]
        assert sum(count for _, count, _ in deferred_sent) == sum(count for _, count, _ in plain_sent)
        assert len(deferred_sent) <= len(plain_sent), projection.name
        if projection.name in ("order_summaries", "high_value_orders"):  # runs of the same write: executemany
            assert len(deferred_sent) < len(plain_sent), projection.name
            assert any(many for _, _, many in deferred_sent), projection.name


# -- round trips, reads of earlier writes, results -----------------------------------------------------------


class Rows(Projection):
    """A row per event, written as the README teaches (a new ``sa.text`` per call)."""

    name = "deferred_rows"
    categories = ("t",)

    def setup(self, conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS deferred_rows (position bigint PRIMARY KEY, n bigint)"))

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("DELETE FROM deferred_rows"))

    @handles("Tick")
    def row(self, event: RecordedEvent, conn: Connection) -> None:
        conn.execute(
            sa.text("INSERT INTO deferred_rows VALUES (:position, :n)"),
            {"position": event.global_position, "n": event.data["n"]},
        )


def test_the_writes_of_a_batch_go_to_the_server_in_one_executemany(store: EventStore) -> None:
    append_each(store, [("Tick", {"n": n}) for n in range(120)])
    with driver_calls() as calls:
        deferred = run(store, Rows(), batch_size=50, tables=("deferred_rows",))
    inserts = [(count, many) for sql, count, many in calls if sql.startswith("INSERT INTO deferred_rows")]
    assert inserts == [(50, True), (50, True), (20, True)]
    with driver_calls() as calls:
        plain = run(store, Rows(), batch_size=50, defer_writes=False, tables=("deferred_rows",))
    inserts = [(count, many) for sql, count, many in calls if sql.startswith("INSERT INTO deferred_rows")]
    assert inserts == [(1, False)] * 120
    assert deferred == plain
    assert len(deferred[0]["deferred_rows"]) == 120


class Reader(Projection):
    """Each event writes a row, then reads how many rows there are and records what it saw."""

    name = "deferred_reader"
    categories = ("t",)

    def setup(self, conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS reader_rows (position bigint PRIMARY KEY)"))
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS reader_seen (position bigint PRIMARY KEY, seen bigint)"))

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("DELETE FROM reader_rows"))
        conn.execute(sa.text("DELETE FROM reader_seen"))

    @handles("Tick")
    def tick(self, event: RecordedEvent, conn: Connection) -> None:
        conn.execute(sa.text("INSERT INTO reader_rows VALUES (:p)"), {"p": event.global_position})
        if event.data["n"] % 2:  # a SELECT through execute, or conn.scalar (another attribute of the connection)
            seen = conn.execute(sa.text("SELECT count(*) FROM reader_rows")).scalar_one()
        else:
            seen = conn.scalar(sa.select(sa.func.count()).select_from(sa.table("reader_rows")))
        conn.execute(sa.text("INSERT INTO reader_seen VALUES (:p, :seen)"), {"p": event.global_position, "seen": seen})


def test_a_select_in_the_middle_of_a_batch_sees_the_earlier_writes(store: EventStore) -> None:
    positions = append_each(store, [("Tick", {"n": n}) for n in range(40)])
    tables = ("reader_rows", "reader_seen")
    deferred = run(store, Reader(), tables=tables)
    assert deferred[0]["reader_seen"] == [(position, index + 1) for index, position in enumerate(positions)]
    assert deferred == run(store, Reader(), defer_writes=False, tables=tables)


class Counter(Projection):
    """Reads ``rowcount`` of its UPDATE at once, or after another statement, and records it."""

    name = "deferred_counter"
    categories = ("t",)

    def setup(self, conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS counter_items (item int PRIMARY KEY, grp int, n int)"))
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS counter_seen (position bigint PRIMARY KEY, updated int)"))

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("DELETE FROM counter_items"))
        conn.execute(sa.text("DELETE FROM counter_seen"))
        conn.execute(sa.text("INSERT INTO counter_items SELECT g, g % 5, 0 FROM generate_series(1, 23) g"))

    @handles("Tick")
    def tick(self, event: RecordedEvent, conn: Connection) -> None:
        group = event.data["n"] % 5
        result = conn.execute(sa.text("UPDATE counter_items SET n = n + 1 WHERE grp = :g"), {"g": group})
        if event.data["n"] % 2:  # kept while another write is recorded and flushed
            conn.execute(sa.text("UPDATE counter_items SET n = n WHERE grp = 4"))
            conn.execute(sa.text("SELECT 1"))
        conn.execute(
            sa.text("INSERT INTO counter_seen VALUES (:p, :updated)"),
            {"p": event.global_position, "updated": result.rowcount},
        )


def test_rowcount_is_the_statement_s_own(store: EventStore) -> None:
    positions = append_each(store, [("Tick", {"n": n}) for n in range(30)])
    tables = ("counter_items", "counter_seen")
    deferred = run(store, Counter(), tables=tables)
    sizes = {group: len([item for item in range(1, 24) if item % 5 == group]) for group in range(5)}
    assert deferred[0]["counter_seen"] == [(position, sizes[n % 5]) for n, position in enumerate(positions)]
    assert deferred == run(store, Counter(), defer_writes=False, tables=tables)


# -- errors: at a flush, caught by the handler, in a savepoint -----------------------------------------------


class Keys(Projection):
    """Inserts each event's key: a repeated key is a unique violation, raised only when the INSERT is sent.

    ``Peek`` events read the table and swallow any database error (a badly written handler): the flush it
    triggers may fail on an earlier event's INSERT, which must still end as that event's poison event.
    """

    name = "deferred_keys"
    categories = ("t",)

    def setup(self, conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS deferred_keys (key text PRIMARY KEY, position bigint)"))

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("DELETE FROM deferred_keys"))

    @handles("Key")
    def key(self, event: RecordedEvent, conn: Connection) -> None:
        conn.execute(
            sa.text("INSERT INTO deferred_keys VALUES (:key, :position)"),
            {"key": event.data["key"], "position": event.global_position},
        )

    @handles("Peek")
    def peek(self, event: RecordedEvent, conn: Connection) -> None:
        with contextlib.suppress(sa.exc.DBAPIError):
            conn.execute(sa.text("SELECT count(*) FROM deferred_keys")).scalar_one()


@pytest.mark.parametrize("on_error", ["stop", "skip"])
def test_a_unique_violation_at_a_flush_is_the_same_poison_event_as_without_deferral(
    store: EventStore, on_error: str
) -> None:
    events: list[tuple[str, dict[str, Any]]] = [("Key", {"key": f"k{n}"}) for n in range(30)]
    events[12] = ("Key", {"key": "k3"})  # a repeated key, found only when the INSERT runs
    events[13] = ("Peek", {})  # ... and a handler that reads right after it, swallowing the error
    events[25] = ("Key", {"key": "k20"})
    positions = append_each(store, events)
    projection = Keys()
    projection.on_error = on_error
    deferred = run(store, projection, tables=("deferred_keys",))
    plain = run(store, projection, defer_writes=False, tables=("deferred_keys",))
    one_by_one = run(store, projection, batch_size=1, tables=("deferred_keys",))
    assert deferred == plain == one_by_one
    rows, failures, checkpoint = deferred
    if on_error == "stop":
        assert [(position, status) for position, status, _, _ in failures] == [(positions[12], "failed")]
        assert checkpoint == positions[11]  # the events before it are committed
        assert len(rows["deferred_keys"]) == 12
    else:
        assert [(position, status) for position, status, _, _ in failures] == [
            (positions[12], "skipped"),
            (positions[25], "skipped"),
        ]
        assert checkpoint == positions[-1]
        assert len(rows["deferred_keys"]) == 27
    assert "UniqueViolation" in failures[0][2] and failures[0][3] == 2  # the error and attempts of one event


class Upserts(Projection):
    """Insert, or on a repeated key update: the IntegrityError caught around a savepoint, as PostgreSQL needs."""

    name = "deferred_upserts"
    categories = ("t",)

    def setup(self, conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS upserts (key text PRIMARY KEY, seen int)"))
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS upsert_log (position bigint PRIMARY KEY, key text)"))

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("DELETE FROM upserts"))
        conn.execute(sa.text("DELETE FROM upsert_log"))

    @handles("Key")
    def key(self, event: RecordedEvent, conn: Connection) -> None:
        parameters = {"key": event.data["key"], "position": event.global_position}
        conn.execute(sa.text("INSERT INTO upsert_log VALUES (:position, :key)"), parameters)  # deferred
        try:
            with conn.begin_nested():
                conn.execute(sa.text("INSERT INTO upserts VALUES (:key, 1)"), parameters)
        except sa.exc.IntegrityError:
            conn.execute(sa.text("UPDATE upserts SET seen = seen + 1 WHERE key = :key"), parameters)


def test_a_handler_catching_an_integrity_error_in_a_savepoint_works_in_a_batch(store: EventStore) -> None:
    append_each(store, [("Key", {"key": f"k{n % 7}"}) for n in range(40)])
    tables = ("upserts", "upsert_log")
    deferred = run(store, Upserts(), tables=tables)
    assert deferred[1] == []
    assert deferred[0]["upserts"] == [(f"k{key}", len(range(key, 40, 7))) for key in range(7)]
    assert deferred == run(store, Upserts(), defer_writes=False, tables=tables)


class Savepoints(Projection):
    """Writes before, inside a rolled-back savepoint and after; the log's identity column shows the order."""

    name = "deferred_savepoints"
    categories = ("t",)

    def setup(self, conn: Connection) -> None:
        conn.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS savepoint_log "
                "(applied bigint GENERATED ALWAYS AS IDENTITY, position bigint, step text)"
            )
        )

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("TRUNCATE savepoint_log RESTART IDENTITY"))

    @handles("Tick")
    def tick(self, event: RecordedEvent, conn: Connection) -> None:
        log = sa.text("INSERT INTO savepoint_log (position, step) VALUES (:position, :step)")
        conn.execute(log, {"position": event.global_position, "step": "before"})
        savepoint = conn.begin_nested()
        conn.execute(log, {"position": event.global_position, "step": "inside"})
        savepoint.rollback()
        with conn.begin_nested():
            conn.execute(log, {"position": event.global_position, "step": "kept"})
        conn.execute(log, {"position": event.global_position, "step": "after"})


def test_begin_nested_inside_a_handler(store: EventStore) -> None:
    positions = append_each(store, [("Tick", {"n": n}) for n in range(15)])
    deferred = run(store, Savepoints(), tables=("savepoint_log",))
    steps = [(position, step) for _, position, step in sorted(deferred[0]["savepoint_log"])]
    assert steps == [(position, step) for position in positions for step in ("before", "kept", "after")]
    assert deferred == run(store, Savepoints(), defer_writes=False, tables=("savepoint_log",))


# -- other ways to write ---------------------------------------------------------------------------------------

_ITEMS = sa.table("deferred_items", sa.column("id"), sa.column("n"), sa.column("note"))
_INSERT_ITEM = sa.insert(_ITEMS)


class Styles(Projection):
    """Core DML (a constant, and one built per call), exec_driver_sql, a text without parameters holding ``%``."""

    name = "deferred_styles"
    categories = ("t",)

    def setup(self, conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS deferred_items (id bigint PRIMARY KEY, n int, note text)"))

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("DELETE FROM deferred_items"))

    @handles("Add")
    def add(self, event: RecordedEvent, conn: Connection) -> None:
        conn.execute(_INSERT_ITEM, {"id": event.data["n"], "n": 0, "note": "100%"})

    @handles("Tag")
    def tag(self, event: RecordedEvent, conn: Connection) -> None:
        sql = "UPDATE deferred_items SET note = note || %(tag)s WHERE id = %(id)s"
        conn.exec_driver_sql(sql, {"tag": event.type, "id": event.data["n"]})

    @handles("Bump")
    def bump(self, event: RecordedEvent, conn: Connection) -> None:
        conn.execute(sa.update(_ITEMS).where(_ITEMS.c.id == event.data["n"]).values(n=_ITEMS.c.n + 10))
        conn.execute(sa.text("UPDATE deferred_items SET n = n + 1 WHERE id % 2 = 0"))


def test_core_statements_driver_sql_and_percent_signs(store: EventStore) -> None:
    events = [("Add", {"n": n}) for n in range(25)] + [("Tag", {"n": n}) for n in range(10)]
    append_each(store, events + [("Bump", {"n": n}) for n in range(3)] + [("Tag", {"n": 24})])
    with driver_calls() as calls:
        deferred = run(store, Styles(), tables=("deferred_items",))
    groups = [count for sql, count, many in calls if many and "deferred_items" in sql]
    assert groups == [25, 10]  # the constant insert, then the driver SQL; the rest one by one
    assert deferred == run(store, Styles(), defer_writes=False, tables=("deferred_items",))
    assert deferred == run(store, Styles(), batch_size=1, tables=("deferred_items",))
    items = {item: (n, note) for item, n, note in deferred[0]["deferred_items"]}
    assert items[0] == (13, "100%Tag") and items[1] == (10, "100%Tag") and items[24] == (3, "100%Tag")

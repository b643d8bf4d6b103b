"""Per-event handlers in psycopg pipeline mode give exactly what they give without it.

The runner applies a batch of per-event handlers in pipeline mode
(``RunnerSettings.pipeline``, on by default). Each test runs the same
projection over the same events with the pipeline on and off and compares
everything observable: read models, rowcounts and reads inside the batch,
poison events (position, committed prefix, ``projection_failures`` rows), and
a connection lost mid-batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import pq
from sqlalchemy.engine import Connection, Engine

from eventstore import EventStore, NewEvent, Projection, ProjectionRunner, RecordedEvent, admin, handles
from eventstore.runner import pipelining
from eventstore.runner.checkpoints import load
from projections import Ledger, ledger_positions
from tests.runner.runner_helpers import FAST

Snapshot = dict[str, list[tuple[Any, ...]]]


def _pipelined(conn: Connection) -> bool:
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return bool(driver.pgconn.pipeline_status != pq.PipelineStatus.OFF)


class Counting(Projection):
    """Per-stream counts kept the README way: one UPDATE per event, an INSERT when it matched no row."""

    name = "pl_counting"
    table = "pl_counts"

    def __init__(self) -> None:
        self.modes: set[bool] = set()

    def setup(self, conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS pl_counts (stream_id text PRIMARY KEY, n int NOT NULL)"))

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("TRUNCATE pl_counts"))

    @handles("Tick", "Bad")
    def counted(self, event: RecordedEvent, conn: Connection) -> None:
        self.modes.add(_pipelined(conn))
        updated = conn.execute(
            sa.text("UPDATE pl_counts SET n = n + 1 WHERE stream_id = :stream_id"), {"stream_id": event.stream_id}
        )
        if updated.rowcount == 0:  # the rowcount of a write still in flight must be exact
            conn.execute(sa.text("INSERT INTO pl_counts VALUES (:stream_id, 1)"), {"stream_id": event.stream_id})


class Rows(Projection):
    """A row per event; each row stores how many rows of its stream it saw before it (a read in the batch).

    ``Bad`` events carry a negative amount, which the table's CHECK rejects: a
    database error that pipeline mode reports only at a later statement.
    ``Broken`` events raise in Python before any statement.
    """

    name = "pl_rows"
    table = "pl_rows"

    def __init__(self, on_error: str = "stop") -> None:
        self.on_error = on_error
        self.modes: set[bool] = set()

    def setup(self, conn: Connection) -> None:
        conn.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS pl_rows (global_position bigint PRIMARY KEY, stream_id text NOT NULL, "
                "amount int NOT NULL CHECK (amount >= 0), seen_before int NOT NULL, seen_list text NOT NULL)"
            )
        )

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("TRUNCATE pl_rows"))

    @handles("Tick", "Bad", "Broken")
    def row(self, event: RecordedEvent, conn: Connection) -> None:
        self.modes.add(_pipelined(conn))
        if event.type == "Broken":
            raise ValueError(f"cannot apply Broken at {event.global_position}")
        seen = conn.execute(
            sa.text("SELECT count(*) FROM pl_rows WHERE stream_id = :stream_id"), {"stream_id": event.stream_id}
        ).scalar_one()
        positions = conn.execute(
            sa.text("SELECT global_position FROM pl_rows WHERE stream_id = :stream_id ORDER BY 1"),
            {"stream_id": event.stream_id},
        ).fetchall()
        conn.execute(
            sa.text("INSERT INTO pl_rows VALUES (:position, :stream_id, :amount, :seen, :seen_list)"),
            {
                "position": event.global_position,
                "stream_id": event.stream_id,
                "amount": event.data["amount"],
                "seen": seen,
                "seen_list": ",".join(str(row[0]) for row in positions),
            },
        )


def _append(store: EventStore, types: list[str], *, streams: int = 5) -> list[int]:
    positions = []
    for i, event_type in enumerate(types):
        amount = -1 if event_type == "Bad" else i
        recorded = store.append(f"s-{i % streams}", [NewEvent(event_type, {"amount": amount})])
        positions.append(recorded.global_position)
    return positions


def _run(store: EventStore, projection: Counting | Rows, *, batch_size: int, pipeline: bool) -> dict[str, Any]:
    """Rebuild ``projection`` from the first event; everything observable afterwards."""
    admin.reset(store, projection)
    with store.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM projection_failures"))
    settings = {**FAST, "batch_size": batch_size, "pipeline": pipeline}
    processed = ProjectionRunner(store, [projection], **settings).run_until_caught_up(timeout=60)
    with store.engine.connect() as connection:
        checkpoint = load(connection, projection.name)
        failures = connection.execute(
            sa.text(
                "SELECT global_position, event_type, stream_id, status, attempts, error FROM projection_failures "
                "WHERE projection_name = :name ORDER BY global_position"
            ),
            {"name": projection.name},
        ).all()
        everything = sa.select(sa.text("*")).select_from(sa.table(projection.table)).order_by(sa.text("1"))
        rows = [tuple(row) for row in connection.execute(everything)]
    assert checkpoint is not None
    return {
        "processed": processed,
        "rows": rows,
        "position": checkpoint.cursor,
        "failed": (checkpoint.failed, checkpoint.failed_position, checkpoint.last_error),
        "failures": [tuple(row) for row in failures],
    }


@pytest.mark.parametrize("batch_size", [1, 7, 500])
def test_per_event_projections_build_identical_read_models_with_and_without_the_pipeline(
    store: EventStore, batch_size: int
) -> None:
    positions = _append(store, ["Tick"] * 120)
    results = {}
    for make in (Counting, Rows):
        plain = _run(store, make(), batch_size=batch_size, pipeline=False)
        projection = make()
        results[projection.table] = pipelined = _run(store, projection, batch_size=batch_size, pipeline=True)
        assert pipelined == plain
        # A batch of one event (all of them at batch_size 1, the last one of 120 at 7) is not pipelined.
        assert projection.modes == ({False} if batch_size == 1 else {True, batch_size == 500})
        assert pipelined["processed"] == 120 and pipelined["position"][1] == positions[-1]
    assert results["pl_counts"]["rows"] == [(f"s-{stream}", 24) for stream in range(5)]
    rows = results["pl_rows"]["rows"]
    assert [row[0] for row in rows] == positions
    # Each row saw exactly the rows of its stream written before it, in this batch or earlier ones.
    for index, row in enumerate(rows):
        earlier = positions[index % 5 : index : 5]
        assert (row[3], row[4]) == (len(earlier), ",".join(map(str, earlier)))


@pytest.mark.parametrize("policy", ["stop", "skip"])
@pytest.mark.parametrize("poison", ["Bad", "Broken"])  # a database error (reported late) and a Python one
@pytest.mark.parametrize("batch_size", [7, 500])
def test_poison_events_behave_the_same_with_and_without_the_pipeline(
    store: EventStore, policy: str, poison: str, batch_size: int
) -> None:
    types = ["Tick"] * 30 + [poison] + ["Tick"] * 12 + [poison] + ["Tick"] * 20
    positions = _append(store, types)
    plain = _run(store, Rows(on_error=policy), batch_size=batch_size, pipeline=False)
    projection = Rows(on_error=policy)
    pipelined = _run(store, projection, batch_size=batch_size, pipeline=True)
    assert pipelined == plain
    assert True in projection.modes

    first_poison = positions[30]
    applied = [row[0] for row in pipelined["rows"]]
    if policy == "stop":
        assert applied == positions[:30]  # the events before the poison one are committed
        assert pipelined["failed"][:2] == (True, first_poison)
        assert [(f[0], f[3]) for f in pipelined["failures"]] == [(first_poison, "failed")]
    else:
        assert applied == [p for p, t in zip(positions, types, strict=True) if t == "Tick"]
        assert [(f[0], f[3]) for f in pipelined["failures"]] == [(first_poison, "skipped"), (positions[43], "skipped")]
    expected_error = "CheckViolation" if poison == "Bad" else "ValueError: cannot apply Broken"
    assert all(expected_error in failure[5] for failure in pipelined["failures"])


def test_a_handler_sees_its_own_earlier_writes_of_the_same_pipelined_batch(store: EventStore, engine: Engine) -> None:
    seen: list[tuple[bool, int, list[int]]] = []

    class ReadsBack(Projection):
        name = "pl_reads_back"

        def setup(self, conn: Connection) -> None:
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS pl_read_back (n int NOT NULL)"))

        @handles("Tick")
        def write_then_read(self, event: RecordedEvent, conn: Connection) -> None:
            conn.execute(sa.text("INSERT INTO pl_read_back VALUES (:n)"), {"n": event.data["amount"]})
            total = conn.execute(sa.text("SELECT count(*) FROM pl_read_back")).scalar()
            values = conn.execute(sa.text("SELECT n FROM pl_read_back ORDER BY n")).scalars().fetchall()
            seen.append((_pipelined(conn), int(total or 0), list(values)))

    _append(store, ["Tick"] * 10)
    ProjectionRunner(store, [ReadsBack()], **FAST).run_until_caught_up()
    assert seen == [(True, n, list(range(n))) for n in range(1, 11)]


def test_a_connection_lost_mid_batch_is_a_connection_error_not_a_poison_event(
    store: EventStore, engine: Engine, start_runner: Callable[..., ProjectionRunner]
) -> None:
    killed: list[bool] = []

    class KillsItsConnection(Ledger):
        def apply(self, event: RecordedEvent, conn: Connection) -> bool:
            if not killed and event.data["amount"] == 20:
                assert _pipelined(conn)
                pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
                with engine.connect() as other:
                    killed.append(
                        bool(other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar())
                    )
            return super().apply(event, conn)

    positions = _append(store, ["Tick"] * 60)
    runner = start_runner([KillsItsConnection("pl_killed")], batch_size=500)
    runner.wait_until_processed(positions[-1], timeout=30)
    assert killed == [True]
    with engine.connect() as connection:
        assert ledger_positions(connection, "pl_killed") == positions  # redone after the reconnect, once
    assert admin.list_failures(store, "pl_killed") == []
    [status] = admin.projection_status(store, [Ledger("pl_killed")])
    assert status.failed_position is None and status.last_error is None


def test_a_handler_that_cannot_run_in_a_pipeline_is_applied_without_it(
    store: EventStore, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    class Copies(Projection):
        name = "pl_copies"

        def __init__(self) -> None:
            self.modes: list[bool] = []

        def setup(self, conn: Connection) -> None:
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS pl_copied (n int NOT NULL)"))

        @handles("Tick")
        def copied(self, event: RecordedEvent, conn: Connection) -> None:
            self.modes.append(_pipelined(conn))
            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            with driver.cursor().copy("COPY pl_copied (n) FROM STDIN") as copy:  # not allowed in pipeline mode
                copy.write_row((event.data["amount"],))

    _append(store, ["Tick"] * 20)
    projection = Copies()
    with caplog.at_level(logging.WARNING, logger="eventstore.runner.session"):
        ProjectionRunner(store, [projection], **{**FAST, "batch_size": 7}).run_until_caught_up()
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT n FROM pl_copied ORDER BY n")).scalars().all() == list(range(20))
    assert admin.list_failures(store, "pl_copies") == []
    assert projection.modes[0] is True and not any(projection.modes[1:])  # tried once, then off for the session
    assert next(r.getMessage() for r in caplog.records if "pipeline mode" in r.getMessage()).startswith(
        "projection pl_copies: per-event handlers failed in pipeline mode but not without it (NotSupportedError"
    )


@pytest.mark.parametrize(
    ("statement", "in_flight"),
    [
        ("INSERT INTO t VALUES (1)", True),
        ("  update t SET n = n + 1", True),
        ("\n\tDELETE FROM t", True),
        ("INSERT INTO t VALUES (1) RETURNING id", False),
        ("update t set n = 1 returning *", False),
        ("SELECT 1", False),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", False),
        ("/* c */ INSERT INTO t VALUES (1)", False),
        ("INSERTED", False),
        ("CREATE TABLE t (n int)", False),
        (b"INSERT INTO t VALUES (1)", False),
    ],
)
def test_only_writes_that_return_no_rows_are_left_in_flight(statement: str | bytes, in_flight: bool) -> None:
    assert pipelining.in_flight_safe(statement) is in_flight

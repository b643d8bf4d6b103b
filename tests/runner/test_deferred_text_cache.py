"""What deferred writes derive once per text string (eventstore/runner/deferred.py), and the inlined dispatch.

A handler that builds its ``sa.text(...)`` on every call gets a new object each
time; the runner recognises a plain one (bind parameters as ``sa.text`` makes
them) and sends a run of them as driver SQL compiled once per string. A text
with typed bind parameters or bound values must never share that path or an
``executemany`` with the plain text of the same string. Every test compares
the read model, failures and checkpoint with ``defer_writes=False`` and with
batches of one.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg
from sqlalchemy.engine import Connection

from eventstore import EventStore, Projection, RecordedEvent, handles
from eventstore.runner import deferred
from tests.runner.test_deferred_writes import append_each, driver_calls, run

_INSERT = "INSERT INTO cache_items VALUES (:id, :doc, :n)"


class Texts(Projection):
    """The same text string as a plain text, with a typed bind parameter, and with a bound value."""

    name = "deferred_text_cache"
    categories = ("t",)

    def setup(self, conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS cache_items (id bigint PRIMARY KEY, doc jsonb, n int)"))

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.text("DELETE FROM cache_items"))

    @handles("Plain")
    def plain(self, event: RecordedEvent, conn: Connection) -> None:
        doc = json.dumps({"plain": event.data["n"]})  # a str: sent as it is, PostgreSQL casts it to jsonb
        conn.execute(sa.text(_INSERT), {"id": event.data["n"], "doc": doc, "n": 1})

    @handles("Typed")
    def typed(self, event: RecordedEvent, conn: Connection) -> None:
        statement = sa.text(_INSERT).bindparams(sa.bindparam("doc", type_=sa.JSON))  # a dict: SQLAlchemy encodes it
        conn.execute(statement, {"id": event.data["n"], "doc": {"typed": event.data["n"]}, "n": 2})

    @handles("Valued")
    def valued(self, event: RecordedEvent, conn: Connection) -> None:
        statement = sa.text(_INSERT).bindparams(n=3)  # n bound in the statement, not passed
        conn.execute(statement, {"id": event.data["n"], "doc": "{}"})

    @handles("Percent")
    def percent(self, event: RecordedEvent, conn: Connection) -> None:
        # A literal % and a parameter used twice, in a text built per call.
        conn.execute(
            sa.text("UPDATE cache_items SET doc = jsonb_build_object('p', '100%' || :tag) WHERE id = :id OR id = :id"),
            {"tag": event.type, "id": event.data["n"], "unused": "ignored"},
        )

    @handles("Missing")
    def missing(self, event: RecordedEvent, conn: Connection) -> None:
        conn.execute(sa.text(_INSERT), {"id": event.data["n"], "doc": "{}"})  # no :n: a poison event


def _same_everywhere(store: EventStore, projection: Projection) -> tuple[Any, ...]:
    tables = ("cache_items",)
    deferred_run = run(store, projection, tables=tables)
    assert deferred_run == run(store, projection, defer_writes=False, tables=tables)
    assert deferred_run == run(store, projection, batch_size=1, tables=tables)
    return deferred_run


def test_same_text_with_typed_or_valued_bind_parameters_is_never_shared_with_the_plain_one(
    store: EventStore,
) -> None:
    kinds = ["Plain", "Typed", "Plain", "Valued", "Typed", "Typed", "Plain", "Plain", "Valued", "Plain"]
    events = [(kind, {"n": n}) for n, kind in enumerate(kinds)] + [("Plain", {"n": n}) for n in range(10, 40)]
    append_each(store, events)
    with driver_calls() as calls:
        rows, failures, _ = run(store, Texts(), tables=("cache_items",))
    assert failures == []
    by_id = {item: (doc, n) for item, doc, n in rows["cache_items"]}
    assert by_id[0] == ({"plain": 0}, 1) and by_id[1] == ({"typed": 1}, 2) and by_id[3] == ({}, 3)
    assert by_id[4] == ({"typed": 4}, 2) and by_id[5] == ({"typed": 5}, 2) and by_id[8] == ({}, 3)
    assert len(by_id) == 40
    many = [count for sql, count, executemany in calls if executemany and "cache_items" in sql]
    assert many == [2, 31]  # the plain texts in a row, as one executemany each; the others one by one
    assert _same_everywhere(store, Texts())[0] == rows


def test_a_text_built_per_call_with_a_percent_sign_and_a_repeated_parameter(store: EventStore) -> None:
    append_each(store, [("Plain", {"n": n}) for n in range(20)] + [("Percent", {"n": n}) for n in range(20)])
    with driver_calls() as calls:
        rows, failures, _ = _same_everywhere(store, Texts())
    assert failures == []
    assert sorted(doc["p"] for _, doc, _ in rows["cache_items"]) == ["100%Percent"] * 20
    assert any(executemany and count == 20 and "100%%" in sql for sql, count, executemany in calls)


def test_a_missing_parameter_is_the_same_poison_event_as_without_deferral(store: EventStore) -> None:
    events = [("Plain", {"n": n}) for n in range(10)] + [("Missing", {"n": 10})] + [("Plain", {"n": 11})]
    positions = append_each(store, events)
    rows, failures, checkpoint = _same_everywhere(store, Texts())
    assert [(position, status) for position, status, _, _ in failures] == [(positions[10], "failed")]
    assert "A value is required for bind parameter 'n'" in failures[0][2]
    assert checkpoint == positions[9] and len(rows["cache_items"]) == 10


def test_the_compiled_text_cache_is_bounded_and_skips_positional_dialects() -> None:
    dialect = pg_psycopg.dialect()
    for number in range(deferred._COMPILED_TEXTS + 50):
        assert deferred._driver_sql(f"UPDATE t SET n = :n WHERE id = {number}", dialect) == (
            f"UPDATE t SET n = %(n)s WHERE id = {number}",
            ("n",),
        )
    assert len(deferred._compiled) == deferred._COMPILED_TEXTS
    positional = pg_psycopg.dialect(paramstyle="format")
    assert positional.positional
    assert deferred._driver_sql("UPDATE t SET n = :n", positional) is None


class Ledger(Texts):
    """``apply`` overridden to see every event (those without a handler too): the runner calls it per event."""

    name = "deferred_text_cache_ledger"

    def apply(self, event: RecordedEvent, conn: Connection) -> bool:
        if event.type == "Unhandled":
            conn.execute(sa.text(_INSERT), {"id": event.data["n"], "doc": "{}", "n": 9})
            return True
        return super().apply(event, conn)


class Rerouted(Texts):
    """``handler_for`` overridden: every ``Unhandled`` event goes to the plain handler."""

    name = "deferred_text_cache_rerouted"

    def handler_for(self, event_type: str) -> Any:
        return super().handler_for("Plain" if event_type == "Unhandled" else event_type)


def test_overridden_apply_and_handler_for_are_still_called(store: EventStore) -> None:
    append_each(store, [("Plain", {"n": n}) for n in range(5)] + [("Unhandled", {"n": n}) for n in range(5, 10)])
    rows = _same_everywhere(store, Ledger())[0]["cache_items"]
    assert sorted(n for _, _, n in rows) == [1] * 5 + [9] * 5
    rows = _same_everywhere(store, Rerouted())[0]["cache_items"]
    assert sorted(n for _, _, n in rows) == [1] * 10

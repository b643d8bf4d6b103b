"""SQL injection through every user-supplied name is stored and handled as plain data.

Stream ids, event types, categories (read filters), data keys and projection
names travel as bound parameters or quoted identifiers; none of them is ever
pasted into SQL text. Each test checks that the payload round-trips verbatim
and that the schema is intact afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore import EventStore, NewEvent
from eventstore.types import category_of

PAYLOADS = [
    "x'); DROP TABLE events; --",
    'x"; DROP TABLE events; --',
    "x' OR '1'='1",
    "x$$; DROP TABLE events; $$",
    "x'::text); SELECT pg_sleep(10); --",
    "x\\'; TRUNCATE events; --",
    "x%s%(name)s:name{}",
    "x; NOTIFY eventstore_events_v1, 'boom'",
]


def _schema_intact(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        tables = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename IN ('events', 'projection_checkpoints', 'projection_failures')"
            )
        ).scalar_one()
        triggers = connection.execute(
            sa.text("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'events'::regclass AND NOT tgisinternal")
        ).scalar_one()
        events = connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    return {"tables": tables, "triggers": triggers, "events": events}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_stream_ids_types_and_categories_are_data(store: EventStore, payload: str) -> None:
    stream_id = f"{payload}-1"
    category = category_of(stream_id)  # the text before the first '-': part of the payload
    event = NewEvent(payload, {payload: payload}, metadata={"note": payload})
    result = store.append(stream_id, [event])

    (stored,) = store.read_stream(stream_id)
    assert (stored.stream_id, stored.type, stored.category) == (stream_id, payload, category)
    assert stored.data == {payload: payload} and stored.metadata == {"note": payload}
    assert [e.event_id for e in store.read_all(categories=[category])] == [event.event_id]
    assert [e.event_id for e in store.read_all(event_types=[payload])] == [event.event_id]
    assert list(store.read_all(categories=[category + "'"])) == []
    assert store.stream_version(stream_id) == 1 == result.stream_version
    assert _schema_intact(store.engine) == {"tables": 3, "triggers": 3, "events": 1}


def test_cli_passes_injection_as_data(database_url: str, engine: Engine) -> None:
    from typer.testing import CliRunner

    from eventstore.cli import app

    runner = CliRunner()
    payload = PAYLOADS[0]
    appended = runner.invoke(app, ["--url", database_url, "append", f"{payload}-1", payload, "-d", '{"k": 1}'])
    assert appended.exit_code == 0, appended.output
    shown = runner.invoke(
        app, ["--url", database_url, "log", "--category", category_of(payload), "--type", payload, "--json"]
    )
    assert shown.exit_code == 0, shown.output
    assert payload in shown.stdout
    assert _schema_intact(engine) == {"tables": 3, "triggers": 3, "events": 1}


@pytest.mark.parametrize("payload", PAYLOADS[:4])
def test_projection_names_are_data(store: EventStore, payload: str) -> None:
    import projections
    from eventstore import ProjectionRunner
    from eventstore.admin import projection_status

    store.append("order-1", [NewEvent("Anything", {})])
    ledger = projections.Ledger(name=payload)
    assert ProjectionRunner(store, [ledger]).run_until_caught_up(timeout=30) == 1
    (status,) = projection_status(store, [ledger])
    assert (status.name, status.position) == (payload, store.head_position())
    with store.engine.connect() as connection:
        names = connection.execute(sa.text("SELECT projection_name FROM projection_checkpoints")).scalars().all()
        ledger_rows = connection.execute(
            sa.text("SELECT count(*) FROM projection_ledger WHERE projection_name = :name"), {"name": payload}
        ).scalar_one()
    assert names == [payload] and ledger_rows == 1
    assert _schema_intact(store.engine) == {"tables": 3, "triggers": 3, "events": 1}

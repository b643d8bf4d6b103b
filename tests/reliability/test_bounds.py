"""Resource bounds: reads stream in batches of ``read_batch_size``; appends are capped per call and per event."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore import EventStore, NewEvent
from eventstore.errors import InvalidEvent


def _row_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows fetched per read of events, recorded as the store's psycopg cursors fetch them (a spy, not a mock)."""
    counts: list[int] = []
    fetchall = psycopg.Cursor.fetchall

    def spy(cursor: psycopg.Cursor[Any]) -> list[Any]:
        rows = fetchall(cursor)
        columns = [column.name for column in cursor.description or ()]
        if "recorded_at" in columns and "event_type" in columns:  # a read of events
            counts.append(len(rows))
        return rows

    monkeypatch.setattr(psycopg.Cursor, "fetchall", spy)
    return counts


def test_read_all_fetches_lazily_in_bounded_batches(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    store = EventStore(engine, read_batch_size=7)
    store.append("order-1", [NewEvent("T", {"i": i}) for i in range(30)])
    counts = _row_counts(monkeypatch)

    events = store.read_all()
    first = [next(events) for _ in range(3)]
    assert [event.data["i"] for event in first] == [0, 1, 2]
    assert counts == [7]  # one batch fetched so far, not the whole table

    rest = list(events)
    assert len(first) + len(rest) == 30
    assert max(counts) <= 7 and sum(counts) == 30


def test_one_append_is_bounded_in_events_and_bytes(engine: Engine) -> None:
    store = EventStore(engine, max_append_events=5, max_event_bytes=100)
    with pytest.raises(InvalidEvent, match="max_append_events=5"):
        store.append("order-1", [NewEvent("T", {}) for _ in range(6)])
    with pytest.raises(InvalidEvent, match=r"events\[1\]: .*max_event_bytes=100"):
        store.append("order-1", [NewEvent("T", {}), NewEvent("T", {"s": "x" * 100})])
    assert store.append("order-1", [NewEvent("T", {}) for _ in range(5)]).stream_version == 5
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 5

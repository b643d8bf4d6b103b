"""Regression: read_all must sort by the xid8 order key, not by its text form.

The SELECT list renders ``transaction_order::text AS transaction_order``; an
unqualified ``ORDER BY transaction_order`` would sort by that text alias, so
once transaction ids crossed a power of ten ('100' < '99') readers skipped
every event with the shorter key. Found by ``eventstore demo``'s verification.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from eventstore import EventStore


def test_read_all_orders_keys_numerically_across_a_power_of_ten(store: EventStore) -> None:
    insert = sa.text(
        "INSERT INTO events (transaction_order, event_id, stream_id, stream_version, event_type, data, metadata) "
        "VALUES (CAST(:order AS xid8), :event_id, :stream_id, 1, 'Happened', '{}', '{}')"
    )
    with store.engine.begin() as connection:
        for number, order in enumerate((8, 9, 10, 11, 98, 99, 100, 101)):
            connection.execute(insert, {"order": str(order), "event_id": uuid.uuid4(), "stream_id": f"s-{number}"})
    store.read_batch_size = 2  # the cursor of every later batch depends on the sort
    events = list(store.read_all())
    assert [event.transaction_order for event in events] == [8, 9, 10, 11, 98, 99, 100, 101]
    assert [event.stream_id for event in events] == [f"s-{number}" for number in range(8)]

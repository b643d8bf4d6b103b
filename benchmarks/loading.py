"""Bulk-load events straight into the events table (never through append: that is what we measure elsewhere).

Each chunk is one ``INSERT ... SELECT FROM generate_series`` in its own
transaction, so its events share that transaction's id as their
``transaction_order`` (the gap rule's order key) and come in position order;
streams hold ``events_per_stream`` events with versions 1..n.
"""

from __future__ import annotations

import psycopg

__all__ = ["load_events"]

_INSERT = """
INSERT INTO events (transaction_order, event_id, stream_id, stream_version, event_type, data, metadata)
SELECT pg_current_xact_id(), gen_random_uuid(), %(category)s || '-' || (g / %(per_stream)s),
       (g %% %(per_stream)s) + 1, 'BenchEvent',
       jsonb_build_object('amount', g %% 10000, 'currency', 'EUR', 'customer', 'customer-' || (g %% 1000),
                          'note', 'a typical small event of about one hundred and fifty bytes of JSON'),
       '{}'::jsonb
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
ORDER BY g
"""


def load_events(
    libpq_url: str, count: int, *, category: str = "bench", events_per_stream: int = 10, chunk: int = 100_000
) -> None:
    """Append ``count`` events to new streams ``<category>-<n>``, ``chunk`` events per transaction."""
    with psycopg.connect(libpq_url) as connection:
        for first in range(0, count, chunk):
            last = min(count, first + chunk) - 1
            connection.execute(
                _INSERT, {"category": category, "per_stream": events_per_stream, "first": first, "last": last}
            )
            connection.commit()
    with psycopg.connect(libpq_url, autocommit=True) as connection:
        connection.execute("VACUUM (ANALYZE) events")

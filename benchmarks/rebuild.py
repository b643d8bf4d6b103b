"""Measurement 4: rebuild of the demo projections (``projections.ALL``) over a loaded order store.

The store is filled without going through append: the demo workload
(``projections.orders.workload``) writes a small template of realistic order
life cycles, which SQL then copies (new order ids and stream ids, customers
spread out) until the store holds the wanted number of events. Each projection
is rebuilt with :func:`eventstore.admin.rebuild` in a fresh worker process;
the raw keyset read of the same events is the baseline.
"""

from __future__ import annotations

import logging

import psycopg

from benchmarks.catchup import run_worker
from benchmarks.plan import Plan
from benchmarks.report import Results
from benchmarks.server import BenchServer

__all__ = ["load_orders", "measure_rebuild"]

logger = logging.getLogger(__name__)

SECTION = "Rebuild of the demo projections (events/s; peak RSS of the worker process)"
_DATABASE = "bench_rebuild"
_TEMPLATE_ORDERS = 400
_COPY = """
INSERT INTO events (transaction_order, event_id, stream_id, stream_version, event_type, data, metadata)
SELECT pg_current_xact_id(), gen_random_uuid(), t.stream_id || 'c' || g, t.stream_version, t.event_type,
       CASE WHEN t.data ? 'customer_id'
            THEN jsonb_set(t.data, '{customer_id}', to_jsonb((t.data->>'customer_id') || '-' || (g %% 97)))
            ELSE t.data END
       || jsonb_build_object('order_id', (t.data->>'order_id') || 'c' || g),
       t.metadata
FROM bench_order_template t, generate_series(%(first)s::int, %(last)s::int) AS g
ORDER BY g, t.transaction_order, t.global_position
"""


def load_orders(server: BenchServer, count: int) -> int:
    """Fill the rebuild database with about ``count`` order events; returns how many it holds."""
    from eventstore import EventStore
    from projections.orders import workload

    server.create_database(_DATABASE)
    store = EventStore(server.url(_DATABASE))
    template = workload(store, _TEMPLATE_ORDERS, seed=5, customers=200, prefix="t")
    store.engine.dispose()
    copies = max(0, count // template - 1)
    with psycopg.connect(server.libpq_url(_DATABASE)) as connection:
        connection.execute(
            "CREATE TABLE bench_order_template AS SELECT * FROM events ORDER BY transaction_order, global_position"
        )
        per_chunk = max(1, 100_000 // template)
        for first in range(1, copies + 1, per_chunk):
            connection.execute(_COPY, {"first": first, "last": min(copies, first + per_chunk - 1)})
            connection.commit()
        connection.execute("DROP TABLE bench_order_template")
        connection.commit()
        row = connection.execute("SELECT count(*) FROM events").fetchone()
    with psycopg.connect(server.libpq_url(_DATABASE), autocommit=True) as connection:
        connection.execute("VACUUM (ANALYZE) events")
    assert row is not None
    return int(row[0])


def measure_rebuild(server: BenchServer, results: Results, plan: Plan) -> None:
    """Rebuild each demo projection (fresh process each), next to a raw read of the same events."""
    import projections

    total = load_orders(server, plan.rebuild_events)
    logger.info("rebuild: %d order events loaded", total)
    names = ["raw keyset read + JSON decode", *(projection.name for projection in projections.ALL)]
    for round_number in range(plan.rebuild_repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            if name == names[0]:
                job = {"kind": "raw_read", "libpq_url": server.libpq_url(_DATABASE), "batch": 500}
            else:
                job = {"kind": "rebuild", "url": server.url(_DATABASE), "projection": name}
            answer = run_worker(job)
            if answer["events"] != total:
                raise RuntimeError(f"rebuild {name}: consumed {answer['events']} events, expected {total}")
            rate = answer["events"] / answer["seconds"]
            logger.info("rebuild %s: %.0f events/s, %.0f MB", name, rate, answer["max_rss_mb"])
            results.add(
                SECTION,
                f"{total:,} order events",
                name,
                rate,
                unit="ev/s",
                compare_to=() if name == names[0] else (names[0],),
                extra={"seconds": answer["seconds"], "peak RSS MB": answer["max_rss_mb"]},
            )

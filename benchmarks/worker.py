"""One catch-up or rebuild job in its own process, so its peak RSS is its own.

``python -m benchmarks.worker '<json job>'`` prints one JSON line:
``{"events": n, "seconds": s, "max_rss_mb": m}``. The clock starts after the
imports, when the job begins, and stops when it has processed every event.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

__all__ = ["run_job"]


def _raw_read(job: dict[str, Any]) -> int:
    """Keyset reads of the whole table in the global order, with psycopg decoding the JSON: the read limit."""
    import psycopg

    query = (
        # The cursor's order key travels as text; ORDER BY must name the xid8 column, not that text.
        "SELECT global_position, transaction_order::text AS order_text, event_id, stream_id, stream_version, "
        "event_type, data, metadata, recorded_at FROM events "
        "WHERE (transaction_order, global_position) > (%s::xid8, %s) "
        "AND transaction_order < pg_snapshot_xmin(pg_current_snapshot()) "
        "ORDER BY transaction_order, global_position LIMIT %s"
    )
    count, order, position = 0, "0", 0
    with psycopg.connect(job["libpq_url"], autocommit=True) as connection:
        while True:
            rows = connection.execute(query, (order, position, job["batch"]), prepare=True).fetchall()
            for row in rows:
                count += 1 if isinstance(row[6], dict) else 0
            if len(rows) < job["batch"]:
                return count
            order, position = rows[-1][1], rows[-1][0]


def _projection(job: dict[str, Any]) -> int:
    """eventstore's ProjectionRunner, run until caught up with the head."""
    from benchmarks.bench_projections import (
        CountBatchProjection,
        CountProjection,
        NoopProjection,
        RowBatchProjection,
        RowPerEventProjection,
    )
    from eventstore import EventStore, ProjectionRunner

    kinds = {
        "noop": NoopProjection,
        "count": CountProjection,
        "rows": RowPerEventProjection,
        "count_batch": CountBatchProjection,
        "rows_batch": RowBatchProjection,
    }
    projection = kinds[job["projection"]]()
    store = EventStore(job["url"])
    delivered = [0]

    def count_batch(name: str, events: list[Any]) -> None:
        delivered[0] += len(events)

    ProjectionRunner(store, [projection], on_batch=count_batch, **job.get("settings", {})).run_until_caught_up()
    if job["projection"] == "noop":
        return delivered[0]
    table = {"count": "SELECT n FROM bench_count", "rows": "SELECT count(*) FROM bench_rows"}[
        job["projection"].removesuffix("_batch")
    ]
    import sqlalchemy as sa

    with store.engine.connect() as connection:
        return int(connection.execute(sa.text(table)).scalar_one())


def _eventsourcing(job: dict[str, Any]) -> int:
    """The eventsourcing library's ProjectionRunner, until its tracking record reaches the last notification."""
    from eventsourcing.projection import ProjectionRunner

    from benchmarks.baseline_eventsourcing import BenchApplication, CountingProjection, CountingView

    with ProjectionRunner(
        application_class=BenchApplication,
        projection_class=CountingProjection,
        view_class=CountingView,
        env=job["env"],
    ) as runner:
        runner.wait(job["last_notification_id"], timeout=job.get("timeout", 3600.0))
        return runner.projection.view.count()


def _rebuild(job: dict[str, Any]) -> int:
    """eventstore.admin.rebuild of one demo projection (from projections.ALL, by name)."""
    import projections
    from eventstore import EventStore, admin

    (projection,) = [candidate for candidate in projections.ALL if candidate.name == job["projection"]]
    return admin.rebuild(EventStore(job["url"]), projection)


_JOBS = {"raw_read": _raw_read, "projection": _projection, "eventsourcing": _eventsourcing, "rebuild": _rebuild}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    began = time.perf_counter()
    events = _JOBS[job["kind"]](job)
    seconds = time.perf_counter() - began
    return {"events": events, "seconds": seconds, "max_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB.

    Linux's ``VmHWM`` of this process image; ``ru_maxrss`` would not do, since Linux carries it over
    ``execve`` from the parent that forked us.
    """
    try:
        for line in open("/proc/self/status").read().splitlines():  # noqa: SIM115
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


if __name__ == "__main__":
    print(json.dumps(run_job(json.loads(sys.argv[1]))))

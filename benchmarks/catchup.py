"""Measurement 3: catch-up of a projection over a loaded store, next to a raw keyset read and the eventsourcing library.

Every job runs in a fresh process (``benchmarks.worker``) so that the peak RSS
reported is the worker's own. Before each eventstore run the projection's
checkpoint and read model are dropped, so each run starts from the first event.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from eventsourcing.postgres import PostgresAggregateRecorder

from benchmarks.baseline_eventsourcing import BenchApplication, environment, save_order
from benchmarks.loading import load_events
from benchmarks.plan import Plan
from benchmarks.report import Results
from benchmarks.server import BenchServer
from benchmarks.writers import PAYLOAD

__all__ = ["measure_catchup", "run_worker"]

logger = logging.getLogger(__name__)

SECTION = "Catch-up (events/s; peak RSS of the worker process)"
_DATABASE = "bench_catchup"
_ES_DATABASE = "bench_es_catchup"
_READ_BATCH = 500  # EventStore's default read_batch_size


def runner_available() -> bool:
    """True once eventstore exports ProjectionRunner (built in parallel with these benchmarks)."""
    try:
        from eventstore import ProjectionRunner  # noqa: F401
    except ImportError:
        return False
    return True


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a fresh Python process; its JSON answer (events, seconds, max_rss_mb)."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark worker {job['kind']} failed:\n{completed.stderr[-3000:]}")
    answer: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return answer


def _prepare_eventsourcing(server: BenchServer, count: int) -> tuple[dict[str, str], int]:
    """The library's own tables holding ``count`` events: a template saved through the library, copied by SQL."""
    server.create_database(_ES_DATABASE, migrated=False)
    env = environment("127.0.0.1", server.local.port, _ES_DATABASE)
    application = BenchApplication(env=env)
    template_streams = 10
    for _ in range(template_streams):
        save_order(application, 10, PAYLOAD)
    recorder = application.recorder
    assert isinstance(recorder, PostgresAggregateRecorder), type(recorder)
    table = recorder.events_table_name
    application.close()
    copies = max(1, count // (template_streams * 10))
    with psycopg.connect(server.libpq_url(_ES_DATABASE)) as connection:
        # A copy of each template aggregate gets a new originator id; states do not hold it.
        connection.execute(
            psycopg.sql.SQL(
                "INSERT INTO {table} (originator_id, originator_version, topic, state) "
                "SELECT md5(t.originator_id::text || g)::uuid, t.originator_version, t.topic, t.state "
                "FROM {table} t, generate_series(1, %s) g ORDER BY g, t.originator_id, t.originator_version"
            ).format(table=psycopg.sql.Identifier(table)),
            (copies - 1,),
        )
        connection.commit()
        row = connection.execute(
            psycopg.sql.SQL("SELECT max(notification_id), count(*) FROM {}").format(psycopg.sql.Identifier(table))
        ).fetchone()
    assert row is not None
    with psycopg.connect(server.libpq_url(_ES_DATABASE), autocommit=True) as connection:
        connection.execute(psycopg.sql.SQL("VACUUM (ANALYZE) {}").format(psycopg.sql.Identifier(table)))
    return env, int(row[0])


def _forget_projections(server: BenchServer, database: str) -> None:
    """Drop the read models and checkpoints of the catch-up projections: the next run starts from scratch."""
    with psycopg.connect(server.libpq_url(database), autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS bench_count, bench_rows")
        connection.execute("DELETE FROM projection_checkpoints WHERE projection_name LIKE 'bench%%'")


def _forget_eventsourcing(server: BenchServer, events_table: str) -> None:
    with psycopg.connect(server.libpq_url(_ES_DATABASE), autocommit=True) as connection:
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> %s", (events_table,)
            )
        ]
        for name in tables:
            connection.execute(psycopg.sql.SQL("DROP TABLE {}").format(psycopg.sql.Identifier(name)))


def _projection_job(database_url: str, projection: str, **settings: Any) -> dict[str, Any]:
    job: dict[str, Any] = {"kind": "projection", "url": database_url, "projection": projection}
    if settings:
        job["settings"] = settings
    return job


_RAW = "raw keyset read + JSON decode"
_UNDEFERRED = {
    "eventstore (a) count in one row, per-event handler, defer_writes=False": ("count", {"defer_writes": False}),
    "eventstore (b) row per event, per-event handler, defer_writes=False": ("rows", {"defer_writes": False}),
}


def measure_catchup(server: BenchServer, results: Results, plan: Plan) -> None:
    """(a) count, (b) row per event, raw keyset read and the eventsourcing library, interleaved.

    The per-event handlers run twice: as the runner runs them by default (their writes deferred and sent
    many at a time, :mod:`eventstore.runner.deferred`) and with ``defer_writes=False`` (one round trip each).
    One round trip per event is slow (about 3,000 events/s), so with ``defer_writes=False`` they run over
    ``plan.undeferred_catchup_events`` of their own, next to a raw read and the deferred runs of the same
    size (a case of its own) when that is fewer than ``plan.catchup_events``.
    """
    server.create_database(_DATABASE)
    logger.info("loading %d events", plan.catchup_events)
    load_events(server.libpq_url(_DATABASE), plan.catchup_events)
    es_count = min(plan.catchup_events, plan.eventsourcing_catchup_events)
    logger.info("loading %d events for the eventsourcing library", es_count)
    es_env, last_notification = _prepare_eventsourcing(server, es_count)
    url = server.url(_DATABASE)
    jobs: dict[str, dict[str, Any]] = {
        _RAW: {"kind": "raw_read", "libpq_url": server.libpq_url(_DATABASE), "batch": _READ_BATCH},
        "eventstore (0) no-op handler": _projection_job(url, "noop"),
        "eventstore (a) count in one row, apply_batch": _projection_job(url, "count_batch"),
        "eventstore (a) count in one row, per-event handler": _projection_job(url, "count"),
        "eventstore (b) row per event, apply_batch": _projection_job(url, "rows_batch"),
        "eventstore (b) row per event, per-event handler": _projection_job(url, "rows"),
        "eventsourcing library (count in one row)": {
            "kind": "eventsourcing",
            "env": es_env,
            "last_notification_id": last_notification,
        },
    }
    small = plan.undeferred_catchup_events < plan.catchup_events
    if not small:
        jobs.update({name: _projection_job(url, kind, **settings) for name, (kind, settings) in _UNDEFERRED.items()})
    if not runner_available():
        results.notes.append("catch-up: eventstore.ProjectionRunner is not in this tree yet; eventstore rows skipped")
        jobs = {name: job for name, job in jobs.items() if job["kind"] != "projection"}
    _run_case(server, results, plan, "catch-up", _DATABASE, jobs, plan.catchup_events, last_notification)
    if es_count < plan.catchup_events:
        results.notes.append(
            f"catch-up: the eventsourcing library ran over {last_notification:,} events (not "
            f"{plan.catchup_events:,}) to keep the run short; its rate is per event, so the ratio stands"
        )
    if small and runner_available():
        results.notes.append(
            f"catch-up: with defer_writes=False the per-event handlers ran over {plan.undeferred_catchup_events:,} "
            "events of their own (one round trip per event is slow), next to a raw read and the default runs "
            "over the same events"
        )
    if small and runner_available():
        count = plan.undeferred_catchup_events
        database = f"{_DATABASE}_small"
        server.create_database(database)
        logger.info("loading %d events for the runs with defer_writes=False", count)
        load_events(server.libpq_url(database), count)
        url = server.url(database)
        small_jobs = {
            _RAW: {"kind": "raw_read", "libpq_url": server.libpq_url(database), "batch": _READ_BATCH},
            "eventstore (a) count in one row, per-event handler": _projection_job(url, "count"),
            "eventstore (b) row per event, per-event handler": _projection_job(url, "rows"),
        }
        small_jobs.update({name: _projection_job(url, kind, **opts) for name, (kind, opts) in _UNDEFERRED.items()})
        _run_case(server, results, plan, f"catch-up, {count:,} events", database, small_jobs, count, 0)


def _run_case(
    server: BenchServer,
    results: Results,
    plan: Plan,
    case: str,
    database: str,
    jobs: dict[str, dict[str, Any]],
    events: int,
    es_events: int,
) -> None:
    """Run ``jobs`` (contenders over ``events`` events of ``database``) for ``plan.catchup_repeats`` rounds."""
    names = list(jobs)
    for round_number in range(plan.catchup_repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            if jobs[name]["kind"] == "projection":
                _forget_projections(server, database)
            if jobs[name]["kind"] == "eventsourcing":
                _forget_eventsourcing(server, "benchapp_events")
            answer = run_worker(jobs[name])
            expected = es_events if jobs[name]["kind"] == "eventsourcing" else events
            if answer["events"] != expected:
                raise RuntimeError(f"{case} {name}: processed {answer['events']} events, expected {expected}")
            rate = answer["events"] / answer["seconds"]
            logger.info(
                "%s %s round %d: %.0f events/s, %.0f MB", case, name, round_number + 1, rate, answer["max_rss_mb"]
            )
            compare: tuple[str, ...] = ()
            if name.startswith("eventstore"):
                compare = (_RAW, "eventsourcing library (count in one row)")
            results.add(
                SECTION,
                case,
                name,
                rate,
                unit="ev/s",
                compare_to=compare,
                extra={"events": answer["events"], "peak RSS MB": answer["max_rss_mb"]},
            )

"""Measurement 1: append throughput, eventstore next to raw inserts and the eventsourcing library."""

from __future__ import annotations

import logging

from benchmarks.baseline_eventsourcing import BenchApplication, environment
from benchmarks.report import Results
from benchmarks.server import BenchServer
from benchmarks.writers import Targets, WriterPool

__all__ = ["CONTENDERS", "measure_append", "prepare_targets"]

logger = logging.getLogger(__name__)

SECTION = "Append throughput (events/s, all writers together)"
CONTENDERS = ("eventstore", "raw", "raw_global_lock", "raw_notify_in_commit", "eventstore_no_notify", "eventsourcing")
_COMPARE_BY_CONTENDER = {
    "eventstore": ("raw", "eventsourcing", "eventstore_no_notify"),
    # The gap technique not chosen (a writer lock for whole transactions), for the same ratio to raw.
    "raw_global_lock": ("raw",),
    # The wake-up design not chosen (NOTIFY inside the writing transaction, as a trigger does).
    "raw_notify_in_commit": ("raw",),
}


def prepare_targets(server: BenchServer) -> Targets:
    """One database per contender, each with the same events table (minus triggers where said)."""
    server.create_database("bench_eventstore")
    server.create_database("bench_no_notify")
    server.create_database("bench_raw")
    server.execute("bench_raw", "ALTER TABLE events DISABLE TRIGGER events_notify_v3")
    server.execute("bench_raw", "ALTER TABLE events DISABLE TRIGGER events_forbid_update_delete_v1")
    server.create_database("bench_raw_notify")  # the NOTIFY trigger on: it fires for raw inserts
    server.execute("bench_raw_notify", "ALTER TABLE events DISABLE TRIGGER events_forbid_update_delete_v1")
    server.create_database("bench_eventsourcing", migrated=False)
    url = server.local
    env = environment("127.0.0.1", url.port, "bench_eventsourcing")
    BenchApplication(env=env).close()  # creates the library's tables once, before writers race to
    return Targets(
        eventstore=server.url("bench_eventstore"),
        eventstore_no_notify=server.url("bench_no_notify"),
        raw=server.url("bench_raw"),
        raw_notify_in_commit=server.url("bench_raw_notify"),
        eventsourcing={**env, "CREATE_TABLE": "false"},
    )


def measure_append(
    pool: WriterPool,
    results: Results,
    *,
    writer_counts: tuple[int, ...],
    batch_sizes: tuple[int, ...],
    repeats: int,
    duration: float,
) -> None:
    """Every (writers, batch) case, every contender, ``repeats`` rounds; contender order rotates each round."""
    for round_number in range(repeats):
        for writers in writer_counts:
            for events in batch_sizes:
                case = f"{writers} writer{'s' if writers > 1 else ''}, {events} event{'s' if events > 1 else ''}/append"
                shift = round_number % len(CONTENDERS)
                for contender in CONTENDERS[shift:] + CONTENDERS[:shift]:
                    rate = pool.measure(writers, contender, events, duration)
                    logger.info("append %s %s round %d: %.0f events/s", case, contender, round_number + 1, rate)
                    results.add(
                        SECTION,
                        case,
                        contender,
                        rate,
                        unit="ev/s",
                        compare_to=_COMPARE_BY_CONTENDER.get(contender, ()),
                    )

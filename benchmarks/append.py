"""Measurement 1: append throughput, eventstore next to raw inserts and the eventsourcing library.

Two raw baselines: ``raw``, inserts into a copy of the real events table (its
indexes, generated column and checks; triggers off), and ``raw_minimal``,
inserts into a minimal table (:data:`benchmarks.writers.MINIMAL_TABLE`), the
absolute limit of storing an event in PostgreSQL. Each row also carries the
client's and the server's CPU time per append.
"""

from __future__ import annotations

import logging

from benchmarks.baseline_eventsourcing import BenchApplication, environment
from benchmarks.report import Results
from benchmarks.server import BenchServer
from benchmarks.writers import MINIMAL_TABLE, Sample, ServerCpu, Targets, WriterPool

__all__ = ["CONTENDERS", "cpu_columns", "create_minimal_database", "measure_append", "prepare_targets", "server_cpu"]

logger = logging.getLogger(__name__)

SECTION = "Append throughput (events/s, all writers together)"
CONTENDERS = (
    "eventstore",
    "raw",
    "raw_minimal",
    "raw_global_lock",
    "raw_notify_in_commit",
    "eventstore_no_notify",
    "eventsourcing",
)
_COMPARE_BY_CONTENDER = {
    "eventstore": ("raw", "raw_minimal", "eventsourcing", "eventstore_no_notify"),
    # What the real table's indexes, generated column and checks cost a plain insert.
    "raw": ("raw_minimal",),
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
    create_minimal_database(server, "bench_raw_minimal")
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
        raw_minimal=server.url("bench_raw_minimal"),
    )


def create_minimal_database(server: BenchServer, name: str) -> str:
    """A database holding only the minimal events table (no migrations)."""
    server.create_database(name, migrated=False)
    server.execute(name, MINIMAL_TABLE)
    return name


def server_cpu(server: BenchServer) -> ServerCpu | None:
    """The reader of this run's server CPU time, or None if its process id is unknown."""
    pid = server.local.postmaster_pid()
    return ServerCpu(pid) if pid is not None else None


def measure_append(
    pool: WriterPool,
    results: Results,
    *,
    writer_counts: tuple[int, ...],
    batch_sizes: tuple[int, ...],
    repeats: int,
    duration: float,
    server: ServerCpu | None = None,
) -> None:
    """Every (writers, batch) case, every contender, ``repeats`` rounds; contender order rotates each round.

    With ``server``, each sample also records the server's CPU time per append.
    """
    for round_number in range(repeats):
        for writers in writer_counts:
            for events in batch_sizes:
                case = f"{writers} writer{'s' if writers > 1 else ''}, {events} event{'s' if events > 1 else ''}/append"
                shift = round_number % len(CONTENDERS)
                for contender in CONTENDERS[shift:] + CONTENDERS[:shift]:
                    sample = pool.sample(writers, contender, events, duration, server=server)
                    rate = sample.events_per_second
                    logger.info("append %s %s round %d: %.0f events/s", case, contender, round_number + 1, rate)
                    results.add(
                        SECTION,
                        case,
                        contender,
                        rate,
                        unit="ev/s",
                        compare_to=_COMPARE_BY_CONTENDER.get(contender, ()),
                        extra=cpu_columns(sample),
                    )


def cpu_columns(sample: Sample) -> dict[str, float]:
    """The "other" columns of a sample: client and server CPU per append, in microseconds."""
    columns = {"client CPU us/append": sample.client_cpu_us}
    if sample.server_cpu_us is not None:
        columns["server CPU us/append"] = sample.server_cpu_us
    return columns

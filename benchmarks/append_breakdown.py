"""Where an append's time goes: the same appends against variants of the events table, each missing one part.

Issue 14 asks what each part of an append costs next to the absolute limit
(``raw_minimal``: one ``INSERT ... VALUES`` into a table with only the primary
key and the stream/version unique index). Every contender appends new streams
of 1 or 10 events, in its own freshly migrated database, rounds interleaved
with the order rotating (as in :mod:`benchmarks.append`):

- ``eventstore``: :meth:`EventStore.append` into the real table.
- ``no_<part>``: the same into a copy of the table without one part: each
  secondary index by name, the generated ``category`` column (and so its
  index), the CHECK constraints, the append-only triggers, the NOTIFY trigger.
- ``stripped``: every one of those parts removed at once.
- ``eventstore_no_notify``: ``EventStore(notify=False)``: no wake-up.
- ``eventstore_statement``: eventstore's validation and statement run by raw
  psycopg (no protocol, telemetry, append connections or wake-up).
- ``raw`` and ``raw_minimal``: the two raw baselines of the append measurement.

A part's cost is the time per append with it minus the time without it (medians
of the rounds): with 1 writer that is the append's latency in microseconds;
with 8 writers on 2 cores the throughput's, given as a share of eventstore's.
Each row also has the writers' CPU per append (``time.process_time()``) and the
server's (``/proc``). A last section times the client's parts in this process
(``time.process_time()`` around many calls): validation and JSON encoding,
telemetry, psycopg's dumping of the statement's parameters.

``python -m benchmarks --only append_breakdown`` runs it alone.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.append import cpu_columns, create_minimal_database, server_cpu
from benchmarks.plan import Plan
from benchmarks.report import Results
from benchmarks.server import BenchServer
from benchmarks.writers import PAYLOAD, Targets, WriterPool

__all__ = ["CONTENDERS", "VARIANTS", "measure_append_breakdown"]

logger = logging.getLogger(__name__)

# Not "Append ...": the quick-run test keys rows by a section's first word.
SECTION = "Breakdown of an append (events/s, all writers together; each variant misses one part)"
CLIENT_SECTION = "Client CPU of an append, by part (in-process, us per append)"

_CHECKS = (
    "ck_events_stream_id",
    "ck_events_stream_version",
    "ck_events_event_type",
    "ck_events_data",
    "ck_events_metadata",
)

VARIANTS: dict[str, tuple[str, ...]] = {
    "no_uq_event_id": ("ALTER TABLE events DROP CONSTRAINT uq_events_event_id",),
    "no_ix_order": ("DROP INDEX ix_events_order",),
    "no_ix_category": ("DROP INDEX ix_events_category_order",),
    "no_ix_event_type": ("DROP INDEX ix_events_event_type_order",),
    # Dropping the generated column drops its index too (ix_events_category_order).
    "no_category": ("ALTER TABLE events DROP COLUMN category",),
    "no_checks": tuple(f"ALTER TABLE events DROP CONSTRAINT {name}" for name in _CHECKS),
    "no_forbid_triggers": (
        "DROP TRIGGER events_forbid_update_delete_v1 ON events",
        "DROP TRIGGER events_forbid_truncate_v1 ON events",
    ),
    "no_notify_trigger": ("DROP TRIGGER events_notify_v3 ON events",),
}
"""The table variants, by contender name: the statements that remove one part from a migrated database."""
VARIANTS["stripped"] = tuple(
    statement for name, statements in VARIANTS.items() if name != "no_ix_category" for statement in statements
)

CONTENDERS = (
    "eventstore",
    *VARIANTS,
    "eventstore_no_notify",
    "eventstore_statement",
    "raw",
    "raw_minimal",
)

# (row label, contender with the part, contender without it): cost = time(with) - time(without).
_PARTS: tuple[tuple[str, str, str], ...] = (
    ("index uq_events_event_id (idempotent retries, reused ids refused)", "eventstore", "no_uq_event_id"),
    ("index ix_events_order (read_all, the fence, head)", "eventstore", "no_ix_order"),
    ("index ix_events_category_order (reads by category)", "eventstore", "no_ix_category"),
    ("index ix_events_event_type_order (reads by event type)", "eventstore", "no_ix_event_type"),
    ("generated column category, beyond its index", "no_ix_category", "no_category"),
    ("the 5 CHECK constraints", "eventstore", "no_checks"),
    ("append-only triggers (BEFORE UPDATE/DELETE, TRUNCATE)", "eventstore", "no_forbid_triggers"),
    ("NOTIFY trigger (fires per statement, silenced by eventstore.notify=off)", "eventstore", "no_notify_trigger"),
    ("wake-up after the commit (pg_notify on the same connection)", "eventstore", "eventstore_no_notify"),
    ("**all table parts above at once** (measured, not summed)", "eventstore", "stripped"),
    (
        "the store around its statement (protocol generator, telemetry, append connections)",
        "eventstore_no_notify",
        "eventstore_statement",
    ),
    (
        "eventstore's statement and validation vs the raw insert, same table (gap-rule look-up, expectation, "
        "RETURNING, the events as one JSON parameter; the triggers, measured above, subtracted)",
        "eventstore_statement",
        "raw",
    ),
    ("the real table vs the minimal one, raw inserts (its indexes, column and checks)", "raw", "raw_minimal"),
    ("**eventstore vs the absolute limit** (raw_minimal)", "eventstore", "raw_minimal"),
)


def _case(writers: int, events: int) -> str:
    return f"{writers} writer{'s' if writers > 1 else ''}, {events} event{'s' if events > 1 else ''}/append"


def prepare_breakdown_targets(server: BenchServer, contenders: tuple[str, ...] = CONTENDERS) -> Targets:
    """One fresh database per contender (all empty at the start, so index sizes match)."""
    databases = {
        "eventstore": "breakdown_eventstore",
        "eventstore_no_notify": "breakdown_no_notify",
        "eventstore_statement": "breakdown_statement",
        "raw": "breakdown_raw",
    }
    for contender, database in databases.items():
        if contender in contenders:
            server.create_database(database)
    if "raw" in contenders:
        server.execute("breakdown_raw", "ALTER TABLE events DISABLE TRIGGER events_notify_v3")
        server.execute("breakdown_raw", "ALTER TABLE events DISABLE TRIGGER events_forbid_update_delete_v1")
    if "raw_minimal" in contenders:
        create_minimal_database(server, "breakdown_raw_minimal")
    variants = {}
    for name, statements in VARIANTS.items():
        if name not in contenders:
            continue
        database = f"breakdown_{name}"
        server.create_database(database)
        for statement in statements:
            server.execute(database, statement)
        variants[name] = server.url(database)
    return Targets(
        eventstore=server.url("breakdown_eventstore"),
        eventstore_no_notify=server.url("breakdown_no_notify"),
        raw=server.url("breakdown_raw"),
        raw_notify_in_commit="",
        eventsourcing={},
        raw_minimal=server.url("breakdown_raw_minimal"),
        eventstore_statement=server.url("breakdown_statement"),
        variants=variants,
    )


def measure_append_breakdown(server: BenchServer, results: Results, plan: Plan) -> None:
    """The variants' appends (``plan.breakdown_cases``), the client's parts, and the derived cost table."""
    cases = plan.breakdown_cases
    contenders = tuple(name for name in CONTENDERS if name in (plan.breakdown_contenders or CONTENDERS))
    size = max(writers for writers, _ in cases)
    began = time.monotonic()
    pool = WriterPool(prepare_breakdown_targets(server, contenders), size)
    logger.info("breakdown: %d databases and %d writers in %.1f s", len(contenders), size, time.monotonic() - began)
    cpu = server_cpu(server)
    try:
        for contender in contenders:  # connect and warm up outside any measurement
            pool.start(size, contender, 1, 0.0, delay=0.0)
            pool.collect()
        logger.info("breakdown: connected after %.1f s", time.monotonic() - began)
        for round_number in range(plan.breakdown_repeats):
            for writers, events in cases:
                shift = round_number % len(contenders)
                for contender in contenders[shift:] + contenders[:shift]:
                    sample = pool.sample(writers, contender, events, plan.breakdown_seconds, server=cpu)
                    rate = sample.events_per_second
                    logger.info("breakdown %s %s round %d: %.0f events/s", _case(writers, events), contender,
                                round_number + 1, rate)  # fmt: skip
                    results.add(
                        SECTION,
                        _case(writers, events),
                        contender,
                        rate,
                        unit="ev/s",
                        compare_to=("eventstore",) if contender != "eventstore" else ("raw", "raw_minimal"),
                        extra=cpu_columns(sample),
                    )
    finally:
        pool.close()
    measure_client_parts(results, iterations=plan.breakdown_client_iterations, repeats=plan.breakdown_repeats)
    if "eventstore" in contenders:
        profile_client(server, results, appends=plan.breakdown_profile_appends)
    title = "What each part costs per append (us; with several writers: and its share of eventstore's time)"
    results.tables.append((title, cost_table(results)))
    title = "What each part costs in CPU per append (us, client + server; and its share of eventstore's CPU)"
    results.tables.append((title, cost_table(results, by="cpu")))
    results.tables.append(("CPU per append (us): the writers' (client) / the server's", cpu_table(results)))


def cost_table(results: Results, *, by: str = "time") -> str:
    """Each part's cost per append from the medians of one run.

    ``by="time"``: time per append (1e6 x events / events per second of all
    writers: with one writer the append's latency, with several the
    throughput's time); ``by="cpu"``: the client's plus the server's CPU time
    per append, less sensitive to load that drifts on a shared machine.
    """
    rows = {(row["case"], row["contender"]): row for row in _rows(results, SECTION)}
    cases = sorted({case for case, _ in rows}, key=_case_order)

    def per_append(contender: str, case: str) -> float | None:
        row = rows.get((case, contender))
        if row is None:
            return None
        if by == "cpu":
            server = row["extra"].get("server CPU us/append")
            if not server:
                return None
            return float(statistics.median(row["extra"]["client CPU us/append"]) + statistics.median(server))
        median = results.median(SECTION, case, contender)
        return None if not median else _events(case) / median * 1e6

    def cost(case: str, with_part: str, without_part: str) -> float | None:
        first, second = per_append(with_part, case), per_append(without_part, case)
        if first is None or second is None:
            return None
        if with_part == "eventstore_statement":  # its database has the triggers that raw's has disabled
            for trigger in ("no_forbid_triggers", "no_notify_trigger"):
                if (trigger_cost := cost(case, "eventstore", trigger)) is not None:
                    first -= trigger_cost
        return first - second

    def cell(case: str, value: float | None) -> str:
        full = per_append("eventstore", case)
        if value is None or not full:
            return ""
        return f"{value:.0f}" if _writers(case) == 1 and by == "time" else f"{value:.0f} ({value / full:.0%})"

    lines = ["| part (what it is for) | " + " | ".join(cases) + " |", "|---|" + "---|" * len(cases)]
    for label, with_part, without_part in _PARTS:
        cells = [cell(case, cost(case, with_part, without_part)) for case in cases]
        if any(cells):  # a row per part measured (--quick measures a few)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    totals = [f"{case}: {value:.0f}" for case in cases if (value := per_append("eventstore", case)) is not None]
    what = (
        "Time per append (us: 1e6 x events / events per second of all writers; with several writers that is "
        "throughput time, not latency)"
        if by == "time"
        else "CPU per append (us: the writers' and the server's together; shares are of eventstore's)"
    )
    lines += [
        "",
        f"{what} of eventstore: {'; '.join(totals)}. Negative or small figures are within the noise of the rounds "
        "(see the min-max of the rows above).",
    ]
    return "\n".join(lines)


def cpu_table(results: Results) -> str:
    """Client and server CPU per append of each contender, medians of the rounds."""
    rows = _rows(results, SECTION)
    cases = sorted({row["case"] for row in rows}, key=_case_order)
    lines = ["| contender | " + " | ".join(cases) + " |", "|---|" + "---|" * len(cases)]
    for contender in CONTENDERS:
        if not any(row["contender"] == contender for row in rows):
            continue
        cells = []
        for case in cases:
            row = next((row for row in rows if row["case"] == case and row["contender"] == contender), None)
            if row is None:
                cells.append("")
                continue
            client = statistics.median(row["extra"].get("client CPU us/append", [0.0]))
            server = row["extra"].get("server CPU us/append")
            cells.append(f"{client:.0f} / {statistics.median(server):.0f}" if server else f"{client:.0f} / -")
        lines.append(f"| {contender} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def profile_client(server: BenchServer, results: Results, *, appends: int) -> None:
    """Where eventstore's client CPU goes: cProfile (process time) of appends in this process, shares by part.

    The profiler slows call-heavy code most (psycopg's array dumping), so the
    shares guide; the microseconds come from the writers' CPU per append.
    """
    import cProfile
    import pstats

    from eventstore import NO_STREAM, EventStore, NewEvent

    shares: dict[str, dict[int, float]] = {}
    with EventStore(server.url("breakdown_eventstore")) as store:
        for events in (1, 10):
            count = max(10, appends // events)
            prefix = f"profile-{events}-{uuid.uuid4().hex[:8]}"
            for index in range(20):  # connect, prepare
                store.append(f"{prefix}-warm-{index}", [NewEvent("BenchEvent", PAYLOAD)], expected_version=NO_STREAM)
            profile = cProfile.Profile(time.process_time)
            profile.enable()
            for index in range(count):
                new_events = [NewEvent("BenchEvent", PAYLOAD) for _ in range(events)]
                store.append(f"{prefix}-{index}", new_events, expected_version=NO_STREAM)
            profile.disable()
            own: dict[str, float] = {}
            stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
            for (filename, _, function), (_, _, own_seconds, _, callers) in stats.items():
                part = _client_part_of(filename, function, callers)
                own[part] = own.get(part, 0.0) + own_seconds
            total = sum(own.values()) or 1.0
            for part, seconds in own.items():
                shares.setdefault(part, {})[events] = seconds / total
    lines = ["| part | 1 event/append | 10 events/append |", "|---|---|---|"]
    for part, by_size in sorted(shares.items(), key=lambda item: -item[1].get(1, 0.0)):
        lines.append(f"| {part} | {by_size.get(1, 0.0):.0%} | {by_size.get(10, 0.0):.0%} |")
    results.tables.append(
        ("Where eventstore's client CPU goes (cProfile of one writer, process time)", "\n".join(lines))
    )


_PROFILE_PARTS = (
    # (part, substrings of the file name of the function whose own time counts for it)
    (
        "telemetry (observe_append, the OpenTelemetry API's span)",
        ("opentelemetry", "tracing.py", "telemetry.py", "instruments.py"),
    ),
    ("validation and JSON encoding", ("validation.py", "/json/")),
    (
        "psycopg: dumping the parameters (the events as one JSON text)",
        ("/psycopg/types/", "_queries.py", "_adapters_map.py", "/psycopg/adapt.py"),
    ),
    ("psycopg: executing, waiting, fetching (client side)", ("/psycopg/",)),
    ("append connections and the wake-up (appender.py)", ("appender.py",)),
    (
        "the store: protocol generator, EventStore, error mapping",
        ("protocol.py", "event_store.py", "database.py", "poolers.py"),
    ),
    ("context managers (contextlib)", ("contextlib",)),
    ("the caller: NewEvent, uuid4", ("uuid", "types.py", "dataclasses", "append_breakdown.py")),
)


def _client_part_of(filename: str, function: str, callers: dict[tuple[str, int, str], object]) -> str:
    """The part a profiled function belongs to; built-ins count for the part of their (first) caller."""
    if filename == "~" and callers:
        caller_file, _, caller_function = next(iter(callers))
        return _client_part_of(caller_file, caller_function, {})
    for part, markers in _PROFILE_PARTS:
        if any(marker in filename for marker in markers):
            return part
    return "other"


def measure_client_parts(results: Results, *, iterations: int, repeats: int) -> None:
    """Time the client's parts of a 1- and a 10-event append in this process (CPU time, many calls each)."""
    for round_number in range(repeats):
        for events in (1, 10):
            case = f"{events} event{'s' if events > 1 else ''}/append"
            for name, call in _client_parts(events).items():
                for _ in range(max(10, iterations // 20)):  # warm caches
                    call()
                began = time.process_time()
                for _ in range(iterations):
                    call()
                microseconds = (time.process_time() - began) / iterations * 1e6
                logger.info("client part %s %s round %d: %.1f us", case, name, round_number + 1, microseconds)
                results.add(CLIENT_SECTION, case, name, microseconds, unit="us")


def _client_parts(events: int) -> dict[str, Callable[[], object]]:
    """The client's parts of one append of ``events`` events, each a call to time."""
    from psycopg.adapt import PyFormat, Transformer

    from eventstore import NO_STREAM, NewEvent
    from eventstore.store.telemetry import observe_append
    from eventstore.store.validation import prepare_append
    from eventstore.types import AppendResult

    new_events = [NewEvent("BenchEvent", PAYLOAD) for _ in range(events)]

    def new_event_objects() -> object:
        return [NewEvent("BenchEvent", PAYLOAD) for _ in range(events)]

    def validation() -> object:
        return prepare_append("bench-1", new_events, NO_STREAM, max_append_events=10_000, max_event_bytes=1_048_576)

    def json_dumps() -> object:
        return [json.dumps(PAYLOAD, ensure_ascii=False, separators=(",", ":")) for _ in range(events)]

    result = AppendResult("bench-1", events, events)

    def telemetry() -> object:
        with observe_append("bench-1", new_events) as observation:
            return observation.done(result)

    prepared = prepare_append("bench-1", new_events, NO_STREAM, max_append_events=10_000, max_event_bytes=1_048_576)
    parameters = prepared.parameters
    ours = [parameters[name] for name in ("stream_id", "events", "expected")]
    # What eventstore sent before 2026-12-02: the events as four binary arrays.
    arrays = ["bench-1", prepared.event_ids, prepared.event_types, prepared.datas, prepared.metadatas, 0]
    array_formats = [PyFormat.AUTO, PyFormat.BINARY, PyFormat.BINARY, PyFormat.BINARY, PyFormat.BINARY, PyFormat.AUTO]
    minimal: list[object] = []
    for version in range(1, events + 1):
        minimal += ("bench-1", version, "BenchEvent", uuid.uuid4(), prepared.datas[0], "{}")

    def dumps(values: list[object], formats: list[PyFormat]) -> Callable[[], object]:
        return lambda: Transformer().dump_sequence(values, formats)

    return {
        "NewEvent objects (the caller's, in both)": new_event_objects,
        "validation + JSON encoding (prepare_append)": validation,
        "json.dumps per event (what raw_minimal encodes)": json_dumps,
        "telemetry (observe_append: metrics hook, OpenTelemetry span)": telemetry,
        "psycopg dumps eventstore's parameters (the events as one JSON text)": dumps(ours, [PyFormat.AUTO] * 3),
        "psycopg dumps raw_minimal's parameters (6 per event)": dumps(minimal, [PyFormat.AUTO] * len(minimal)),
        "psycopg dumps the events as 4 binary arrays (eventstore before 2026-12-02)": dumps(arrays, array_formats),
    }


def _rows(results: Results, section: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = results.as_json()["rows"]
    return [row for row in rows if row["section"] == section]


def _writers(case: str) -> int:
    return int(case.split(" ", 1)[0])


def _events(case: str) -> int:
    return int(case.split(", ", 1)[1].split(" ", 1)[0])


def _case_order(case: str) -> tuple[int, int]:
    return _writers(case), _events(case)

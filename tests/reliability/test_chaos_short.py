"""The short form of the chaos soak (benchmarks/chaos.py) against the test server.

8 writer processes (appending to shared streams too, with and without
expected versions; two through the PgBouncer), 3 runner processes, a 5 s
stall, and a fault loop that SIGKILLs the active runner, terminates the
listener backends, restarts the server (when the tests control it) and
SIGTERMs a runner. The first half runs the runners through PgBouncer in
transaction mode (one of them without listen_url, polling), the second
directly. Then every acknowledged append must be stored once at its version,
nothing refused or rolled back stored, and every committed event processed
exactly once by every projection, in order, under one lease at a time, with
read models equal to a recomputation and a rebuild.

One soak run serves both tests: the PgBouncer leg's test skips (with the
reason) where PgBouncer is not installed; the other checks still run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from benchmarks.chaos import SHORT, Figures, SoakSettings, print_figures, run_soak
from eventstore.testing.server import TestServer

_TIMEOUT = 300  # the soak runs in the first test's setup: about 75 s; a machine shared with other work may double it


@pytest.fixture(scope="module")
def short_soak(test_server: TestServer) -> Iterator[tuple[Figures, SoakSettings]]:
    settings = dataclasses.replace(SHORT, seconds=20.0, restarts=1 if test_server.can_restart else 0)
    name = test_server.create_database()
    try:
        figures = run_soak(
            test_server.url(name), settings, restart=test_server.restart if test_server.can_restart else None
        )
    finally:
        test_server.drop_database(name)
    yield figures, settings


@pytest.mark.slow
@pytest.mark.timeout(_TIMEOUT)
def test_chaos_soak_short(short_soak: tuple[Figures, SoakSettings], capsys: pytest.CaptureFixture[str]) -> None:
    figures, settings = short_soak
    with capsys.disabled():
        print()
        print_figures(figures)
    assert figures.violations == []
    assert figures.faults["kill_active_runner"] >= settings.min_kills
    assert figures.checks["missed_events"] == 0 and figures.checks["processed_twice"] == 0
    assert figures.checks["acknowledged_events"] > 500 and figures.checks["rolled_back_events"] > 20
    assert figures.checks["ledger_rows"] >= figures.events  # every projection saw its share
    # Contention really happened on the shared streams, and refused appends stayed out.
    assert figures.checks["shared_stream_events"] > 50 and figures.writes["shared_refused_wrong_expected_version"] > 0
    assert figures.checks["refused_but_stored"] == 0 and figures.checks["streams_with_version_gaps"] == 0
    # The stall held events back, status named its pid, and none was applied past the fence.
    assert figures.stall["seen_by_status"] == "yes" and figures.checks["applied_past_the_stall_fence"] == 0
    assert figures.takeovers and max(figures.takeovers) < settings.takeover_limit


@pytest.mark.slow
@pytest.mark.timeout(_TIMEOUT)
def test_chaos_soak_short_pgbouncer_leg(short_soak: tuple[Figures, SoakSettings]) -> None:
    figures, settings = short_soak
    if figures.pgbouncer_skipped:
        pytest.skip(f"PgBouncer transaction-mode leg: {figures.pgbouncer_skipped}")
    leg = figures.legs["pgbouncer"]
    assert figures.violations == []
    assert leg["kill_active_runner"] >= settings.min_kills_per_leg  # SIGKILL of the active runner handed over
    assert leg["ledger_rows"] > 0  # the runners through PgBouncer applied batches, exactly once (checked above)
    assert figures.checks["polling_runners_that_warned_twice"] == 0
    assert figures.checks["listen_url_runners_that_fell_back_to_polling"] == 0

"""The short form of the chaos soak (benchmarks/chaos.py) against the test server.

8 writer processes, 3 runner processes, and a fault loop that SIGKILLs the
active runner, terminates the listener backends, restarts the server (when
the tests control it) and SIGTERMs a runner. Then every committed event must
have been processed exactly once by every projection, in order, with read
models equal to a recomputation.
"""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.chaos import SHORT, print_figures, run_soak
from eventstore.testing.server import TestServer


@pytest.mark.slow
@pytest.mark.timeout(115)
def test_chaos_soak_short(test_server: TestServer, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    settings = dataclasses.replace(SHORT, seconds=20.0, restarts=1 if test_server.can_restart else 0)
    figures = run_soak(database_url, settings, restart=test_server.restart if test_server.can_restart else None)
    with capsys.disabled():
        print()
        print_figures(figures)
    assert figures.violations == []
    assert figures.faults["kill_active_runner"] >= settings.min_kills
    assert figures.checks["missed_events"] == 0 and figures.checks["processed_twice"] == 0
    assert figures.checks["acknowledged_events"] > 500 and figures.checks["rolled_back_events"] > 20
    assert figures.checks["ledger_rows"] >= figures.events  # every projection saw its share

"""The benchmark script works end to end: one ``python -m benchmarks --quick`` run (never a timed assertion)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_quick_benchmark(out: Path, *, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks --quick`` in a process group of its own.

    On timeout the group gets SIGINT first, so that the run stops its
    PostgreSQL and removes its directory as after Ctrl-C, then SIGKILL: a
    plain ``subprocess.run(timeout=...)`` kills only the parent and left the
    run's PostgreSQL and workers running.
    """
    command = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)]
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_quick_run_writes_the_markdown_table_and_the_raw_json(tmp_path: Path) -> None:
    # 90-200 s on two quiet cores; the margin is for a loaded machine.
    completed = _run_quick_benchmark(tmp_path, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]

    markdown = (tmp_path / "latest.md").read_text()
    assert "| case | contender | median (min-max) | ratio of medians | other |" in markdown
    assert "x raw" in markdown  # eventstore's append rows carry their ratio to the raw inserts
    assert markdown.rstrip("\n") == completed.stdout.rstrip("\n")

    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["mode"] == "quick"
    rows = {(row["section"].split(" ")[0], row["case"], row["contender"]): row for row in results["rows"]}
    for writers in ("1 writer", "4 writers", "8 writers"):
        for events in ("1 event/append", "10 events/append"):
            for contender in (
                "eventstore",
                "raw",
                "raw_minimal",
                "raw_notify_in_commit",
                "eventstore_no_notify",
                "eventsourcing",
            ):
                row = rows[("Append", f"{writers}, {events}", contender)]
                assert len(row["samples"]) == 2  # two interleaved rounds
                assert all(sample > 0 for sample in row["samples"])
    eventstore = rows[("Append", "1 writer, 10 events/append", "eventstore")]
    assert eventstore["ratios"]["raw"] == pytest.approx(
        eventstore["median"] / rows[("Append", "1 writer, 10 events/append", "raw")]["median"]
    )
    assert eventstore["ratios"]["raw_minimal"] == pytest.approx(
        eventstore["median"] / rows[("Append", "1 writer, 10 events/append", "raw_minimal")]["median"]
    )
    assert eventstore["extra"]["client CPU us/append"][0] > 0
    # The breakdown: its variants' rows, and the table of what each part costs derived from them.
    assert rows[("Breakdown", "1 writer, 1 event/append", "stripped")]["samples"]
    assert [table["title"].split(" ")[0] for table in results["tables"]] == ["Where", "What", "What", "CPU"]
    assert "eventstore vs the absolute limit" in markdown
    catch_up = rows[("Catch-up", "catch-up", "raw keyset read + JSON decode")]
    assert catch_up["extra"]["events"] == [20_000, 20_000]
    assert 0 < catch_up["extra"]["peak RSS MB"][0] < 1_000
    assert len(list(tmp_path.glob("results-*.json"))) == 1

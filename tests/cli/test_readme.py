"""The README's quick start is two commands, and they work as written."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "the quick start has a bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    demo, tests = quick_start_commands()
    assert demo.endswith("eventstore demo")
    ci = (ROOT / ".ci" / "run").read_text()
    install, run = tests.rsplit(" && ", 1)
    extras = re.search(r"-e '(\.\[[^\]]+\])'", install)
    assert extras and f'-e "{extras.group(1)}"' in ci  # CI installs what the README installs
    assert f"\n{run}\n" in ci  # and runs the README's test command


@pytest.mark.slow
def test_the_demo_command_runs_as_written(outside_tmp: Path) -> None:
    demo, _ = quick_start_commands()
    # The demo in its short mode, in a private embedded-PostgreSQL home.
    env = {**os.environ, "EVENTSTORE_HOME": str(outside_tmp), "EVENTSTORE_DEMO_QUICK": "1"}
    env.pop("EVENTSTORE_URL", None)
    try:
        result = subprocess.run(
            ["bash", "-c", demo], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "OK: every read model agrees with the events" in result.stdout + result.stderr
        assert "using embedded PostgreSQL 18" in result.stderr
    finally:
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "eventstore"), "server", "stop"], env=env, capture_output=True, check=False
        )

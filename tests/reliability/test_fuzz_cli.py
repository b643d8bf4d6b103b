"""Fuzzed CLI arguments: each run succeeds, or exits 1 (our error) / 2 (usage) with one error line, no traceback."""

from __future__ import annotations

import itertools
import json
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from eventstore.cli import app

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# argv text: any code point except NUL (an OS argv cannot hold it); surrogateescape
# code points (\udc80-\udcff) stand for undecodable bytes in a real argv.
ARG_CHARACTERS = st.one_of(
    st.characters(exclude_characters="\x00"),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
    st.sampled_from(list("-'\"{}[]:,@ \n\\")),
)
ARG = st.text(ARG_CHARACTERS, max_size=30)
JSON_TEXT = st.one_of(
    ARG,
    st.sampled_from(['{"x": NaN}', '{"x": Infinity}', '{"x": "\\u0000"}', '{"x": "\\ud800"}', "[1]", "null", "{",
                     '{"a": 1e400}', '{"a": {"b": [1, 2, {"c": null}]}}', "@-", "@/nonexistent/file", "{}" * 3]),
    st.recursive(st.integers() | st.text(max_size=5), lambda c: st.dictionaries(st.text(max_size=5), c, max_size=3))
    .map(lambda value: json.dumps({"v": value})),
)  # fmt: skip
NUMBER_TEXT = st.one_of(
    ARG,
    st.integers().map(str),
    st.sampled_from(
        ["-1", "0", "2147483648", "9223372036854775808", "1e3", "0x10", " 7", "\uff17", "any", "no-stream"]
    ),
)


def _check_outcome(result: Result) -> None:
    output = result.output
    assert "Traceback" not in output, output
    assert result.exit_code in (0, 1, 2), (result.exit_code, output, result.exception)
    if result.exit_code == 1:
        error_lines = [line for line in output.splitlines() if line.startswith("Error: ")]
        assert len(error_lines) == 1, output
    elif result.exit_code == 2:
        assert sum("Error" in line for line in output.splitlines()) == 1, output


def _count(database_url: str) -> int:
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        count = int(connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one())
    engine.dispose()
    return count


@FUZZ
@given(stream=ARG, event_type=ARG, data=JSON_TEXT, metadata=st.one_of(st.none(), JSON_TEXT), expected=NUMBER_TEXT)
@example(stream="order-1", event_type="T", data='{"x": NaN}', metadata=None, expected="any")
@example(stream="order-1", event_type="T", data="{}", metadata=None, expected="-1")
@example(stream="order-1", event_type="T", data="{}", metadata=None, expected="99999999999999999999")
@example(stream="order-\udcff", event_type="T", data="{}", metadata=None, expected="any")
def test_cli_append_arguments(
    database_url: str, stream: str, event_type: str, data: str, metadata: str | None, expected: str
) -> None:
    arguments = ["--url", database_url, "append", "--data", data, "--expected-version", expected]
    if metadata is not None:
        arguments += ["--metadata", metadata]
    before = _count(database_url)
    result = CliRunner().invoke(app, [*arguments, "--", stream, event_type])
    _check_outcome(result)
    assert _count(database_url) == before + (1 if result.exit_code == 0 else 0)


@FUZZ
@given(
    command=st.sampled_from(["read", "log"]),
    option=st.sampled_from(["--from-version", "--limit", "--after", "-n", "--category", "--type"]),
    value=NUMBER_TEXT,
)
def test_cli_read_arguments(database_url: str, command: str, option: str, value: str) -> None:
    runner = CliRunner()
    unique = next(_streams)
    seeded = runner.invoke(app, ["--url", database_url, "append", f"fuzz-{unique}", "T"])
    assert seeded.exit_code == 0, seeded.output
    target: list[Any] = [f"fuzz-{unique}"] if command == "read" else []
    result = runner.invoke(app, ["--url", database_url, command, *target, option, value])
    _check_outcome(result)


_streams = itertools.count(1)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["reset", "retry", "skip", "failures"]), name=ARG)
@example(command="reset", name="x'); DROP TABLE events; --")
def test_cli_projection_names(database_url: str, command: str, name: str) -> None:
    result = CliRunner().invoke(app, ["--url", database_url, "projections", command, "--", name])
    _check_outcome(result)
    if command != "failures":  # no projection has such a name: a one-line error
        assert result.exit_code in (1, 2), result.output
    assert _count(database_url) == 0

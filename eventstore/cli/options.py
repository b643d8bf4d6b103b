"""Parsing of the ``eventstore`` command's option values, with errors in the CLI user's words.

Each error names the option (``--data``, ``--expected-version``) and the form
it expects, never a Python parameter or type name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from eventstore.cli.errors import CliError
from eventstore.errors import InvalidEvent, UnknownPosition
from eventstore.store.validation import MAX_INT32
from eventstore.types import ANY, NO_STREAM, STREAM_EXISTS, ExpectedVersion

__all__ = ["JsonOption", "append_error", "expected_version", "parse_json_object", "position_error"]

JsonOption = Annotated[bool, typer.Option("--json", envvar="EVENTSTORE_JSON", help="Print JSON instead of text.")]

# JSON's own names for what json.loads returns.
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def expected_version(value: str) -> int | ExpectedVersion:
    """``--expected-version``: N (0 to 2147483647), any, no-stream or exists."""
    named = {"any": ANY, "no-stream": NO_STREAM, "exists": STREAM_EXISTS}
    if value.lower() in named:
        return named[value.lower()]
    if value.isdigit() and int(value) <= MAX_INT32:
        return int(value)
    raise CliError(
        f"--expected-version: {value!r} is not a stream version; use an integer from 0 to {MAX_INT32} "
        "(the version of the stream's last event, 0 for a new stream), any, no-stream or exists",
        exit_code=2,
    )


def parse_json_object(option: str, value: str | None) -> dict[str, Any] | None:
    """Parse an option's JSON object; ``@path`` reads it from a file (``@-``: stdin).

    Raises:
        CliError: unreadable file, invalid JSON (names the option, line and column) or not an object.
    """
    if value is None:
        return None
    source = "the value"
    text = value
    if value.startswith("@"):
        path = value[1:]
        source = "stdin" if path == "-" else path
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise CliError(f"{option}: cannot read {path!r}: {error.strerror}; pass @PATH of a JSON file") from error
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(
            f"{option}: invalid JSON in {source} at line {error.lineno}, column {error.colno}: {error.msg}; "
            f"""pass a JSON object such as '{{"amount": 10}}' (quote it for your shell)"""
        ) from error
    if not isinstance(parsed, dict):
        kind = "null" if parsed is None else _JSON_TYPES.get(type(parsed), type(parsed).__name__)
        raise CliError(
            f"{option}: expected a JSON object, got {kind} in {source}; "
            """wrap it in an object such as '{"value": ...}'"""
        )
    return parsed


# The library's field names for one appended event, and what the CLI user typed
# (longest first: "events[0]" alone is the event as a whole).
_APPEND_FIELDS = (
    ("stream_id", "STREAM"),
    ("events[0].type", "TYPE"),
    ("events[0].data", "--data"),
    ("events[0].metadata", "--metadata"),
    ("events[0]", "the event (--data and --metadata)"),
)


def append_error(error: InvalidEvent) -> CliError:
    """An :class:`InvalidEvent` from ``append``, its field named as on the command line.

    ``stream_id: ' order-1' has leading ...`` becomes ``STREAM: ' order-1' has
    leading ...``; a path inside the data keeps its tail (``--data at .amount: ...``).
    """
    for field, words in _APPEND_FIELDS:
        if error.field == field:
            return CliError(f"{words}: {error.problem}")
        if error.field.startswith(field) and error.field[len(field)] in ".[ ":
            return CliError(f"{words} at {error.field[len(field) :].strip()}: {error.problem}")
    return CliError(str(error))


def position_error(option: str, error: UnknownPosition, fix: str) -> CliError:
    """``--after 7`` / ``--from-position 7`` names no stored event: say so, and what to pass instead."""
    return CliError(
        f"{option} {error.position}: no event is stored at position {error.position}; "
        f"pass a position that `eventstore log` prints, {fix}"
    )

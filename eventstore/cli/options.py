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
from eventstore.store.validation import MAX_INT32
from eventstore.types import ANY, NO_STREAM, STREAM_EXISTS, ExpectedVersion

__all__ = ["JsonOption", "expected_version", "parse_json_object"]

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

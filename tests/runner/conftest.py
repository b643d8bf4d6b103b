"""Fixtures for the runner tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from eventstore import EventStore, Projection, ProjectionRunner
from tests.runner.runner_helpers import FAST, running


@pytest.fixture
def start_runner(store: EventStore) -> Iterator[Callable[..., ProjectionRunner]]:
    """``start_runner([projection], **settings)``: a runner running in a thread until the test ends."""
    stack = contextlib.ExitStack()

    def start(projections: list[Projection], **settings: Any) -> ProjectionRunner:
        runner = ProjectionRunner(store, projections, **{**FAST, **settings})
        return stack.enter_context(running(runner))

    with stack:
        yield start

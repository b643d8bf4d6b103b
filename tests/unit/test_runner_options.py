"""``ProjectionRunner``'s typed keywords stay in step with the settings they fill."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from eventstore import EventStore
from eventstore.errors import ConfigurationError
from eventstore.runner import ProjectionRunner, RunnerOptions, RunnerSettings


def test_the_typed_keywords_are_the_settings_fields_with_the_same_types() -> None:
    fields = {field.name: field.type for field in dataclasses.fields(RunnerSettings)}
    options = typing.get_type_hints(RunnerOptions)
    assert set(options) | {"poll_interval"} == set(fields)  # poll_interval is a parameter of its own
    hints = typing.get_type_hints(RunnerSettings)
    assert {name: hints[name] for name in options} == options


def test_an_unknown_keyword_is_a_configuration_error_naming_it() -> None:
    from projections.order_summaries import OrderSummaries

    store = EventStore("postgresql+psycopg://nobody@127.0.0.1:1/none")  # never connected
    with pytest.raises(ConfigurationError, match="batch_sise"):
        ProjectionRunner(store, [OrderSummaries()], batch_sise=10)  # type: ignore[call-arg]

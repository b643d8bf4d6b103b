"""The public names and the old import paths users may have written keep working after the move to subpackages."""

from __future__ import annotations

import importlib

import pytest

import eventstore

PUBLIC = (
    "EventStore",
    "AsyncEventStore",
    "NewEvent",
    "RecordedEvent",
    "Projection",
    "handles",
    "ProjectionRunner",
    "Aggregate",
    "Repository",
    "AsyncRepository",
    "applies",
    "migrate",
    "EventStoreError",
    "ProjectionTimeout",
)

OLD_PATHS = {
    "eventstore.store": ("EventStore", "NOTIFY_CHANNEL", "MAX_JSON_DEPTH"),
    "eventstore.worker": ("ProjectionSession", "RunnerSettings", "Worker", "lock_key", "owner_id", "session_engine"),
    "eventstore.admin": ("projection_status", "list_failures", "retry", "skip", "reset", "rebuild", "replay_stream"),
    "eventstore.testing.plugin": ("test_server", "database_url", "engine", "store"),
    "eventstore.tailing": ("follow",),
    "eventstore.runner": ("ProjectionRunner", "RunnerSettings"),
}


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_are_exported(name: str) -> None:
    assert name in eventstore.__all__
    assert getattr(eventstore, name) is not None


@pytest.mark.parametrize(("module", "names"), OLD_PATHS.items())
def test_old_module_paths_still_import(module: str, names: tuple[str, ...]) -> None:
    imported = importlib.import_module(module)
    for name in names:
        assert hasattr(imported, name), f"{module}.{name}"


def test_the_same_objects_live_at_the_old_and_the_new_paths() -> None:
    from eventstore.runner.ownership import owner_id
    from eventstore.store.event_store import EventStore
    from eventstore.store.follow import follow
    from eventstore.tailing import follow as old_follow
    from eventstore.worker import owner_id as old_owner_id

    assert eventstore.EventStore is EventStore
    assert old_follow is follow and old_owner_id is owner_id


def test_timeouts_are_eventstore_errors_and_builtin_timeouts() -> None:
    assert issubclass(eventstore.ProjectionTimeout, eventstore.EventStoreError)
    assert issubclass(eventstore.ProjectionTimeout, TimeoutError)

"""eventstore: a PostgreSQL event store and projection runner.

Start with :class:`EventStore` (append and read), :func:`migrate` (apply the
schema), :class:`Repository` (aggregates) and, for read models,
:class:`Projection` with :class:`ProjectionRunner`. From asyncio code:
:class:`AsyncEventStore` and :class:`AsyncRepository`, the same operations
and guarantees.
"""

from eventstore.errors import (
    AuthenticationFailed,
    ConcurrencyError,
    ConfigurationError,
    DatabaseNotFound,
    DatabaseUnavailable,
    DuplicateEventId,
    EventStoreError,
    InvalidEvent,
    PermissionDenied,
    ProjectionBusy,
    ProjectionError,
    ProjectionNotFound,
    ProjectionTimeout,
    SchemaNotReady,
    StreamNotFound,
    UnknownPosition,
    WrongExpectedVersion,
)
from eventstore.migrations import migrate
from eventstore.projection import Projection, handles
from eventstore.repository import Aggregate, AsyncRepository, Repository, applies
from eventstore.runner import ProjectionRunner
from eventstore.store import AsyncEventStore, EventStore, SubscriptionSettings
from eventstore.types import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, ExpectedVersion, NewEvent, RecordedEvent

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "Aggregate",
    "AppendResult",
    "AsyncEventStore",
    "AsyncRepository",
    "AuthenticationFailed",
    "ConcurrencyError",
    "ConfigurationError",
    "DatabaseNotFound",
    "DatabaseUnavailable",
    "DuplicateEventId",
    "EventStore",
    "EventStoreError",
    "ExpectedVersion",
    "InvalidEvent",
    "NewEvent",
    "PermissionDenied",
    "Projection",
    "ProjectionBusy",
    "ProjectionError",
    "ProjectionNotFound",
    "ProjectionRunner",
    "ProjectionTimeout",
    "RecordedEvent",
    "Repository",
    "SchemaNotReady",
    "StreamNotFound",
    "SubscriptionSettings",
    "UnknownPosition",
    "WrongExpectedVersion",
    "applies",
    "handles",
    "migrate",
]

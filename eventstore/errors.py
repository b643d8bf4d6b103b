"""The one exception hierarchy of eventstore.

Every error the library raises on purpose derives from :class:`EventStoreError`.
Each class's docstring is its default message. Driver errors are wrapped with
``raise ... from error`` so the original stays on ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "ConcurrencyError",
    "ConfigurationError",
    "DatabaseNotFound",
    "DatabaseUnavailable",
    "DuplicateEventId",
    "EventStoreError",
    "InvalidEvent",
    "PermissionDenied",
    "ProjectionBusy",
    "ProjectionError",
    "ProjectionNotFound",
    "ProjectionTimeout",
    "SchemaNotReady",
    "StreamNotFound",
    "UnknownPosition",
    "WrongExpectedVersion",
    "first_line",
]


class EventStoreError(Exception):
    """An eventstore operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(EventStoreError):
    """eventstore is not set up correctly."""


class DatabaseUnavailable(EventStoreError):
    """The database cannot be reached."""


class AuthenticationFailed(ConfigurationError):
    """PostgreSQL refused the user or the password; check the URL's user and password."""


class DatabaseNotFound(ConfigurationError):
    """The database named in the URL does not exist on that server; create it or fix the URL."""


class SchemaNotReady(EventStoreError):
    """The eventstore schema is missing or outdated; run `eventstore migrate`."""


class InvalidEvent(EventStoreError, ValueError):
    """An event or an argument is not valid; nothing was written."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class ConcurrencyError(EventStoreError):
    """A concurrent writer got there first; retry with fresh state."""


class WrongExpectedVersion(ConcurrencyError):
    """The stream is not at the expected version; nothing was written."""

    def __init__(self, stream_id: str, expected: object, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        actual_text = "no stream" if actual == 0 else f"version {actual}"
        super().__init__(f"stream {stream_id!r}: expected {_describe_expected(expected)}, but it is at {actual_text}")


class DuplicateEventId(EventStoreError):
    """An event id is already stored with different content."""

    def __init__(self, event_id: object, detail: str) -> None:
        self.event_id = event_id
        super().__init__(f"event_id {event_id} is already stored {detail}; event ids must be unique")


class StreamNotFound(EventStoreError, LookupError):
    """The stream has no events."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} has no events")


class UnknownPosition(EventStoreError, LookupError):
    """No stored event has this global position."""

    def __init__(self, position: int) -> None:
        self.position = position
        super().__init__(
            f"after={position}: no stored event has global_position {position}; "
            "pass the global_position of an event you read (or 0 / None for the start)"
        )


class PermissionDenied(EventStoreError):
    """The database role may not do this; see the README's roles table."""


class ProjectionError(EventStoreError):
    """A projection could not be run."""


class ProjectionBusy(ProjectionError):
    """Another runner holds this projection's lock; stop it (or wait) and try again."""

    def __init__(self, projection_name: str, owner: str | None = None) -> None:
        self.projection_name = projection_name
        self.owner = owner
        held_by = f" (held by {owner})" if owner else ""
        super().__init__(
            f"projection {projection_name!r} is locked by another runner{held_by}; "
            "stop that runner or wait for it, then try again"
        )


class ProjectionNotFound(ProjectionError, LookupError):
    """No checkpoint is stored for this projection name."""

    def __init__(self, projection_name: str) -> None:
        self.projection_name = projection_name
        super().__init__(
            f"no projection named {projection_name!r} has a checkpoint; "
            "check the name (see `eventstore projections status`) or run the projection once"
        )


class ProjectionTimeout(ProjectionError, TimeoutError):
    """Projections did not reach a position in time (also a :class:`TimeoutError`)."""


def first_line(error: BaseException | str | None) -> str:
    """The first non-empty line of an error's message (its type name if it has none), for one-line reports."""
    for line in str(error or "").splitlines():
        if line.strip():
            return line.strip()
    return "" if isinstance(error, str) else type(error).__name__


def _describe_expected(expected: object) -> str:
    if isinstance(expected, int) and not isinstance(expected, bool):
        return "no stream" if expected == 0 else f"version {expected}"
    return str(expected)

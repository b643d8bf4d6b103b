"""Event-sourced aggregates on top of the store.

An :class:`Aggregate` rebuilds its state by applying its stream's events in
version order; command methods call :meth:`Aggregate.record` to add new events
(applied at once, saved later). :class:`Repository` loads and saves them with
optimistic concurrency: the version an aggregate was loaded at is the
expected version of its next append. :class:`AsyncRepository` does the same
on an :class:`~eventstore.store.AsyncEventStore`, with the same aggregates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from eventstore.errors import StreamNotFound
from eventstore.store import AsyncEventStore, EventStore
from eventstore.types import NO_STREAM, AppendResult, JSONObject, NewEvent, RecordedEvent

__all__ = ["Aggregate", "AsyncRepository", "Repository", "applies"]

A = TypeVar("A", bound="Aggregate")
_Applier = Callable[[Any, dict[str, Any]], None]


def applies(event_type: str) -> Callable[[_Applier], _Applier]:
    """Mark an aggregate method as the one that applies events of ``event_type``.

    The method receives the event's data (a dict) and changes the aggregate's state.
    """

    def mark(method: _Applier) -> _Applier:
        method.__eventstore_applies__ = event_type  # type: ignore[attr-defined]
        return method

    return mark


class Aggregate:
    """Base class for event-sourced aggregates.

    Subclasses set ``category`` (the stream id is ``f"{category}-{id}"``), give
    their state defaults in ``__init__`` (after ``super().__init__(id)``), and
    mark appliers with :func:`applies`. An event type without an applier
    raises ``NotImplementedError``: silently ignoring history is a bug.
    """

    category: ClassVar[str] = ""
    _appliers: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        appliers: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                event_type = getattr(member, "__eventstore_applies__", None)
                if event_type is not None:
                    appliers[event_type] = name
        cls._appliers = appliers

    def __init__(self, aggregate_id: str) -> None:
        if not self.category:
            raise TypeError(f"{type(self).__name__} must set the class attribute `category`")
        self.id = aggregate_id
        self.version = 0
        """The stream version this aggregate was loaded or last saved at."""
        self.pending_events: list[NewEvent] = []

    @property
    def stream_id(self) -> str:
        """The stream that holds this aggregate's events."""
        return f"{self.category}-{self.id}"

    def record(self, event_type: str, data: JSONObject, metadata: JSONObject | None = None) -> None:
        """Apply a new event to the state now and keep it for :meth:`Repository.save`."""
        self._apply(event_type, dict(data))
        self.pending_events.append(NewEvent(event_type, data, metadata))

    def _apply(self, event_type: str, data: dict[str, Any]) -> None:
        name = self._appliers.get(event_type)
        if name is None:
            raise NotImplementedError(f"{type(self).__name__} has no @applies({event_type!r}) method")
        getattr(self, name)(data)

    def _replay(self, event: RecordedEvent) -> None:
        self._apply(event.type, event.data)
        self.version = event.stream_version


class Repository(Generic[A]):
    """Load and save aggregates of one class.

    ``save`` appends the pending events with the loaded version as the
    expected version, so two writers that loaded the same version cannot both
    save: the second gets :class:`~eventstore.errors.WrongExpectedVersion`.
    """

    def __init__(self, store: EventStore, aggregate_class: type[A]) -> None:
        self.store = store
        self.aggregate_class = aggregate_class

    def get(self, aggregate_id: str) -> A:
        """Rebuild the aggregate from its events.

        Raises:
            StreamNotFound: the aggregate has no events.
        """
        aggregate = self.aggregate_class(aggregate_id)
        return _rebuilt(aggregate, self.store.read_stream(aggregate.stream_id))

    def save(self, aggregate: A) -> AppendResult | None:
        """Append the aggregate's pending events (None when there are none).

        Raises:
            WrongExpectedVersion: someone saved this aggregate since it was loaded.
        """
        if not aggregate.pending_events:
            return None
        expected = aggregate.version or NO_STREAM
        result = self.store.append(aggregate.stream_id, aggregate.pending_events, expected_version=expected)
        return _saved(aggregate, result)


class AsyncRepository(Generic[A]):
    """:class:`Repository` for asyncio: load and save aggregates of one class on an :class:`AsyncEventStore`.

    The same aggregates, the same optimistic concurrency: ``save`` appends
    with the version the aggregate was loaded at, so of two writers that
    loaded the same version the second gets
    :class:`~eventstore.errors.WrongExpectedVersion`.
    """

    def __init__(self, store: AsyncEventStore, aggregate_class: type[A]) -> None:
        self.store = store
        self.aggregate_class = aggregate_class

    async def get(self, aggregate_id: str) -> A:
        """Rebuild the aggregate from its events.

        Raises:
            StreamNotFound: the aggregate has no events.
        """
        aggregate = self.aggregate_class(aggregate_id)
        return _rebuilt(aggregate, await self.store.read_stream(aggregate.stream_id))

    async def save(self, aggregate: A) -> AppendResult | None:
        """Append the aggregate's pending events (None when there are none).

        Raises:
            WrongExpectedVersion: someone saved this aggregate since it was loaded.
        """
        if not aggregate.pending_events:
            return None
        expected = aggregate.version or NO_STREAM
        result = await self.store.append(aggregate.stream_id, aggregate.pending_events, expected_version=expected)
        return _saved(aggregate, result)


def _rebuilt(aggregate: A, events: list[RecordedEvent]) -> A:
    """``aggregate`` with ``events`` (its stream's, in version order) applied; StreamNotFound if there are none."""
    if not events:
        raise StreamNotFound(aggregate.stream_id)
    for event in events:
        aggregate._replay(event)
    return aggregate


def _saved(aggregate: Aggregate, result: AppendResult) -> AppendResult:
    """Record that the pending events of ``aggregate`` are stored at ``result``."""
    aggregate.version = result.stream_version
    aggregate.pending_events = []
    return result

"""The :class:`Projection` base class and the :func:`handles` decorator.

A projection turns events into a read model. The runner (see
:mod:`eventstore.runner`) calls its handlers with a SQLAlchemy
:class:`~sqlalchemy.engine.Connection` whose transaction also moves the
projection's checkpoint, so every database write a handler makes through that
connection happens exactly once per event. Side effects *outside* the database
(e-mails, HTTP calls) are at-least-once: a batch that fails or whose runner dies
before the commit is applied again.

This module imports nothing else of the package but types and errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Final, TypeVar

from sqlalchemy.engine import Connection

from eventstore.errors import ConfigurationError
from eventstore.types import RecordedEvent

__all__ = ["ON_ERROR_POLICIES", "Projection", "handles"]

ON_ERROR_POLICIES: Final = ("stop", "skip")
"""``stop``: mark the projection failed at the poison event; ``skip``: record it and go on."""

_Handler = TypeVar("_Handler", bound=Callable[..., Any])
_MARK = "__eventstore_handles__"


def handles(*event_types: str) -> Callable[[_Handler], _Handler]:
    """Mark a projection method as the handler of ``event_types``.

    The method is called as ``method(event, conn)`` with a
    :class:`~eventstore.types.RecordedEvent` and the SQLAlchemy connection of
    the batch's transaction. Raises :class:`ConfigurationError` when no type
    (or a non-string) is given.
    """
    if not event_types or not all(isinstance(name, str) and name for name in event_types):
        raise ConfigurationError(f"@handles needs one or more event type names, got {event_types!r}")

    def mark(method: _Handler) -> _Handler:
        previous: tuple[str, ...] = getattr(method, _MARK, ())
        setattr(method, _MARK, previous + tuple(event_types))
        return method

    return mark


class Projection:
    """Base class of projections: subclass, set ``name``, add ``@handles`` methods.

    Class (or instance) attributes:

    - ``name``: unique; identifies the checkpoint and the runner lock.
    - ``categories`` / ``event_types``: optional read filters (empty: all).
      Events the filters leave out are never read; the checkpoint still
      moves past them.
    - ``on_error``: ``"stop"`` (default) or ``"skip"``, the poison-event policy.

    Events without a handler are passed over; the checkpoint moves past them.
    Override :meth:`apply` to see every event (e.g. a ledger), or
    :meth:`apply_batch` to write once per batch (the fast way).
    Instances must not keep per-event state in memory: the database is the
    read model, and a standby runner must be able to take over.
    """

    name: str = ""
    categories: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    on_error: str = "stop"

    _handlers: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            defined_here: dict[str, str] = {}
            for attribute, member in vars(klass).items():
                for event_type in getattr(member, _MARK, ()):
                    if event_type in defined_here:
                        raise ConfigurationError(
                            f"{klass.__name__}: event type {event_type!r} is handled by both "
                            f"{defined_here[event_type]}() and {attribute}(); keep one handler per type"
                        )
                    defined_here[event_type] = attribute
            handlers.update(defined_here)
        cls._handlers = handlers

    # -- lifecycle hooks ------------------------------------------------------

    def setup(self, conn: Connection) -> None:
        """Create the read-model tables; must be idempotent (``CREATE TABLE IF NOT EXISTS``).

        Called by a runner once it holds the projection's lock, inside a transaction.
        """

    def reset(self, conn: Connection) -> None:
        """Clear the read model before a rebuild (called inside the rebuild's transaction)."""

    def forget_stream(self, stream_id: str, conn: Connection) -> None:
        """Remove everything the read model holds about ``stream_id`` (opt-in).

        Used by :func:`eventstore.admin.replay_stream`. The default raises
        :class:`NotImplementedError`.
        """
        raise NotImplementedError(
            f"projection {self.name!r} does not implement forget_stream(); "
            f"override it in {type(self).__name__} to support replay_stream"
        )

    # -- dispatch -------------------------------------------------------------

    def selects(self, event: RecordedEvent) -> bool:
        """True when the projection's filters (``categories``, ``event_types``) let ``event`` through.

        The runner filters in SQL (:func:`eventstore.store.sql.filter_clause`); this is the same rule in
        Python, for events already read (e.g. one stream's, in ``replay_stream``).
        """
        return (not self.categories or event.category in self.categories) and (
            not self.event_types or event.type in self.event_types
        )

    def handler_for(self, event_type: str) -> Callable[[RecordedEvent, Connection], Any] | None:
        """The bound handler of ``event_type``, or None."""
        attribute = self._handlers.get(event_type)
        if attribute is None:
            return None
        handler: Callable[[RecordedEvent, Connection], Any] = getattr(self, attribute)
        return handler

    def apply(self, event: RecordedEvent, conn: Connection) -> bool:
        """Call the event's handler, if any; True when one ran.

        Any exception propagates: the runner rolls the batch back and applies
        the poison-event policy.
        """
        handler = self.handler_for(event.type)
        if handler is None:
            return False
        handler(event, conn)
        return True

    def apply_batch(self, events: list[RecordedEvent], conn: Connection) -> None:
        """Apply a whole batch in its transaction; the default calls :meth:`apply` per event.

        Override it to write once per batch instead of once per event (e.g. one
        ``UPDATE ... SET n = n + :count``, or one multi-row insert with
        ``conn.execute(statement, [rows...])``): catch-up is bound by statement
        round trips, so this is the way to make a projection fast. If it
        raises, the runner splits the batch to find the failing event and
        applies the poison-event policy to that event alone.
        """
        for event in events:
            self.apply(event, conn)

    def check(self) -> None:
        """Raise :class:`ConfigurationError` naming what is wrong with this projection's settings."""
        kind = type(self).__name__
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigurationError(f"{kind}: set a non-empty `name` (it identifies the checkpoint)")
        if self.on_error not in ON_ERROR_POLICIES:
            raise ConfigurationError(
                f"projection {self.name!r}: on_error={self.on_error!r}; use one of {', '.join(ON_ERROR_POLICIES)}"
            )
        for field in ("categories", "event_types"):
            value = getattr(self, field)
            if isinstance(value, str) or not all(isinstance(item, str) and item for item in value):
                raise ConfigurationError(
                    f"projection {self.name!r}: {field} must be a tuple of non-empty strings, got {value!r}"
                )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

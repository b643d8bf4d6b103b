"""What every ``eventstore`` command shares: the global options and the database, opened on first use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import typer

from eventstore.cli.loading import load_projections
from eventstore.cli.output import status
from eventstore.cli.target import Target, open_target
from eventstore.store import EventStore

__all__ = ["State", "state"]


@dataclass
class State:
    """Global options, and the database opened on first use."""

    url: str | None
    home: str | None
    projections_module: str | None
    """``--projections``; None: the first-party demo projections."""
    verbose: bool
    _target: Target | None = field(default=None, repr=False)
    _store: EventStore | None = field(default=None, repr=False)

    def target(self, *, auto_migrate: bool = True) -> Target:
        """The database (``--url``, else the embedded server, started and migrated)."""
        if self._target is None:
            self._target = open_target(self.url, home=self.home, auto_migrate=auto_migrate)
            if self._target.embedded is not None:
                status(f"using {self._target.description}; pass --url or set EVENTSTORE_URL for another database")
        return self._target

    def store(self) -> EventStore:
        """An :class:`EventStore` on :meth:`target`."""
        if self._store is None:
            self._store = EventStore(self.target().engine)
        return self._store

    def close(self) -> None:
        """Close the store's connections and the pool (the embedded server keeps running)."""
        if self._store is not None:
            self._store.close()
        if self._target is not None:
            self._target.engine.dispose()

    @property
    def module(self) -> str:
        """The module the projections come from."""
        if self.projections_module:
            return self.projections_module
        from eventstore.demo import first_party_projections

        return first_party_projections()

    def projections(self) -> list[Any]:
        """The projections of :attr:`module` (see :func:`~eventstore.cli.loading.load_projections`)."""
        return load_projections(self.module)


def state(ctx: typer.Context) -> State:
    """The :class:`State` the app callback stored on the context."""
    found = ctx.find_object(State)
    assert found is not None  # set by the app callback
    return found

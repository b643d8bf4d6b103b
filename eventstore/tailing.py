"""Backward-compatibility shim: :func:`follow` now lives in :mod:`eventstore.store.follow`."""

from eventstore.store.follow import follow

__all__ = ["follow"]

"""Backward-compatibility shim: the runner's parts now live in :mod:`eventstore.runner`."""

from eventstore.database import is_connection_error
from eventstore.runner.connections import session_engine
from eventstore.runner.ownership import lock_key, lock_owners, owner_id
from eventstore.runner.session import CatchUpResult, ProjectionSession
from eventstore.runner.settings import RunnerSettings
from eventstore.runner.worker import Worker

__all__ = [
    "CatchUpResult",
    "ProjectionSession",
    "RunnerSettings",
    "Worker",
    "is_connection_error",
    "lock_key",
    "lock_owners",
    "owner_id",
    "session_engine",
]

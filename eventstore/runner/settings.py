"""The runner's timing and retry knobs, checked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from eventstore.errors import ConfigurationError

__all__ = ["RunnerOptions", "RunnerSettings"]


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """Timing and retry knobs (seconds). Defaults suit production; tests shrink them."""

    batch_size: int = 500
    poll_interval: float = 5.0
    """Fallback re-check when no notification arrives (a lost wake-up only delays)."""
    held_back_interval: float = 0.2
    """Re-check period while events wait behind an open transaction (it may send no wake-up)."""
    lock_retry_interval: float = 1.0
    """How often a standby tries to take the projections it does not own (one query for all of them)."""
    lease_ttl: float = 3.0
    """How long a projection's lease lasts unless renewed (every third of it); a killed runner's
    projections are taken over at most ``lease_ttl + lock_retry_interval`` later."""
    connections: int = 6
    """The connection budget: the most PostgreSQL connections one runner holds, its LISTEN connection
    included, however many projections it runs (it runs ``connections - 2`` batches at a time)."""
    retry_attempts: int = 3
    """Handler attempts on a poison event, the first included, before the on_error policy applies."""
    retry_delay: float = 0.1
    retry_max_delay: float = 2.0
    reconnect_initial_delay: float = 0.1
    reconnect_max_delay: float = 5.0
    liveness_interval: float = 5.0
    stall_warning_after: float = 30.0
    """Log a WARNING naming the blocking transaction once events have been held back this long."""
    defer_writes: bool = True
    """Per-event handlers of a batch of several events get a connection that sends their writes many at a
    time (:mod:`eventstore.runner.deferred`); False runs each statement as it is issued."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size={self.batch_size}; it must be at least 1")
        if self.retry_attempts < 1:
            raise ConfigurationError(f"retry_attempts={self.retry_attempts}; it must be at least 1")
        if self.connections < 3:
            raise ConfigurationError(
                f"connections={self.connections}; a runner needs at least 3 (LISTEN, leases, one batch at a time)"
            )
        for field in ("poll_interval", "held_back_interval", "lock_retry_interval", "reconnect_max_delay", "lease_ttl"):
            if getattr(self, field) <= 0:
                raise ConfigurationError(f"{field}={getattr(self, field)}; it must be a positive number of seconds")


class RunnerOptions(TypedDict, total=False):
    """The :class:`RunnerSettings` fields as :class:`~eventstore.ProjectionRunner` keywords (for type checkers).

    ``poll_interval`` is a parameter of its own there. ``tests/unit`` keeps
    this list in step with the fields; the defaults and checks are
    :class:`RunnerSettings`'s.
    """

    batch_size: int
    held_back_interval: float
    lock_retry_interval: float
    lease_ttl: float
    connections: int
    retry_attempts: int
    retry_delay: float
    retry_max_delay: float
    reconnect_initial_delay: float
    reconnect_max_delay: float
    liveness_interval: float
    stall_warning_after: float
    defer_writes: bool

"""How much work each measurement does; ``--quick`` shrinks it to a smoke run of about a minute."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "Plan"]


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions. Every repetition runs all contenders of a measurement, in rotating order."""

    mode: str
    repeats: int
    """Rounds of the append measurement."""
    append_seconds: float
    writer_counts: tuple[int, ...] = (1, 4, 8)
    batch_sizes: tuple[int, ...] = (1, 10)
    latency_events: int = 2000
    latency_repeats: int = 2
    catchup_events: int = 1_000_000
    catchup_repeats: int = 2
    undeferred_catchup_events: int = 200_000
    """Events for the per-event handlers with ``defer_writes=False`` (a case of its own when fewer)."""
    eventsourcing_catchup_events: int = 50_000
    rebuild_events: int = 1_000_000
    rebuild_repeats: int = 1
    async_writer_counts: tuple[int, ...] = (1, 8)
    """Writers (threads or tasks) of the asyncio-vs-sync append measurement."""
    async_append_seconds: float = 2.0
    async_repeats: int = 3
    async_without_wake_up: bool = True
    """Also measure both stores with ``notify=False`` (where the gap between them comes from)."""
    sse_client_counts: tuple[int, ...] = (1, 1000)
    """Connected SSE clients per case of the SSE latency measurement."""
    sse_pings: int = 500
    sse_repeats: int = 2
    runner_scale_counts: tuple[int, ...] = (1, 50)
    """Projections of the one runner process of each runner-scale case."""
    runner_scale_events: int = 200
    """Single events appended one at a time per case (append-to-applied latency)."""
    runner_scale_pause: float = 0.1
    """Average pause after each of those events is applied by every projection (jittered 0.5-1.5x)."""
    runner_scale_idle_seconds: float = 10.0
    """The idle window over which the runner's CPU and the standby's new backends are counted."""
    runner_scale_standby_from: int = 50
    """Cases with at least this many projections also start a standby runner of the same projections."""
    breakdown_cases: tuple[tuple[int, int], ...] = ((1, 1), (1, 10), (8, 1), (8, 10))
    """(writers, events per append) of the append breakdown."""
    breakdown_repeats: int = 3
    breakdown_seconds: float = 2.0
    breakdown_client_iterations: int = 3000
    """Calls timed per client part (validation, telemetry, parameter dumping) and round."""
    breakdown_contenders: tuple[str, ...] | None = None
    """The breakdown's contenders (None: all of ``benchmarks.append_breakdown.CONTENDERS``)."""
    breakdown_profile_appends: int = 3000
    """Events appended under cProfile, in appends of 1 and of 10 (where eventstore's client CPU goes)."""


FULL = Plan(
    mode="full",
    repeats=3,
    append_seconds=2.0,
    latency_repeats=1,
    catchup_repeats=1,
    eventsourcing_catchup_events=20_000,
)
QUICK = Plan(
    mode="quick",
    repeats=2,
    append_seconds=0.25,
    latency_events=200,
    latency_repeats=1,
    catchup_events=20_000,
    catchup_repeats=2,
    eventsourcing_catchup_events=2_000,
    rebuild_events=5_000,
    rebuild_repeats=1,
    async_append_seconds=0.25,
    async_repeats=2,
    async_without_wake_up=False,
    sse_client_counts=(1,),  # 1,000 clients: seconds to connect, 0.2 s a ping; the run notes the skip
    sse_pings=50,
    sse_repeats=1,
    runner_scale_events=30,
    runner_scale_idle_seconds=3.0,
    # The smallest run through every code path: one writer process, three databases.
    breakdown_cases=((1, 1),),
    breakdown_repeats=1,
    breakdown_seconds=0.1,
    breakdown_client_iterations=100,
    breakdown_profile_appends=100,
    breakdown_contenders=("eventstore", "stripped", "raw_minimal"),
)

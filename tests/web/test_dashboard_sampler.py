"""The dashboard's sampler stops when the app shuts down, whenever the stop lands (real PostgreSQL)."""

from __future__ import annotations

import asyncio

from eventstore import AsyncEventStore
from eventstore.web.dashboard import Dashboard


def test_stopping_the_sampler_just_as_it_is_woken_ends_it(database_url: str) -> None:
    """``aclose()`` ends the sampler at every step of its wake-up: on Python 3.11 ``asyncio.wait_for`` dropped a
    cancel that came just as the wake-up event was set, and the sampler sampled on forever."""

    async def stop_as_woken(turns: int) -> None:
        async with AsyncEventStore(database_url) as store:
            dashboard = Dashboard(store, ())
            page = dashboard.follow("/")
            await anext(page)  # the first snapshot: the sampler now waits for its next wake-up
            sampler = dashboard._task
            assert sampler is not None
            dashboard.wake()
            for _ in range(turns):
                await asyncio.sleep(0)
            closing = asyncio.ensure_future(dashboard.aclose())
            await asyncio.wait({closing}, timeout=5)
            try:
                assert closing.done() and sampler.done(), f"the sampler still runs 5 s after aclose() ({turns} turns)"
            finally:
                sampler.cancel()  # a sampler that lost its cancel: end it, so that the next case starts clean
                await asyncio.gather(closing, sampler, return_exceptions=True)
                await page.aclose()

    for turns in range(6):
        asyncio.run(stop_as_woken(turns))

"""The event loop the web API runs on: uvloop where it is installed (the ``web`` extra installs it), else asyncio's.

One definition for ``eventstore serve``, the SSE benchmark's server and the web
tests. uvicorn picks httptools over h11 by itself when that is installed; the
loop it must be given, since ``serve`` runs ``uvicorn.Server`` inside its own
event loop. At 1,000 SSE clients uvloop took about a tenth off the server's CPU
per event (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "uvloop_installed"]

T = TypeVar("T")


def uvloop_installed() -> bool:
    """True where uvloop can be imported."""
    return importlib.util.find_spec("uvloop") is not None


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool | None = None) -> T:
    """``asyncio.run(main)``, on uvloop's loop when ``use_uvloop`` (None: when it is installed)."""
    if use_uvloop is None:
        use_uvloop = uvloop_installed()
    if not use_uvloop:
        return asyncio.run(main)
    uvloop = importlib.import_module("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)

"""Fixtures for the asyncio store's own tests: an event loop in a thread, stores on it, an admin connection."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from eventstore import AsyncEventStore
from eventstore.database import libpq_url
from tests.asyncio.async_helpers import STORE_APPLICATION, Loop


@pytest.fixture
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


@pytest.fixture
def store_url(database_url: str) -> str:
    """This test's database, with the application_name that :func:`store_backends` looks for."""
    return (
        sa.make_url(database_url)
        .update_query_dict({"application_name": STORE_APPLICATION})
        .render_as_string(hide_password=False)
    )


@pytest.fixture
def make_store(loop: Loop, store_url: str) -> Iterator[Callable[..., AsyncEventStore]]:
    """AsyncEventStores on this test's database (their connections named STORE_APPLICATION), closed after."""
    made: list[AsyncEventStore] = []

    def make(**options: Any) -> AsyncEventStore:
        made.append(AsyncEventStore(store_url, **options))
        return made[-1]

    yield make
    for async_store in made:
        loop.run(async_store.close())


@pytest.fixture
def admin(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to this test's database, for looking at and terminating backends."""
    with psycopg.connect(libpq_url(sa.make_url(database_url)), autocommit=True) as connection:
        yield connection

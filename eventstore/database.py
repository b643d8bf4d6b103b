"""Engines, URLs and driver-error translation shared by every layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from eventstore.errors import ConfigurationError, DatabaseUnavailable, PermissionDenied, SchemaNotReady

__all__ = ["create_engine", "libpq_url", "mask_url", "translate_driver_errors"]


def normalise_url(url: str) -> str:
    """Turn ``postgres://`` / ``postgresql://`` (libpq) URLs into SQLAlchemy's psycopg 3 form."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ConfigurationError(
        f"database URL must start with postgresql:// or postgresql+psycopg://, got {mask_url(url)!r}"
    )


def create_engine(url_or_engine: str | Engine, **options: Any) -> Engine:
    """An Engine for a URL (libpq or SQLAlchemy form), or the given Engine unchanged."""
    if isinstance(url_or_engine, Engine):
        return url_or_engine
    if not isinstance(url_or_engine, str):
        raise ConfigurationError(f"expected a database URL or a SQLAlchemy Engine, got {type(url_or_engine).__name__}")
    try:
        return sa.create_engine(normalise_url(url_or_engine), **options)
    except (sa.exc.ArgumentError, ValueError) as error:  # ValueError: e.g. a port that is not a number
        raise ConfigurationError(f"invalid database URL {mask_url(url_or_engine)!r}: {error}") from error


def libpq_url(engine: Engine) -> str:
    """The engine's URL in libpq form (with password) for raw psycopg connections."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def mask_url(url: str | Engine | sa.URL) -> str:
    """A URL safe to print: the password replaced by ``***``."""
    if isinstance(url, Engine):
        url = url.url
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (sa.exc.ArgumentError, ValueError):
        return "<unparseable URL>"
    return parsed.render_as_string(hide_password=True)


def describe_target(engine: Engine) -> str:
    """``host:port/database`` of an engine, for error messages (never the password)."""
    url = engine.url
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


@contextlib.contextmanager
def translate_driver_errors(engine: Engine) -> Iterator[None]:
    """Translate driver errors: "cannot connect" -> :class:`DatabaseUnavailable`.

    A missing table becomes :class:`SchemaNotReady`. Messages name host, port
    and database, never the password.
    """
    try:
        yield
    except sa.exc.ProgrammingError as error:
        if isinstance(error.orig, psycopg.errors.InsufficientPrivilege):
            raise PermissionDenied(
                f"{_first_line(error.orig)} (as {engine.url.username or 'the default role'})"
            ) from error
        if isinstance(error.orig, psycopg.errors.UndefinedTable):
            raise SchemaNotReady(
                f"{_first_line(error.orig)} in {describe_target(engine)}; run `eventstore migrate` "
                "(or eventstore.migrate(url)) first"
            ) from error
        raise
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as error:
        if isinstance(error.orig, psycopg.OperationalError) or error.connection_invalidated:
            raise DatabaseUnavailable(
                f"cannot reach PostgreSQL at {describe_target(engine)}: {_first_line(error.orig)}"
            ) from error
        raise
    except psycopg.OperationalError as error:
        raise DatabaseUnavailable(
            f"cannot reach PostgreSQL at {describe_target(engine)}: {_first_line(error)}"
        ) from error


def _first_line(error: BaseException | None) -> str:
    text = str(error or "").strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def translate_permissions(engine: Engine) -> Iterator[None]:
    """Turn a raw psycopg "permission denied" into :class:`PermissionDenied`."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as error:
        raise PermissionDenied(f"{_first_line(error)} (as {engine.url.username or 'the default role'})") from error

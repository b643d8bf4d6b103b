"""Engines, URLs and driver-error translation shared by every layer."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from eventstore.errors import (
    AuthenticationFailed,
    ConfigurationError,
    DatabaseNotFound,
    DatabaseUnavailable,
    PermissionDenied,
    SchemaNotReady,
    first_line,
)

__all__ = [
    "autocommit_driver",
    "create_engine",
    "describe_target",
    "is_connection_error",
    "libpq_url",
    "mask_url",
    "translate_driver_errors",
]


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
    """Translate driver errors, raw psycopg or wrapped by SQLAlchemy, into ours.

    "Cannot connect" becomes :class:`DatabaseUnavailable`, "permission denied"
    :class:`PermissionDenied`, a missing table :class:`SchemaNotReady`; other
    errors pass through. Messages name host, port and database, never the
    password.
    """
    try:
        yield
    except sa.exc.DBAPIError as error:
        _raise_translated(engine, error.orig, error, lost=error.connection_invalidated)
        raise
    except psycopg.Error as error:
        _raise_translated(engine, error, error, lost=False)
        raise


def _raise_translated(engine: Engine, driver_error: BaseException | None, error: BaseException, *, lost: bool) -> None:
    if isinstance(driver_error, psycopg.errors.InsufficientPrivilege):
        raise PermissionDenied(
            f"{first_line(driver_error)} (as {engine.url.username or 'the default role'})"
        ) from error
    if isinstance(driver_error, psycopg.errors.UndefinedTable):
        raise SchemaNotReady(
            f"{first_line(driver_error)} in {describe_target(engine)}; run `eventstore migrate` "
            "(or eventstore.migrate(url)) first"
        ) from error
    if isinstance(driver_error, psycopg.OperationalError):
        _raise_refused(engine, str(driver_error), error)
    if isinstance(driver_error, psycopg.OperationalError | psycopg.InterfaceError) or lost:
        raise DatabaseUnavailable(
            f"cannot reach PostgreSQL at {describe_target(engine)}: {first_line(driver_error)}"
        ) from error


# What a server says (after "FATAL:") when it refuses the connection itself,
# not the network: https://www.postgresql.org/docs/current/client-authentication-problems.html
_REFUSALS = (
    (re.compile(r'password authentication failed for user "(?P<name>[^"]*)"'), "password"),
    (re.compile(r"no password supplied"), "no password"),
    (re.compile(r'role "(?P<name>[^"]*)" does not exist'), "role"),
    (
        re.compile(r'(?:Ident|Peer|GSSAPI|SSPI|LDAP|RADIUS|cert) authentication failed for user "(?P<name>[^"]*)"'),
        "method",
    ),
    (re.compile(r'no pg_hba.conf entry for host "[^"]*", user "(?P<name>[^"]*)"'), "hba"),
    (re.compile(r'database "(?P<name>[^"]*)" does not exist'), "database"),
)


def _raise_refused(engine: Engine, message: str, error: BaseException) -> None:
    """Raise :class:`AuthenticationFailed` or :class:`DatabaseNotFound` if the server refused us; else nothing."""
    where = describe_target(engine)
    server = f"{engine.url.host or 'localhost'}:{engine.url.port or 5432}"
    user = engine.url.username or "the default user (your operating-system user name)"
    for pattern, kind in _REFUSALS:
        match = pattern.search(message)
        if match is None:
            continue
        if kind == "database":
            raise DatabaseNotFound(
                f"database {match['name']!r} does not exist on the PostgreSQL at {server}; create it "
                f"(createdb {match['name']}, or CREATE DATABASE) or fix the database name in the URL"
            ) from error
        if kind == "role":
            raise AuthenticationFailed(
                f"PostgreSQL at {where} has no role {match['name']!r}; put an existing user in the URL "
                "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE) or create the role"
            ) from error
        if kind == "no password":
            raise AuthenticationFailed(
                f"PostgreSQL at {where} wants a password for user {user!r} and the URL has none; "
                "put it in the URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE) or in ~/.pgpass"
            ) from error
        if kind == "password":
            raise AuthenticationFailed(
                f"PostgreSQL at {where} refused the password of user {user!r}; check the user and password in the URL"
            ) from error
        raise AuthenticationFailed(
            f"PostgreSQL at {where} refused user {user!r} ({first_line(match.group(0))}); "
            "check the user in the URL and the server's pg_hba.conf"
        ) from error


@contextlib.contextmanager
def autocommit_driver(engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    """A pooled psycopg connection in autocommit mode, errors translated.

    One statement is then one transaction: no BEGIN/COMMIT round trips and no
    SQLAlchemy statement machinery, for the store's hot paths. A connection
    that failed is invalidated, not returned to the pool.
    """
    with translate_driver_errors(engine):
        pooled = engine.raw_connection()
        driver: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
        try:
            driver.autocommit = True
            yield driver
        except psycopg.OperationalError as error:
            pooled.invalidate(error)
            raise
        finally:
            if not driver.closed and driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                driver.autocommit = False
            pooled.close()


def is_connection_error(error: BaseException, connection: sa.Connection | None = None) -> bool:
    """True when ``error`` means the database connection is gone (retry later), not a bug."""
    if connection is not None and (connection.invalidated or connection.closed):
        return True
    if isinstance(error, DatabaseUnavailable):
        return True
    if isinstance(error, sa.exc.DBAPIError):
        return bool(error.connection_invalidated) or _driver_says_gone(error.orig)
    return _driver_says_gone(error)


def _driver_says_gone(error: BaseException | None) -> bool:
    # No SQLSTATE: the socket broke; class 08: connection exception; 57P: the server is shutting down.
    if not isinstance(error, psycopg.OperationalError):
        return False
    return error.sqlstate is None or error.sqlstate.startswith(("08", "57P"))

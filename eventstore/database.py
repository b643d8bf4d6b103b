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
    EventStoreError,
    PermissionDenied,
    SchemaNotReady,
    first_line,
)

__all__ = [
    "CLIENT_KEEPALIVES",
    "autocommit_driver",
    "create_engine",
    "describe_target",
    "is_connection_error",
    "libpq_url",
    "mask_url",
    "translate_driver_error",
    "translate_driver_errors",
    "url_of",
]

Target = Engine | sa.URL
"""Where errors happened: an Engine or its URL (messages name host, port, database and user, never the password)."""


CLIENT_KEEPALIVES: dict[str, Any] = {
    # libpq's client-side TCP keepalives: a dead server or network is noticed in
    # seconds. They need no startup parameter, so poolers accept them.
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "connect_timeout": 5,
}
"""Connection parameters for long-lived connections (LISTEN, a runner's sessions)."""


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


def url_of(url_or_engine: object) -> sa.URL:
    """The URL of a URL string (libpq or SQLAlchemy form), an Engine, or an AsyncEngine, without connecting.

    For callers that open psycopg connections themselves (the asyncio store).

    Raises:
        ConfigurationError: not a URL or an engine, or an invalid URL (the message masks the password).
    """
    if isinstance(url_or_engine, str):
        try:
            return make_url(normalise_url(url_or_engine))
        except (sa.exc.ArgumentError, ValueError) as error:  # ValueError: e.g. a port that is not a number
            raise ConfigurationError(f"invalid database URL {mask_url(url_or_engine)!r}: {error}") from error
    # An AsyncEngine wraps a sync Engine (duck-typed: sqlalchemy.ext.asyncio needs greenlet to import usefully).
    engine = getattr(url_or_engine, "sync_engine", url_or_engine)
    if isinstance(engine, Engine):
        return engine.url
    raise ConfigurationError(f"expected a database URL or a SQLAlchemy Engine, got {type(url_or_engine).__name__}")


def libpq_url(target: Target) -> str:
    """The URL of an engine (or a URL) in libpq form (with password) for raw psycopg connections."""
    return _url(target).set(drivername="postgresql").render_as_string(hide_password=False)


def _url(target: Target) -> sa.URL:
    return target.url if isinstance(target, Engine) else target


def mask_url(url: str | Engine | sa.URL) -> str:
    """A URL safe to print: the password replaced by ``***``."""
    if isinstance(url, Engine):
        url = url.url
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (sa.exc.ArgumentError, ValueError):
        return "<unparseable URL>"
    return parsed.render_as_string(hide_password=True)


def describe_target(target: Target) -> str:
    """``host:port/database`` of an engine (or a URL), for error messages (never the password)."""
    url = _url(target)
    return f"{url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


@contextlib.contextmanager
def translate_driver_errors(target: Target) -> Iterator[None]:
    """Translate driver errors, raw psycopg or wrapped by SQLAlchemy, into ours (see :func:`translate_driver_error`).

    Also the asyncio store's: a plain context manager only catches, so
    ``with translate_driver_errors(url): await ...`` translates what the
    awaited call raises.
    """
    try:
        yield
    except (sa.exc.DBAPIError, psycopg.Error) as error:
        translated = translate_driver_error(target, error)
        if translated is None:
            raise
        raise translated from error


def translate_driver_error(target: Target, error: BaseException) -> EventStoreError | None:
    """Our error for a driver error (raw psycopg or wrapped by SQLAlchemy), or None to let it pass unchanged.

    "Cannot connect" becomes :class:`DatabaseUnavailable` (or
    :class:`AuthenticationFailed` / :class:`DatabaseNotFound` when the server
    refused us), "permission denied" :class:`PermissionDenied`, a missing
    table :class:`SchemaNotReady`; constraint violations and other errors
    pass. Messages name host, port and database, never the password. The one
    mapping, for the sync and the asyncio store alike.
    """
    if isinstance(error, sa.exc.DBAPIError):
        driver_error: BaseException | None = error.orig
        lost = bool(error.connection_invalidated)
    elif isinstance(error, psycopg.Error):
        driver_error, lost = error, False
    else:
        return None
    if isinstance(driver_error, psycopg.errors.InsufficientPrivilege):
        return PermissionDenied(f"{first_line(driver_error)} (as {_url(target).username or 'the default role'})")
    if _lost_prepared_statement(driver_error):
        return ConfigurationError(
            f"server-side prepared statements do not survive between transactions at {describe_target(target)} "
            f"({first_line(driver_error)}): a pooler in transaction mode sits in between; pass "
            "prepared_statements=False to the store (None, the default, detects poolers), "
            "connect_args={'prepare_threshold': None} to an engine of yours, or use a direct or session-mode URL"
        )
    if isinstance(driver_error, psycopg.errors.UndefinedTable):
        return SchemaNotReady(
            f"{first_line(driver_error)} in {describe_target(target)}; run `eventstore migrate` "
            "(or eventstore.migrate(url)) first"
        )
    if isinstance(driver_error, psycopg.OperationalError):
        refused = _refusal(target, str(driver_error))
        if refused is not None:
            return refused
    if isinstance(driver_error, psycopg.OperationalError | psycopg.InterfaceError) or lost:
        return DatabaseUnavailable(f"cannot reach PostgreSQL at {describe_target(target)}: {first_line(driver_error)}")
    return None


def _lost_prepared_statement(error: BaseException | None) -> bool:
    """psycopg's automatic prepared statements failing behind a transaction-mode pooler.

    The name is missing on the server session of this transaction (26000
    invalid_sql_statement_name), taken there by another client (42P05
    duplicate_prepared_statement), or another client's with other parameters
    (08P01 "bind message supplies ... prepared statement ... requires").
    """
    if not isinstance(error, psycopg.Error):
        return False
    if error.sqlstate in ("26000", "42P05"):
        return True
    return error.sqlstate == "08P01" and "prepared statement" in str(error)


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
    # PgBouncer (before 1.20 for `options`) refuses startup parameters it does not know.
    (re.compile(r"unsupported startup parameter(?: in options)?:? ?(?P<name>\S*)"), "startup parameter"),
)


def _refusal(target: Target, message: str) -> EventStoreError | None:
    """:class:`AuthenticationFailed` or :class:`DatabaseNotFound` if the server refused us; else None."""
    where = describe_target(target)
    url = _url(target)
    server = f"{url.host or 'localhost'}:{url.port or 5432}"
    user = url.username or "the default user (your operating-system user name)"
    for pattern, kind in _REFUSALS:
        match = pattern.search(message)
        if match is None:
            continue
        if kind == "database":
            return DatabaseNotFound(
                f"database {match['name']!r} does not exist on the PostgreSQL at {server}; create it "
                f"(createdb {match['name']}, or CREATE DATABASE) or fix the database name in the URL"
            )
        if kind == "startup parameter":
            return ConfigurationError(
                f"the pooler at {server} refuses the startup parameter {match['name'] or 'options'!r}: remove "
                "it from the URL and connect_args (e.g. options=-c ...), or list it in PgBouncer's "
                "ignore_startup_parameters (which drops it)"
            )
        if kind == "role":
            return AuthenticationFailed(
                f"PostgreSQL at {where} has no role {match['name']!r}; put an existing user in the URL "
                "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE) or create the role"
            )
        if kind == "no password":
            return AuthenticationFailed(
                f"PostgreSQL at {where} wants a password for user {user!r} and the URL has none; "
                "put it in the URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE) or in ~/.pgpass"
            )
        if kind == "password":
            return AuthenticationFailed(
                f"PostgreSQL at {where} refused the password of user {user!r}; check the user and password in the URL"
            )
        return AuthenticationFailed(
            f"PostgreSQL at {where} refused user {user!r} ({first_line(match.group(0))}); "
            "check the user in the URL and the server's pg_hba.conf"
        )
    return None


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

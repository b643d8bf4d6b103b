"""Apply eventstore's schema with alembic.

The alembic scripts live in the top-level ``alembic/`` folder of the source
tree and are shipped inside the wheel as ``eventstore/_alembic``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eventstore.database import create_engine, translate_driver_errors
from eventstore.errors import ConfigurationError, SchemaNotReady

__all__ = ["VERSION_TABLE", "alembic_dir", "check_schema", "migrate", "versions_path"]

if TYPE_CHECKING:
    from alembic.config import Config

# alembic is imported where it is used: loading it costs about 0.4 s, which every
# `eventstore` command and `import eventstore` paid before.

VERSION_TABLE = "eventstore_alembic_version"


def alembic_dir() -> Path:
    """The folder holding ``env.py`` and ``versions/`` (wheel or source checkout)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_alembic", package.parent / "alembic"):
        if (candidate / "env.py").exists():
            return candidate
    raise ConfigurationError(f"eventstore's alembic scripts are missing (looked in {package})")


def versions_path() -> Path:
    """Add this to your own alembic ``version_locations`` to run our revisions."""
    return alembic_dir() / "versions"


def _config(url: str) -> Config:
    from alembic.config import Config

    config = Config(stdout=io.StringIO())
    config.set_main_option("script_location", str(alembic_dir()))
    # alembic's ini interpolation treats % specially (e.g. in passwords).
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url_or_engine: str | Engine, *, sql: bool = False) -> str | None:
    """Bring the database to the newest eventstore schema (idempotent).

    With ``sql=True`` nothing is executed: the SQL that would run is returned
    (alembic's offline mode), for review or for a DBA to apply.
    """
    from alembic import command

    engine = create_engine(url_or_engine, poolclass=sa.NullPool)
    config = _config(engine.url.render_as_string(hide_password=False))
    if sql:
        buffer = io.StringIO()
        config.output_buffer = buffer
        command.upgrade(config, "eventstore@head", sql=True)
        return buffer.getvalue()
    try:
        with translate_driver_errors(engine), engine.begin() as connection:
            # One migrator at a time: concurrent `migrate` calls wait instead of failing.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('eventstore:migrate'))"))
            config.attributes["connection"] = connection
            command.upgrade(config, "eventstore@head")
    finally:
        if engine is not url_or_engine:
            engine.dispose()
    return None


def head_revision() -> str:
    """The newest revision this version of eventstore knows."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config("postgresql+psycopg://"))
    return script.get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when eventstore was never migrated there."""
    from alembic.runtime.migration import MigrationContext

    with translate_driver_errors(engine), engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaNotReady` unless the database is at our newest revision."""
    current = current_revision(engine)
    if current != head_revision():
        state = "has no eventstore schema" if current is None else f"is at revision {current}"
        raise SchemaNotReady(
            f"the database {state}, this eventstore needs {head_revision()}; "
            "run `eventstore migrate` (or eventstore.migrate(url))"
        )

"""Alembic environment for eventstore's own migrations.

``eventstore.migrate(url)`` drives this file. Our revisions are also usable
from your own alembic project: add ``eventstore.migrations.versions_path()`` to
your ``version_locations`` and run ``alembic upgrade heads`` (the root revision
carries the branch label ``eventstore``).

The version table is ``eventstore_alembic_version`` so that it never collides
with an application's own ``alembic_version``.
"""

from __future__ import annotations

from sqlalchemy import create_engine, pool

from alembic import context

VERSION_TABLE = "eventstore_alembic_version"

config = context.config


def run_offline() -> None:
    """Emit SQL (``--sql``) instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on a connection given by the caller, or on the configured URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, version_table=VERSION_TABLE, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, version_table=VERSION_TABLE, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

"""The NOTIFY trigger stands aside for appenders that wake listeners after their commit.

A NOTIFY inside a writing transaction holds PostgreSQL's database-wide notify
lock through the commit's WAL flush, so concurrent notifying appenders flush one
by one. eventstore's own appends therefore set ``eventstore.notify = 'off'`` for
their transaction and send the wake-up right after the commit, from a
transaction that writes nothing (see eventstore/wakeup.py). Every other writer
(SQL, other clients, old versions of eventstore) still gets the trigger's
wake-up at commit.

Revision ID: 0002_notify_after_commit
Revises: 0001_events
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_notify_after_commit"
down_revision: str | None = "0001_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION eventstore_notify_v2() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- 'off': the appender sends the wake-up itself, after its commit.
            IF current_setting('eventstore.notify', true) IS DISTINCT FROM 'off' THEN
                PERFORM pg_notify('eventstore_events_v1', '');
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER events_notify_v2 AFTER INSERT ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION eventstore_notify_v2()"
    )
    op.execute("DROP TRIGGER events_notify_v1 ON events")
    op.execute("DROP FUNCTION eventstore_notify_v1()")


def downgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION eventstore_notify_v1() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('eventstore_events_v1', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER events_notify_v1 AFTER INSERT ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION eventstore_notify_v1()"
    )
    op.execute("DROP TRIGGER events_notify_v2 ON events")
    op.execute("DROP FUNCTION eventstore_notify_v2()")

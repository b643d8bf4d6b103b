"""Wake-ups are skipped, and counted, when the cluster's NOTIFY queue is half full.

PostgreSQL keeps notifications in one queue for the whole cluster until every
listening session has read them. A listener that stops reading (a suspended
``eventstore tail``, a backend stuck in a transaction) fills it, and then
every transaction that notified fails at commit with "too many notifications
in the NOTIFY queue" (https://www.postgresql.org/docs/current/sql-notify.html).
A wake-up is only a hint (workers re-read the events table on a timer), so it
must never cost a writer its commit.

``eventstore_wake_up_v1()`` is the one definition of a wake-up: it notifies
``eventstore_events_v1`` only while ``pg_notification_queue_usage()`` is below
0.5, and otherwise bumps the ``eventstore_wake_ups_skipped_v1`` counter
(readable by anyone; ``USAGE`` is granted to ``PUBLIC`` so that every writer's
trigger can count, and a counter reveals nothing). The trigger
``events_notify_v3`` (replacing v2) and eventstore's own after-commit wake-up
both call it.

Revision ID: 0003_wake_up_hint_only
Revises: 0002_notify_after_commit
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_wake_up_hint_only"
down_revision: str | None = "0002_notify_after_commit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE SEQUENCE eventstore_wake_ups_skipped_v1")
    op.execute("GRANT USAGE, SELECT ON SEQUENCE eventstore_wake_ups_skipped_v1 TO PUBLIC")
    op.execute(
        """
        CREATE FUNCTION eventstore_wake_up_v1() RETURNS void
        LANGUAGE plpgsql AS $$
        BEGIN
            -- Above half the queue, a notification could make this transaction's commit fail.
            IF pg_notification_queue_usage() < 0.5 THEN
                PERFORM pg_notify('eventstore_events_v1', '');
            ELSE
                PERFORM nextval('eventstore_wake_ups_skipped_v1');
            END IF;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION eventstore_notify_v3() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- 'off': the appender sends the wake-up itself, after its commit.
            IF current_setting('eventstore.notify', true) IS DISTINCT FROM 'off' THEN
                PERFORM eventstore_wake_up_v1();
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER events_notify_v3 AFTER INSERT ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION eventstore_notify_v3()"
    )
    op.execute("DROP TRIGGER events_notify_v2 ON events")
    op.execute("DROP FUNCTION eventstore_notify_v2()")


def downgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION eventstore_notify_v2() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
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
    op.execute("DROP TRIGGER events_notify_v3 ON events")
    op.execute("DROP FUNCTION eventstore_notify_v3()")
    op.execute("DROP FUNCTION eventstore_wake_up_v1()")
    op.execute("DROP SEQUENCE eventstore_wake_ups_skipped_v1")

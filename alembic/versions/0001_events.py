"""Events table, gap-rule order key, append-only guards, NOTIFY trigger, projection tables.

Revision ID: 0001_events
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001_events"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("eventstore",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE events (
            global_position   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            -- The gap rule's order key (see eventstore/store.py): the appending
            -- transaction's id, raised to the key of the stream's previous event.
            transaction_order xid8        NOT NULL,
            event_id          uuid        NOT NULL,
            stream_id         text        NOT NULL,
            stream_version    integer     NOT NULL,
            event_type        text        NOT NULL,
            data              jsonb       NOT NULL,
            metadata          jsonb       NOT NULL DEFAULT '{}'::jsonb,
            recorded_at       timestamptz NOT NULL DEFAULT now(),
            category          text        GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
            CONSTRAINT uq_events_event_id UNIQUE (event_id),
            CONSTRAINT uq_events_stream_id_stream_version UNIQUE (stream_id, stream_version),
            CONSTRAINT ck_events_stream_id CHECK (length(stream_id) BETWEEN 1 AND 255),
            CONSTRAINT ck_events_stream_version CHECK (stream_version >= 1),
            CONSTRAINT ck_events_event_type CHECK (length(event_type) BETWEEN 1 AND 255),
            CONSTRAINT ck_events_data CHECK (jsonb_typeof(data) = 'object'),
            CONSTRAINT ck_events_metadata CHECK (jsonb_typeof(metadata) = 'object')
        )
        """
    )
    # The global order, and the same order within a category or an event type.
    op.execute("CREATE INDEX ix_events_order ON events (transaction_order, global_position)")
    op.execute("CREATE INDEX ix_events_category_order ON events (category, transaction_order, global_position)")
    op.execute("CREATE INDEX ix_events_event_type_order ON events (event_type, transaction_order, global_position)")

    # Append-only, enforced by the database for every role (table owners included).
    op.execute(
        """
        CREATE FUNCTION eventstore_forbid_change_v1() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'eventstore: the events table is append-only; % is not allowed', TG_OP
                USING ERRCODE = 'restrict_violation',
                      HINT = 'append new events that correct or compensate instead';
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER events_forbid_update_delete_v1 BEFORE UPDATE OR DELETE ON events "
        "FOR EACH ROW EXECUTE FUNCTION eventstore_forbid_change_v1()"
    )
    op.execute(
        "CREATE TRIGGER events_forbid_truncate_v1 BEFORE TRUNCATE ON events "
        "FOR EACH STATEMENT EXECUTE FUNCTION eventstore_forbid_change_v1()"
    )

    # One wake-up per committing transaction: a statement-level trigger with a
    # constant payload; PostgreSQL folds identical notifications of one
    # transaction into one and delivers it only at commit.
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

    op.execute(
        """
        CREATE TABLE projection_checkpoints (
            projection_name   text        PRIMARY KEY,
            transaction_order xid8        NOT NULL DEFAULT '0',
            global_position   bigint      NOT NULL DEFAULT 0,
            state             text        NOT NULL DEFAULT 'idle',
            failed_position   bigint,
            last_error        text,
            last_traceback    text,
            owner             text,
            updated_at        timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT ck_projection_checkpoints_state
                CHECK (state IN ('idle', 'running', 'failed', 'stopped', 'rebuilding'))
        )
        """
    )
    op.execute(
        """
        CREATE TABLE projection_failures (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            projection_name text        NOT NULL,
            global_position bigint      NOT NULL,
            event_id        uuid,
            event_type      text,
            stream_id       text,
            error           text        NOT NULL,
            traceback       text,
            attempts        integer     NOT NULL DEFAULT 1,
            status          text        NOT NULL,
            recorded_at     timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT ck_projection_failures_status CHECK (status IN ('failed', 'skipped', 'retried'))
        )
        """
    )
    op.execute("CREATE INDEX ix_projection_failures_name ON projection_failures (projection_name, id)")


def downgrade() -> None:
    op.execute("DROP TABLE projection_failures")
    op.execute("DROP TABLE projection_checkpoints")
    op.execute("DROP TRIGGER events_notify_v1 ON events")
    op.execute("DROP TRIGGER events_forbid_truncate_v1 ON events")
    op.execute("DROP TRIGGER events_forbid_update_delete_v1 ON events")
    op.execute("DROP TABLE events")
    op.execute("DROP FUNCTION eventstore_notify_v1()")
    op.execute("DROP FUNCTION eventstore_forbid_change_v1()")

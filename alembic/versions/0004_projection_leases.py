"""A projection's owner holds a lease with a fencing token in its checkpoint row.

Until now a runner owned a projection through a session advisory lock. Session
state does not survive a transaction-mode pooler (the lock stays on whichever
server connection took it, so two runners applied one projection at once, and
locks outlived their runners), and it tied each projection to one dedicated
connection. A lease lives in the table instead, so it means the same whatever
sits between the runner and PostgreSQL:

- ``owner``: who holds it (``host:pid`` of the runner or command);
- ``lease_token``: bumped on every acquisition, the fencing token;
- ``lease_expires_at``: the holder renews it; once past, anyone may take over.

Every batch moves the checkpoint with ``... AND lease_token = :token`` in the
same statement that locks the row (see ``eventstore/runner/checkpoints.py``),
so a runner that lost its lease cannot commit.

Revision ID: 0004_projection_leases
Revises: 0003_wake_up_hint_only
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_projection_leases"
down_revision: str | None = "0003_wake_up_hint_only"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE projection_checkpoints
            ADD COLUMN lease_token      bigint      NOT NULL DEFAULT 0,
            ADD COLUMN lease_expires_at timestamptz
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE projection_checkpoints DROP COLUMN lease_expires_at, DROP COLUMN lease_token")

"""The ``pending`` table: ledger keys whose lane state is not settled yet (see backoffice/ingest.py).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``pending`` (empty: the ledger up to here is settled)."""
    op.create_table(
        "pending",
        sa.Column("epoch_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("sub", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("epoch_id", "seq", name=op.f("pk_pending")),
    )
    op.create_index(op.f("ix_pending_device_id"), "pending", ["device_id"], unique=False)


def downgrade() -> None:
    """Drop ``pending``."""
    op.drop_index(op.f("ix_pending_device_id"), table_name="pending")
    op.drop_table("pending")

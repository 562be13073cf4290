"""Initial schema: the ledger, the figures, device state (see backoffice/tables.py).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create every table."""
    op.create_table(
        "count_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("line", sa.String(length=200), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("class_name", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_count_keys")),
        sa.UniqueConstraint(
            "line", "direction", "class_name", name=op.f("uq_count_keys_line_direction_class_name")
        ),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("site", sa.String(length=200), nullable=False),
        sa.Column("device", sa.String(length=200), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("status_at", sa.Float(), nullable=True),
        sa.Column("model_version", sa.Text(), nullable=True),
        sa.Column("fps", sa.Float(), nullable=True),
        sa.Column("source_state", sa.String(length=32), nullable=True),
        sa.Column("status_epoch", sa.String(length=64), nullable=True),
        sa.Column("state_recovered", sa.Text(), nullable=True),
        sa.Column("status_json", sa.Text(), nullable=True),
        sa.Column("last_counts_end", sa.Float(), nullable=True),
        sa.Column("last_counts_received", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("site", "device", name=op.f("uq_devices_site_device")),
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_meta")),
    )
    op.create_table(
        "rejected",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected")),
    )
    with op.batch_alter_table("rejected", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rejected_received"), ["received"], unique=False)

    op.create_table(
        "alerts",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("product", sa.String(length=200), nullable=True),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.Column("epoch", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_alerts_device_id_devices")),
        sa.PrimaryKeyConstraint("device_id", "topic", name=op.f("pk_alerts")),
    )
    op.create_table(
        "epochs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.String(length=64), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("announced_seq", sa.BigInteger(), nullable=True),
        sa.Column("started", sa.Float(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=True),
        sa.Column("recovered", sa.Text(), nullable=True),
        sa.Column("prev_epoch", sa.String(length=64), nullable=True),
        sa.Column("prev_last_seq", sa.BigInteger(), nullable=True),
        sa.Column("interval_start", sa.Float(), nullable=True),
        sa.Column("counted", sa.Text(), nullable=True),
        sa.Column("min_seq", sa.BigInteger(), nullable=True),
        sa.Column("max_seq", sa.BigInteger(), nullable=True),
        sa.Column("top_seq", sa.BigInteger(), nullable=True),
        sa.Column("n_messages", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("pruned_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("tail_seq", sa.BigInteger(), nullable=True),
        sa.Column("tail_end", sa.Float(), nullable=True),
        sa.Column("child_id", sa.Integer(), nullable=True),
        sa.Column("span_start", sa.Float(), nullable=True),
        sa.Column("span_end", sa.Float(), nullable=True),
        sa.Column("span_reason", sa.Text(), nullable=True),
        sa.Column("span_lower", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_epochs_device_id_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_epochs")),
        sa.UniqueConstraint("device_id", "epoch", name=op.f("uq_epochs_device_id_epoch")),
    )
    op.create_table(
        "hourly",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_hourly_device_id_devices")),
        sa.ForeignKeyConstraint(["key_id"], ["count_keys.id"], name=op.f("fk_hourly_key_id_count_keys")),
        sa.PrimaryKeyConstraint("device_id", "hour", "key_id", name=op.f("pk_hourly")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("hourly", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hourly_hour"), ["hour"], unique=False)

    op.create_table(
        "site_hourly",
        sa.Column("site", sa.String(length=200), nullable=False),
        sa.Column("hour", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["count_keys.id"], name=op.f("fk_site_hourly_key_id_count_keys")),
        sa.PrimaryKeyConstraint("site", "hour", "key_id", name=op.f("pk_site_hourly")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("site_hourly", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_site_hourly_hour"), ["hour"], unique=False)

    op.create_table(
        "command_results",
        sa.Column("epoch_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("command_id", sa.String(length=128), nullable=True),
        sa.Column("command", sa.String(length=64), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("duplicate", sa.Boolean(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_command_results_device_id_devices")
        ),
        sa.ForeignKeyConstraint(["epoch_id"], ["epochs.id"], name=op.f("fk_command_results_epoch_id_epochs")),
        sa.PrimaryKeyConstraint("epoch_id", "seq", name=op.f("pk_command_results")),
    )
    with op.batch_alter_table("command_results", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_command_results_device_id_command_id"), ["device_id", "command_id"], unique=False
        )

    op.create_table(
        "conflicts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("epoch_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["epoch_id"], ["epochs.id"], name=op.f("fk_conflicts_epoch_id_epochs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conflicts")),
        sa.UniqueConstraint("epoch_id", "seq", "digest", name=op.f("uq_conflicts_epoch_id_seq_digest")),
    )
    op.create_table(
        "counts_periods",
        sa.Column("epoch_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.Float(), nullable=False),
        sa.Column("period_end", sa.Float(), nullable=False),
        sa.Column("interval", sa.Text(), nullable=False),
        sa.Column("counted", sa.Text(), nullable=True),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("gap", sa.String(length=8), nullable=False),
        sa.Column("gap_start", sa.Float(), nullable=True),
        sa.Column("open_counts", sa.Text(), nullable=True),
        sa.Column("contrib", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_counts_periods_device_id_devices")
        ),
        sa.ForeignKeyConstraint(["epoch_id"], ["epochs.id"], name=op.f("fk_counts_periods_epoch_id_epochs")),
        sa.PrimaryKeyConstraint("epoch_id", "seq", name=op.f("pk_counts_periods")),
    )
    with op.batch_alter_table("counts_periods", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_counts_periods_device_id_period_end"), ["device_id", "period_end"], unique=False
        )
        batch_op.create_index(
            "ix_counts_periods_open",
            ["device_id", "period_end"],
            unique=False,
            sqlite_where=sa.text("gap IN ('partial', 'unknown')"),
            postgresql_where=sa.text("gap IN ('partial', 'unknown')"),
        )

    op.create_table(
        "crossings",
        sa.Column("epoch_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("line", sa.String(length=200), nullable=False),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("class_name", sa.String(length=200), nullable=False),
        sa.Column("track_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_crossings_device_id_devices")),
        sa.ForeignKeyConstraint(["epoch_id"], ["epochs.id"], name=op.f("fk_crossings_epoch_id_epochs")),
        sa.PrimaryKeyConstraint("epoch_id", "seq", name=op.f("pk_crossings")),
    )
    with op.batch_alter_table("crossings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_crossings_device_id_ts"), ["device_id", "ts"], unique=False)

    op.create_table(
        "messages",
        sa.Column("epoch_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("received", sa.Float(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["epoch_id"], ["epochs.id"], name=op.f("fk_messages_epoch_id_epochs")),
        sa.PrimaryKeyConstraint("epoch_id", "seq", name=op.f("pk_messages")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_messages_ts"), ["ts"], unique=False)

    op.create_table(
        "seq_gaps",
        sa.Column("epoch_id", sa.Integer(), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["epoch_id"], ["epochs.id"], name=op.f("fk_seq_gaps_epoch_id_epochs")),
        sa.PrimaryKeyConstraint("epoch_id", "first_seq", name=op.f("pk_seq_gaps")),
    )


def downgrade() -> None:
    """Drop every table."""
    op.drop_table("seq_gaps")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_messages_ts"))

    op.drop_table("messages")
    with op.batch_alter_table("crossings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_crossings_device_id_ts"))

    op.drop_table("crossings")
    with op.batch_alter_table("counts_periods", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_counts_periods_open",
            sqlite_where=sa.text("gap IN ('partial', 'unknown')"),
            postgresql_where=sa.text("gap IN ('partial', 'unknown')"),
        )
        batch_op.drop_index(batch_op.f("ix_counts_periods_device_id_period_end"))

    op.drop_table("counts_periods")
    op.drop_table("conflicts")
    with op.batch_alter_table("command_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_command_results_device_id_command_id"))

    op.drop_table("command_results")
    with op.batch_alter_table("site_hourly", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_site_hourly_hour"))

    op.drop_table("site_hourly")
    with op.batch_alter_table("hourly", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hourly_hour"))

    op.drop_table("hourly")
    op.drop_table("epochs")
    op.drop_table("alerts")
    with op.batch_alter_table("rejected", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rejected_received"))

    op.drop_table("rejected")
    op.drop_table("meta")
    op.drop_table("devices")
    op.drop_table("count_keys")

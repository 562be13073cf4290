"""The back office's database schema: one SQLAlchemy Core metadata for SQLite and PostgreSQL.

Times are Unix seconds (float, as in the messages); ``hour`` is the start of a UTC hour (integer).
JSON documents (intervals, counted totals, payloads) are stored as text: the same on both databases.

=================  ===================================================================================
table              what it holds
=================  ===================================================================================
``devices``        one row per (site, device): the retained status, the last counts received
``epochs``         one row per (device, epoch): first seen, the ``epoch`` message, seq range, and the
                   *transition span* (time whose counts the stream cannot prove, see figures.py)
``messages``       the ledger: every keyed message exactly once, as received (key: epoch, seq)
``counts_periods`` one row per counts message: period, interval, counted, and how it was settled
``crossings``      one row per crossing event
``count_keys``     (line, direction, class) → a small id, so roll-up rows are four integers
``hourly``         the roll-up: counts per device, UTC hour and count key
``site_hourly``    the same per store (the sum of its lanes): store and chain queries read only this
``seq_gaps``       missing seq ranges per epoch; they shrink and close when late messages arrive
``alerts``         the current state of each restock/source alert of each device
``command_results`` replies to commands (``cmd/result``)
``conflicts``      a key seen again with a different payload: the second payload, never overwriting
``rejected``       malformed messages: topic, raw bytes (truncated), reason
``meta``           key/value (the retention horizon)
=================  ===================================================================================
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

__all__ = [
    "alerts",
    "command_results",
    "conflicts",
    "count_keys",
    "counts_periods",
    "crossings",
    "devices",
    "epochs",
    "hourly",
    "messages",
    "meta",
    "metadata",
    "rejected",
    "seq_gaps",
    "site_hourly",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

devices = Table(
    "devices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("site", String(200), nullable=False),
    Column("device", String(200), nullable=False),
    Column("first_seen", Float, nullable=False),
    # From the retained status (status.json); status_at is its timestamp (received time for a Will).
    Column("status", String(16)),
    Column("status_reason", Text),
    Column("status_at", Float),
    Column("model_version", Text),
    Column("fps", Float),
    Column("source_state", String(32)),
    Column("status_epoch", String(64)),
    Column("state_recovered", Text),
    Column("status_json", Text),
    # The newest counts message received: its period end and when it arrived.
    Column("last_counts_end", Float),
    Column("last_counts_received", Float),
    UniqueConstraint("site", "device"),
)

epochs = Table(
    "epochs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", Integer, ForeignKey("devices.id"), nullable=False),
    Column("epoch", String(64), nullable=False),
    Column("first_seen", Float, nullable=False),
    # The epoch message (edge/schemas/epoch.json); NULL until it arrives.
    Column("announced_seq", BigInteger),
    Column("started", Float),
    Column("state", String(16)),
    Column("recovered", Text),
    Column("prev_epoch", String(64)),
    Column("prev_last_seq", BigInteger),
    Column("interval_start", Float),
    Column("counted", Text),
    # Maintained on insert.
    Column("min_seq", BigInteger),
    Column("max_seq", BigInteger),
    Column("top_seq", BigInteger),  # max(max_seq, a successor epoch's previous.last_seq): gaps below it
    Column("n_messages", BigInteger, nullable=False, server_default=text("0")),
    Column("pruned_seq", BigInteger, nullable=False, server_default=text("0")),
    # The counts chain's tail in this epoch (the fast path of figures.py).
    Column("tail_seq", BigInteger),
    Column("tail_end", Float),
    # The epoch that continues this one (set by its epoch message), to re-settle it on late messages.
    Column("child_id", Integer),
    # The transition span: [span_start, span_end) cannot be proven (figures.py); lower bound per key.
    Column("span_start", Float),
    Column("span_end", Float),
    Column("span_reason", Text),
    Column("span_lower", Text),
    UniqueConstraint("device_id", "epoch"),
)

messages = Table(
    "messages",
    metadata,
    Column("epoch_id", Integer, ForeignKey("epochs.id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("ts", Float, nullable=False),
    Column("received", Float, nullable=False),
    Column("payload", Text, nullable=False),
    Index(None, "ts"),
)

counts_periods = Table(
    "counts_periods",
    metadata,
    Column("epoch_id", Integer, ForeignKey("epochs.id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("device_id", Integer, ForeignKey("devices.id"), nullable=False),
    Column("period_start", Float, nullable=False),
    Column("period_end", Float, nullable=False),
    Column("interval", Text, nullable=False),
    Column("counted", Text),
    # How figures.py settled this period: role 'counted' or 'replay'; gap: see figures.Gap.
    Column("role", String(8), nullable=False),
    Column("gap", String(8), nullable=False),
    Column("gap_start", Float),  # the chain predecessor's period end (NULL: no predecessor)
    Column("open_counts", Text),  # unattributed remainder (gap 'partial'), per line/direction/class
    Column("contrib", Text),  # what this row added to hourly (NULL: its interval, in its own hour)
    Index(None, "device_id", "period_end"),
    Index(
        "ix_counts_periods_open",
        "device_id",
        "period_end",
        sqlite_where=text("gap IN ('partial', 'unknown')"),
        postgresql_where=text("gap IN ('partial', 'unknown')"),
    ),
)

crossings = Table(
    "crossings",
    metadata,
    Column("epoch_id", Integer, ForeignKey("epochs.id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("device_id", Integer, ForeignKey("devices.id"), nullable=False),
    Column("ts", Float, nullable=False),
    Column("line", String(200), nullable=False),
    Column("direction", String(3), nullable=False),
    Column("class_name", String(200), nullable=False),
    Column("track_id", BigInteger),
    Index(None, "device_id", "ts"),
)

count_keys = Table(
    "count_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("line", String(200), nullable=False),
    Column("direction", String(3), nullable=False),
    Column("class_name", String(200), nullable=False),
    UniqueConstraint("line", "direction", "class_name"),
)

hourly = Table(
    "hourly",
    metadata,
    Column("device_id", Integer, ForeignKey("devices.id"), primary_key=True),
    Column("hour", BigInteger, primary_key=True, autoincrement=False),
    Column("key_id", Integer, ForeignKey("count_keys.id"), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Index(None, "hour"),
    sqlite_with_rowid=False,  # stored in key order: a store's month is one range of the table
)

site_hourly = Table(
    "site_hourly",
    metadata,
    Column("site", String(200), primary_key=True),
    Column("hour", BigInteger, primary_key=True, autoincrement=False),
    Column("key_id", Integer, ForeignKey("count_keys.id"), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Index(None, "hour"),
    sqlite_with_rowid=False,
)

seq_gaps = Table(
    "seq_gaps",
    metadata,
    Column("epoch_id", Integer, ForeignKey("epochs.id"), primary_key=True),
    Column("first_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("since", Float, nullable=False),  # when the gap was first seen
)

alerts = Table(
    "alerts",
    metadata,
    Column("device_id", Integer, ForeignKey("devices.id"), primary_key=True),
    Column("topic", String(300), primary_key=True),  # below the device: alerts/restock/depletion/milk
    Column("kind", String(16), nullable=False),  # depletion, occupancy, source
    Column("product", String(200)),
    Column("state", String(8), nullable=False),
    Column("since", Float, nullable=False),  # when the current state began (the message's timestamp)
    Column("updated", Float, nullable=False),
    Column("epoch", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("payload", Text, nullable=False),
)

command_results = Table(
    "command_results",
    metadata,
    Column("epoch_id", Integer, ForeignKey("epochs.id"), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("device_id", Integer, ForeignKey("devices.id"), nullable=False),
    Column("command_id", String(128)),
    Column("command", String(64), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("message", Text, nullable=False),
    Column("duplicate", Boolean, nullable=False),
    Column("ts", Float, nullable=False),
    Index(None, "device_id", "command_id"),
)

conflicts = Table(
    "conflicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("epoch_id", Integer, ForeignKey("epochs.id"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("received", Float, nullable=False),
    Column("topic", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("digest", String(64), nullable=False),
    UniqueConstraint("epoch_id", "seq", "digest"),
)

rejected = Table(
    "rejected",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received", Float, nullable=False),
    Column("topic", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("reason", Text, nullable=False),
    Index(None, "received"),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

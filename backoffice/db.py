"""Database engines (SQLite WAL by default, PostgreSQL through psycopg 3), migrations and retention.

SQLite: WAL with ``synchronous=FULL`` (a commit survives a power cut, not only a killed process: the
collector acknowledges a message to the broker right after its commit, so the commit must hold), and
``BEGIN IMMEDIATE`` for writers so two collectors on one file queue for the write lock instead of
failing half-way. The database file is never moved, deleted or recreated: an unreadable file is an
error that names it.

PostgreSQL: ``postgresql://user@host/db`` is read as ``postgresql+psycopg://``; ``pool_pre_ping`` lets the
collector come back after a server restart. Migrations take an advisory lock, so collectors that start
together do not migrate twice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, case, create_engine, event, func, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError

from backoffice import tables as t

__all__ = [
    "DEFAULT_DB",
    "DatabaseError",
    "describe",
    "head_revision",
    "make_engine",
    "migrate",
    "normalise_url",
    "prune",
    "revision",
]

log = logging.getLogger(__name__)

DEFAULT_DB = "lanecount-backoffice.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATE_LOCK = 7_310_411  # pg_advisory_lock key of `migrate`


class DatabaseError(Exception):
    """A database URL or file the back office cannot use (one line for the user)."""


def normalise_url(url: str | None) -> str:
    """``None`` → SQLite file in the working directory; a plain path → SQLite; postgresql → psycopg 3."""
    if not url:
        url = DEFAULT_DB
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def describe(url: str) -> str:
    """The URL without its password, for log lines."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


def make_engine(url: str | None, *, writer: bool = False, **kw: Any) -> Engine:
    """An engine for ``url``; ``writer=True`` makes SQLite transactions ``BEGIN IMMEDIATE``.

    Raises:
        DatabaseError: an unknown URL scheme, or a SQLite file whose folder does not exist.
    """
    full = normalise_url(url)
    try:
        parsed = make_url(full)
    except ArgumentError as exc:
        raise DatabaseError(f"--db: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(full, parsed.database, writer, **kw)
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseError(f"--db: {parsed.get_backend_name()} is not supported (use sqlite or postgresql)")
    return create_engine(full, pool_pre_ping=True, **kw)


def _sqlite_engine(url: str, path: str | None, writer: bool, **kw: Any) -> Engine:
    if path and path != ":memory:":
        folder = Path(path).parent
        if not folder.is_dir():
            raise DatabaseError(f"--db: the folder {folder} does not exist")
    engine = create_engine(url, connect_args={"timeout": 30}, **kw)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        if writer:  # a reader never writes, not even the WAL mode into a file that is not ours yet
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def _alembic_config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    """The newest schema revision this version knows."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def revision(engine: Engine) -> str | None:
    """The database's schema revision (``None``: not migrated yet)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; return (before, after). Safe to run concurrently."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATE_LOCK})
        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(_alembic_config(conn), "head")
        after = MigrationContext.configure(conn).get_current_revision()
    assert after is not None
    return before, after


def prune(engine: Engine, keep_days: float, now: float | None = None, step_s: float = 3600.0) -> int:
    """Delete raw messages, crossings and periods older than ``keep_days``; roll-ups stay. Return rows.

    Works forward one ``step_s`` slice per transaction, so the collector's batches are not held up.
    Each epoch remembers the highest seq deleted (``pruned_seq``): a copy of a deleted message that
    arrives later is recognised as already seen, not stored and counted a second time.
    """
    cutoff = (time.time() if now is None else now) - keep_days * 86400.0
    with engine.connect() as conn:
        oldest = conn.execute(select(func.min(t.messages.c.ts))).scalar()
    removed = 0
    start = float(oldest) if oldest is not None else cutoff
    while True:
        upto = min(cutoff, start + step_s)
        with engine.begin() as conn:
            removed += _prune_slice(conn, upto)
        if upto >= cutoff:
            break
        start = upto
    return removed


def _prune_slice(conn: Connection, cut: float) -> int:
    m = t.messages
    top = select(func.max(m.c.seq)).where(m.c.epoch_id == t.epochs.c.id, m.c.ts < cut).scalar_subquery()
    old_epochs = select(m.c.epoch_id).where(m.c.ts < cut).distinct()
    pruned = t.epochs.c.pruned_seq
    conn.execute(
        t.epochs.update()
        .where(t.epochs.c.id.in_(old_epochs))
        .values(pruned_seq=case((top > pruned, top), else_=pruned))
    )
    n = conn.execute(m.delete().where(m.c.ts < cut)).rowcount
    n += conn.execute(t.crossings.delete().where(t.crossings.c.ts < cut)).rowcount
    n += conn.execute(t.counts_periods.delete().where(t.counts_periods.c.period_end < cut)).rowcount
    n += conn.execute(t.command_results.delete().where(t.command_results.c.ts < cut)).rowcount
    n += conn.execute(t.rejected.delete().where(t.rejected.c.received < cut)).rowcount
    conn.execute(
        t.seq_gaps.delete().where(
            t.seq_gaps.c.last_seq
            <= select(t.epochs.c.pruned_seq).where(t.epochs.c.id == t.seq_gaps.c.epoch_id).scalar_subquery()
        )
    )
    _set_meta(conn, "pruned_before", repr(cut))
    return int(n)


def _set_meta(conn: Connection, key: str, value: str) -> None:
    if conn.execute(t.meta.update().where(t.meta.c.key == key).values(value=value)).rowcount == 0:
        conn.execute(t.meta.insert().values(key=key, value=value))

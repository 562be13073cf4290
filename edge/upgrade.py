"""Bring state written by earlier versions along: lanecount 0.1's two databases, and ``counted``.

Each step commits in one transaction with a mark in ``meta``, and is retried at every start until
that mark is there: a kill half-way through the first start after an upgrade leaves nothing half
done and nothing skipped for good.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from pathlib import Path
from typing import Any

from edge.db import Database

__all__ = ["import_v1", "init_counted"]

log = logging.getLogger(__name__)

_V1_MARK = "v1_imported"


def init_counted(conn: sqlite3.Connection, had_counted: bool) -> None:
    """A database from before ``counted`` existed starts its lifetime counters at its totals.

    Inside the caller's transaction (the one that creates the table). What a ``reset`` removed
    before the upgrade is not known any more: ``counted`` starts from what is left.
    """
    if not had_counted:
        conn.execute(
            "INSERT OR IGNORE INTO counted (line, direction, class_name, n)"
            " SELECT line, direction, class_name, n FROM counts"
        )


def import_v1(db: Database, folder: Path) -> None:
    """Import lanecount 0.1's ``counts.db`` and ``outbox.db`` into ``state.db``, once.

    Counts (into ``counts``, ``interval`` and ``counted``), alert state and unsent messages come
    along; ``seq`` numbering continues. The imported messages carry no epoch (0.1 had none): they
    get one of their own, which becomes the database's epoch when it had none, so the first epoch
    message names it as ``previous``. The old files are renamed ``*.migrated`` once the import has
    committed.
    """
    counts, outbox = folder / "counts.db", folder / "outbox.db"
    if not counts.exists() and not outbox.exists():
        return
    if not _imported(db):
        _attach_and_import(db, counts, outbox)
        log.warning(
            "%s: imported the counts and outbox of lanecount 0.1 (%s, %s)", folder, counts.name, outbox.name
        )
    for old in (counts, outbox):
        for suffix in ("", "-wal", "-shm"):
            f = Path(f"{old}{suffix}")
            if f.exists():
                f.replace(Path(f"{old}.migrated{suffix}"))


def _imported(db: Database) -> bool:
    return bool(db.query("SELECT 1 FROM meta WHERE key = ?", (_V1_MARK,)))


def _attach_and_import(db: Database, counts: Path, outbox: Path) -> None:
    attached = [(name, path) for name, path in (("c", counts), ("o", outbox)) if path.exists()]
    with db.lock:  # ATTACH is not allowed inside a transaction
        for name, path in attached:
            db.conn.execute(f"ATTACH DATABASE ? AS {name}", (str(path),))
        try:
            with db.transaction() as conn:
                if counts.exists():
                    _import_counts(conn)
                if outbox.exists():
                    _import_outbox(conn)
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, 'true')", (_V1_MARK,))
        finally:
            for name, _ in attached:
                db.conn.execute(f"DETACH DATABASE {name}")


def _import_counts(conn: sqlite3.Connection) -> None:
    for table in ("counts", "interval", "counted"):
        source = "counts" if table == "counted" else table
        conn.execute(
            f"INSERT INTO {table} (line, direction, class_name, n)"
            f" SELECT line, direction, class_name, n FROM c.{source} WHERE true"
            " ON CONFLICT (line, direction, class_name) DO UPDATE SET n = n + excluded.n"
        )
    conn.execute(
        "INSERT OR IGNORE INTO alert_state (key, value)"
        " SELECT key, value FROM c.state WHERE key LIKE 'alert:%'"
    )
    conn.execute("INSERT OR IGNORE INTO meta SELECT key, value FROM c.state WHERE key = 'interval_start'")


def _import_outbox(conn: sqlite3.Connection) -> None:
    # Normally state.db has handed out no seq yet and the old numbers are kept. If it has (a database
    # that counted before this import ran), the old messages are numbered after its own.
    row = conn.execute("SELECT seq FROM main.sqlite_sequence WHERE name = 'outbox'").fetchone()
    offset = int(row[0]) if row else 0
    epoch = _epoch_for_import(conn)
    rows = conn.execute("SELECT seq, topic, payload, qos, retain, created FROM o.outbox ORDER BY seq")
    for seq, topic, payload, qos, retain, created in rows.fetchall():
        body = _with_envelope(payload, seq + offset, epoch)
        conn.execute(
            "INSERT INTO outbox (seq, topic, payload, qos, retain, keep, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq + offset, topic, body, qos, retain, int("/alerts/" in topic), created),
        )
    old = conn.execute("SELECT seq FROM o.sqlite_sequence WHERE name = 'outbox'").fetchone()
    last = max(offset, (int(old[0]) if old else 0) + offset)
    # sqlite_sequence has no key on name: replace the row the inserts created.
    conn.execute("DELETE FROM main.sqlite_sequence WHERE name = 'outbox'")
    conn.execute("INSERT INTO main.sqlite_sequence (name, seq) VALUES ('outbox', ?)", (last,))


def _epoch_for_import(conn: sqlite3.Connection) -> str:
    """The epoch the imported messages go out under: the database's, or a new one it then carries."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    if row is not None:
        # Messages of the database's last epoch were numbered up to its last seq; the imported ones
        # are numbered above it, so the pair stays unique.
        return str(json.loads(row[0]))
    epoch = secrets.token_hex(8)
    conn.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", (json.dumps(epoch),))
    return epoch


def _with_envelope(payload: str, seq: int, epoch: str) -> str:
    try:
        body: Any = json.loads(payload)
    except ValueError:
        return payload  # 0.1 wrote JSON objects only; anything else goes out as it was
    if not isinstance(body, dict):
        return payload
    body.update(seq=seq, epoch=epoch)
    return json.dumps(body, separators=(",", ":"), sort_keys=True)

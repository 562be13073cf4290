"""One SQLite connection shared by the frame loop and the MQTT thread, with durable transactions.

WAL with ``synchronous=FULL``: a commit is one fsync of the write-ahead log, so a committed frame
survives a killed process *and* a power cut (``NORMAL`` would only survive the former). The frame loop
commits at most once per frame that changed something, so the fsync is affordable.

Damage is found when the file is opened (``PRAGMA quick_check``), never at the first write hours
later: :func:`open_database` moves a damaged file aside and starts a new one, and says why.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Database", "open_database"]

log = logging.getLogger(__name__)

_SIDE_FILES = ("-wal", "-shm", "-journal")


class Database:
    """A SQLite connection guarded by a lock, safe to share between threads.

    Args:
        path: database file, or ``":memory:"``.

    Raises:
        sqlite3.DatabaseError: when the file is not a database or is damaged (see :func:`open_database`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            (verdict,) = self.conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError:
            self.conn.close()
            raise
        if verdict != "ok":
            self.conn.close()
            raise sqlite3.DatabaseError(f"quick_check: {verdict}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together (one fsync) or not at all."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Run a read and return all rows."""
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def close(self) -> None:
        """Close the connection (the last close checkpoints and removes the WAL file)."""
        with self.lock:
            self.conn.close()


def open_database(path: Path) -> tuple[Database, str | None]:
    """Open ``path``; a damaged file is moved aside and a new database created in its place.

    Returns:
        The database and, when the old file was damaged, one line saying what happened (else ``None``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return Database(path), None
    except sqlite3.DatabaseError as exc:
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        path.replace(aside)
        for suffix in _SIDE_FILES:
            side = Path(f"{path}{suffix}")
            if side.exists():
                side.replace(Path(f"{aside}{suffix}"))
        reason = f"{path}: damaged state database ({exc}); moved to {aside.name}, starting a new one"
        log.error(reason)
        return Database(path), reason

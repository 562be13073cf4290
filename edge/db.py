"""One SQLite connection shared by the frame loop and the MQTT thread, with durable transactions.

WAL with ``synchronous=FULL``: a commit is one fsync of the write-ahead log, so a committed frame
survives a killed process *and* a power cut (``NORMAL`` would only survive the former). The frame loop
commits at most once per frame that changed something, so the fsync is affordable.

Damage is found when the file is opened (``PRAGMA quick_check``), never at the first write hours
later: :func:`open_database` moves a damaged file aside and starts a new one, and says why in one
line. Only *damage* does that: SQLITE_CORRUPT, SQLITE_NOTADB or a failed ``quick_check``. Any other
error while opening (disk full, I/O error, a lock held by another process, a read-only mount) is
raised as it is, and the file is left exactly as it was: a healthy database must never be thrown
away because the disk was full for a moment.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.statedir import aside_name

__all__ = ["Damaged", "Database", "is_damage", "one_line", "open_database"]

log = logging.getLogger(__name__)

_SIDE_FILES = ("-wal", "-shm", "-journal")
_CORRUPT, _NOTADB = 11, 26  # SQLite's primary result codes for damage
# Python 3.10 has no sqlite_errorcode: SQLite's own messages for those two codes.
_DAMAGE_MESSAGES = ("database disk image is malformed", "file is not a database")


class Damaged(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found the database damaged."""


def one_line(text: str, limit: int = 400) -> str:
    """``text`` folded into one line (quick_check reports span lines), shortened to ``limit``."""
    folded = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return folded if len(folded) <= limit else folded[: limit - 1] + "…"


def is_damage(exc: BaseException) -> bool:
    """True for damage (moving the file aside is the cure), False for anything else (disk full, I/O...)."""
    if isinstance(exc, Damaged):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (_CORRUPT, _NOTADB)
    return any(m in str(exc) for m in _DAMAGE_MESSAGES)


class Database:
    """A SQLite connection guarded by a lock, safe to share between threads.

    Args:
        path: database file, or ``":memory:"``.

    Raises:
        sqlite3.Error: the file is damaged (:func:`is_damage`), or cannot be opened now.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            verdicts = [str(v) for (v,) in self.conn.execute("PRAGMA quick_check(10)")]
        except sqlite3.Error:
            self.conn.close()
            raise
        if verdicts != ["ok"]:
            self.conn.close()
            raise Damaged(f"quick_check: {one_line(' '.join(verdicts))}")

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
    """Open ``path``; a *damaged* file is moved aside (never over an earlier one) and a new one created.

    Returns:
        The database and, when the old file was damaged, one line saying what happened (else ``None``).

    Raises:
        sqlite3.Error: any error that is not damage. Side files this attempt created are removed
            again, so the directory is as it was.
    """
    sides = [Path(f"{path}{suffix}") for suffix in _SIDE_FILES]
    existed = {side for side in sides if side.exists()}
    try:
        return Database(path), None
    except sqlite3.Error as exc:
        if not is_damage(exc):
            for side in sides:  # empty -wal/-shm left by the failed open; nothing was written there
                if side not in existed:
                    side.unlink(missing_ok=True)
            raise
        aside = aside_name(path)
        path.replace(aside)
        for side in sides:
            if side.exists():
                side.replace(Path(f"{aside}{side.name[len(path.name) :]}"))
        reason = one_line(
            f"{path}: damaged state database ({exc}); moved to {aside.name}, starting a new one"
        )
        log.error(reason)
        return Database(path), reason

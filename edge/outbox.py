"""Durable SQLite outbox: every outbound MQTT message is stored here before it is sent.

A row is written by :meth:`Outbox.insert` (inside the caller's transaction, so a frame's counts and its
messages commit together: see :mod:`edge.state`) or :meth:`Outbox.put` (its own transaction), and
deleted by :meth:`Outbox.ack` only when the broker has acknowledged it (PUBACK). After a broker outage
or a crash the publisher sends :meth:`Outbox.pending` again, oldest first. The payload is stored as
final JSON text with its ``seq`` (and the state's ``epoch``) already inside, so a resend is
byte-identical and subscribers can de-duplicate by ``(site, device, epoch, seq)``.

Sequence numbers come from ``AUTOINCREMENT``: SQLite keeps the highest id ever used in
``sqlite_sequence`` even after the rows are deleted, so numbering continues across restarts.

The bound (``max_messages``) is kept with an in-memory depth, not a ``COUNT(*)`` per message (9 ms at
100k rows). Beyond it the oldest *droppable* messages go (counts and crossing events); alerts, epoch
messages and command results are ``keep`` rows and are never dropped: an alert raised during a long
outage is the one message a store manager must get. Drops are counted (the running total is in every
warning, at most one a minute) and, once dropping stops, one line sums up the whole episode.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.db import Database

__all__ = ["Message", "Outbox"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT    NOT NULL,
    payload TEXT    NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL,
    keep    INTEGER NOT NULL DEFAULT 0,
    created REAL    NOT NULL
)
"""
_WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class Message:
    """One stored message, ready to publish as is.

    Attributes:
        seq: per-device sequence number (also inside ``payload``).
        topic: full MQTT topic.
        payload: JSON text, byte-identical on every resend.
        qos: MQTT QoS.
        retain: MQTT retain flag.
        created: Unix time the message was queued.
    """

    seq: int
    topic: str
    payload: str
    qos: int
    retain: bool
    created: float


class Outbox:
    """A bounded, durable FIFO of outbound messages, safe to share between threads.

    Args:
        db: the shared :class:`~edge.db.Database`, or a path to open one of its own.
        max_messages: bound; beyond it the oldest droppable messages are dropped, logged and counted.
        on_drop: called with the number of messages dropped (e.g. to feed a metric).
        epoch: written into every payload beside ``seq`` (see :mod:`edge.state`).

    Example:
        >>> box = Outbox(":memory:", max_messages=10)
        >>> seq = box.put("lanecount/s/d/counts", {"total": 3})
        >>> [m.seq for m in box.pending(10)] == [seq]
        True
        >>> box.ack(seq); box.depth()
        0
    """

    def __init__(
        self,
        db: Database | str | Path,
        max_messages: int,
        on_drop: Callable[[int], None] | None = None,
        epoch: str | None = None,
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"Outbox.max_messages must be >= 1, got {max_messages}")
        self._own = not isinstance(db, Database)
        if isinstance(db, Database):
            self.db = db
        else:
            if str(db) != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            self.db = Database(db)
        self.max_messages = max_messages
        self.epoch = epoch
        self.dropped = 0
        self.on_drop = on_drop
        self._unreported = 0
        self._episode = 0  # dropped since dropping last started
        self._last_warning = 0.0
        with self.db.lock:
            self.db.conn.execute(_SCHEMA)
        self._depth = self._count()

    def _count(self) -> int:
        ((count,),) = self.db.query("SELECT COUNT(*) FROM outbox")
        return int(count)  # type: ignore[call-overload]

    def insert(
        self, conn: sqlite3.Connection, topic: str, payload: dict[str, Any], retain: bool, keep: bool
    ) -> int:
        """Store a message inside the caller's open transaction; return its sequence number.

        The payload is copied with ``seq`` (and ``epoch``) set and serialised once, so every resend
        carries exactly the same bytes. Call :meth:`enforce_bound` before the transaction commits.
        """
        cur = conn.execute(
            "INSERT INTO outbox (topic, payload, qos, retain, keep, created) VALUES (?, '', 1, ?, ?, ?)",
            (topic, int(retain), int(keep), time.time()),
        )
        seq = int(cur.lastrowid or 0)
        body = {**payload, "seq": seq}
        if self.epoch is not None:
            body["epoch"] = self.epoch
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        conn.execute("UPDATE outbox SET payload = ? WHERE seq = ?", (text, seq))
        self._depth += 1
        return seq

    def enforce_bound(self, conn: sqlite3.Connection) -> None:
        """Drop the oldest droppable messages beyond ``max_messages`` (inside the caller's transaction)."""
        excess = self._depth - self.max_messages
        if excess <= 0:
            if self._episode:
                self.report_drops("dropping stopped")
            return
        cur = conn.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE keep = 0 ORDER BY seq LIMIT ?)",
            (excess,),
        )
        dropped = max(0, cur.rowcount)
        self._depth -= dropped
        if dropped:
            self._report_drop(dropped)

    def resync(self) -> None:
        """Recount the rows (after a transaction that inserted was rolled back)."""
        self._depth = self._count()

    def put(
        self, topic: str, payload: dict[str, Any], qos: int = 1, retain: bool = False, keep: bool = False
    ) -> int:
        """Store one message in its own transaction; return its sequence number.

        Args:
            topic: full MQTT topic.
            payload: JSON-serialisable mapping (its own timestamps stay as given).
            qos: MQTT QoS; only 1 is used (kept for the signature's sake).
            retain: MQTT retain flag.
            keep: never dropped by the bound (alerts, epoch messages, command results).
        """
        del qos
        try:
            with self.db.transaction() as conn:
                seq = self.insert(conn, topic, payload, retain, keep)
                self.enforce_bound(conn)
        except BaseException:
            self.resync()
            raise
        return seq

    def _report_drop(self, n: int) -> None:
        self.dropped += n
        self._unreported += n
        self._episode += n
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            log.warning(
                "outbox full (%d messages): dropping the oldest counts and crossing events; "
                "%d dropped since the last warning, %d since dropping started, %d since start",
                self.max_messages,
                self._unreported,
                self._episode,
                self.dropped,
            )
            self._last_warning, self._unreported = now, 0
        if self.on_drop is not None:
            self.on_drop(n)

    def report_drops(self, why: str = "stopping") -> None:
        """Sum up a dropping episode in one line (when dropping stops, and at close)."""
        if not self._episode:
            return
        log.warning(
            "outbox: %s; %d messages were dropped since dropping started (%d since start)",
            why,
            self._episode,
            self.dropped,
        )
        self._episode = self._unreported = 0

    def pending(self, limit: int, after: int = 0) -> list[Message]:
        """Return up to ``limit`` stored messages with ``seq > after``, oldest first."""
        rows = self.db.query(
            "SELECT seq, topic, payload, qos, retain, created FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [Message(int(s), str(t), str(p), int(q), bool(r), float(c)) for s, t, p, q, r, c in rows]  # type: ignore[call-overload,arg-type]

    def ack(self, *seqs: int | Iterable[int]) -> None:
        """Delete acknowledged messages; unknown (e.g. already dropped) numbers are ignored."""
        flat: list[int] = []
        for s in seqs:
            flat.extend([s] if isinstance(s, int) else s)
        if not flat:
            return
        with self.db.transaction() as conn:
            deleted = sum(conn.execute("DELETE FROM outbox WHERE seq = ?", (s,)).rowcount for s in flat)
            self._depth -= max(0, deleted)

    def depth(self) -> int:
        """Number of messages not yet acknowledged."""
        return self._depth

    def last_seq(self) -> int:
        """Highest sequence number ever handed out (0 for a new outbox)."""
        rows = self.db.query("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def close(self) -> None:
        """Close the database if this outbox opened it; pending messages stay for the next run."""
        self.report_drops()
        if self._own:
            self.db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

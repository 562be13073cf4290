"""Durable SQLite outbox: every outbound MQTT message is stored here before it is sent.

A row is written (and committed) by :meth:`Outbox.put` and deleted by :meth:`Outbox.ack` only when the
broker has acknowledged it (PUBACK). After a broker outage or a crash the publisher sends
:meth:`Outbox.pending` again, oldest first. The payload is stored as final JSON text with its ``seq``
already inside, so a resend is byte-identical and subscribers can de-duplicate by device and ``seq``.

Durability: the database runs in WAL mode with ``synchronous=FULL``. ``NORMAL`` would already survive a
killed process (the WAL is in the OS page cache), but not a power cut, which is the common way a
checkout-lane box goes down. The message rate is a few per second at most, so an fsync per commit is
affordable; acks are batched by the caller (:meth:`Outbox.ack` takes several seqs) to keep it so.

Sequence numbers come from ``AUTOINCREMENT``: SQLite keeps the highest id ever used in
``sqlite_sequence`` even after the rows are deleted, so numbering continues across restarts and never
reuses a number.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Message", "Outbox"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT    NOT NULL,
    payload TEXT    NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL,
    created REAL    NOT NULL
)
"""


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
        path: SQLite file (created with its parent directory if missing).
        max_messages: bound; beyond it the oldest messages are dropped, logged and counted.
        on_drop: called with the number of messages dropped (e.g. to feed a metric).

    Example:
        >>> box = Outbox(":memory:", max_messages=10)
        >>> seq = box.put("lanecount/s/d/counts", {"total": 3})
        >>> [m.seq for m in box.pending(10)] == [seq]
        True
        >>> box.ack(seq); box.depth()
        0
    """

    def __init__(
        self, path: str | Path, max_messages: int, on_drop: Callable[[int], None] | None = None
    ) -> None:
        if max_messages < 1:
            raise ValueError(f"Outbox.max_messages must be >= 1, got {max_messages}")
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.max_messages = max_messages
        self.dropped = 0
        self._on_drop = on_drop
        self._lock = threading.Lock()
        # One connection shared by the publisher's threads, serialised by _lock.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def put(self, topic: str, payload: dict[str, Any], qos: int = 1, retain: bool = False) -> int:
        """Store a message; return its sequence number.

        The payload is copied with ``seq`` set to the new number and serialised once, so every
        resend carries exactly the same bytes.

        Args:
            topic: full MQTT topic.
            payload: JSON-serialisable mapping (its own timestamps stay as given).
            qos: MQTT QoS, 0-2.
            retain: MQTT retain flag.

        Returns:
            The message's sequence number (strictly increasing, also across restarts).
        """
        with self._tx():
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, '', ?, ?, ?)",
                (topic, qos, int(retain), time.time()),
            )
            seq = int(cur.lastrowid or 0)
            text = json.dumps({**payload, "seq": seq}, separators=(",", ":"), sort_keys=True)
            self._db.execute("UPDATE outbox SET payload = ? WHERE seq = ?", (text, seq))
            dropped = self._enforce_bound()
        if dropped:
            self._report_drop(dropped)
        return seq

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """Hold the lock and run one write transaction (one fsync)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _enforce_bound(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        excess = int(count) - self.max_messages
        if excess <= 0:
            return 0
        self._db.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (excess,)
        )
        return excess

    def _report_drop(self, n: int) -> None:
        self.dropped += n
        log.warning(
            "outbox full (%d messages): dropped the %d oldest; %d dropped since start",
            self.max_messages,
            n,
            self.dropped,
        )
        if self._on_drop is not None:
            self._on_drop(n)

    def pending(self, limit: int, after: int = 0) -> list[Message]:
        """Return up to ``limit`` stored messages with ``seq > after``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload, qos, retain, created FROM outbox"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [Message(int(s), t, p, int(q), bool(r), float(c)) for s, t, p, q, r, c in rows]

    def ack(self, *seqs: int | Iterable[int]) -> None:
        """Delete acknowledged messages; unknown (e.g. already dropped) numbers are ignored."""
        flat: list[int] = []
        for s in seqs:
            flat.extend([s] if isinstance(s, int) else s)
        if not flat:
            return
        with self._tx():
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in flat])

    def depth(self) -> int:
        """Number of messages not yet acknowledged."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def last_seq(self) -> int:
        """Highest sequence number ever handed out (0 for a new outbox)."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the database; pending messages stay for the next run."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

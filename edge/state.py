"""All durable state of the daemon in ONE SQLite database, changed by ONE transaction per frame.

``state_dir/state.db`` holds the cumulative counts, the interval counts, the alert state, the outbox,
the progress through a recording and the stream ``epoch``. :meth:`StateStore.commit` writes a frame's
crossings, its alert-state changes and its outbound messages together, so a kill at any instant leaves
either all of them or none: a counts message's ``cumulative`` always equals the crossing events queued
before it, and an alert whose state is ``raised`` always has its message queued.
:meth:`StateStore.queue_counts` takes the interval and queues the counts message in one transaction too.

The epoch: a random id created with the database and carried in every message that has a ``seq``.
Subscribers de-duplicate by ``(site, device, epoch, seq)``. A new epoch starts whenever continuity
with what was published before cannot be proven, because ``seq`` may then repeat:

* the database was damaged and moved aside (:func:`edge.db.open_database`), or deleted;
* the write-ahead log went missing after an unclean stop. SQLite deletes ``state.db-wal`` on a clean
  close only; after a crash it is still there and replays on open. So "not closed cleanly and no WAL
  file" means somebody removed it, and with it everything since the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.counts import Counts
from edge.db import Database, open_database
from edge.outbox import _SCHEMA as _OUTBOX_SCHEMA
from edge.outbox import Outbox

__all__ = ["FrameCommit", "OutMessage", "Progress", "StateStore"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    line TEXT NOT NULL, direction TEXT NOT NULL, class_name TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (line, direction, class_name)
);
CREATE TABLE IF NOT EXISTS interval (
    line TEXT NOT NULL, direction TEXT NOT NULL, class_name TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (line, direction, class_name)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alert_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    key TEXT PRIMARY KEY, frames INTEGER NOT NULL, finished INTEGER NOT NULL, updated REAL NOT NULL
);
"""
_UPSERT = (
    "INSERT INTO {table} (line, direction, class_name, n) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (line, direction, class_name) DO UPDATE SET n = n + excluded.n"
)


@dataclass(frozen=True)
class OutMessage:
    """A message to queue: ``kind`` is the topic below ``{prefix}/{site}/{device}/``.

    ``keep`` messages (alerts) are never dropped by the outbox bound.
    """

    kind: str
    payload: Mapping[str, Any]
    retain: bool = False
    keep: bool = False


@dataclass(frozen=True)
class Progress:
    """How far a recording has been counted: ``frames`` done, and whether it ``finished``."""

    source: str
    frames: int
    finished: bool = False


@dataclass(frozen=True)
class FrameCommit:
    """Everything one frame changed, committed in one transaction by :meth:`StateStore.commit`."""

    counts: Counts = field(default_factory=Counts)
    alert_state: Mapping[str, Any] = field(default_factory=dict)
    messages: Sequence[OutMessage] = ()
    progress: Progress | None = None

    def changes_state(self) -> bool:
        """True when anything other than progress would be written."""
        return bool(self.counts.total() or self.alert_state or self.messages)


class StateStore:
    """Counts, interval, alert state, outbox, recording progress and epoch in one database.

    Args:
        path: the database file (its directory is created).
        topic_base: ``{prefix}/{site}/{device}``; messages go to ``{topic_base}/{kind}``.
        envelope: fields added to every payload (``site``, ``device``).
        max_messages: outbox bound.
        now: clock for the first interval start (tests pass their own).

    Attributes:
        epoch: the current stream epoch.
        recovered: one line when the state was damaged or lost and a new epoch began, else ``None``.
        outbox: the outbox, sharing this database.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        topic_base: str = "lanecount/site/device",
        envelope: Mapping[str, Any] | None = None,
        max_messages: int = 100_000,
        now: float | None = None,
    ) -> None:
        path = Path(path)
        wal_was_there = Path(f"{path}-wal").exists()
        new = not path.exists()
        self.db, self.recovered = open_database(path)
        with self.db.lock:
            self.db.conn.executescript(_SCHEMA)
        if new:
            _migrate_v1(self.db, path.parent)
        self.topic_base = topic_base
        self.envelope = dict(envelope or {})
        self.epoch = self._start_epoch(wal_was_there, time.time() if now is None else now)
        self.outbox = Outbox(self.db, max_messages, epoch=self.epoch)

    # --- epoch ---------------------------------------------------------------------------------

    def _start_epoch(self, wal_was_there: bool, now: float) -> str:
        meta = self._meta()
        epoch = meta.get("epoch")
        if epoch is None:  # a new database
            epoch = secrets.token_hex(8)
            self._set_meta(epoch=epoch, interval_start=now)
        elif not meta.get("clean", False) and not wal_was_there:
            epoch = secrets.token_hex(8)
            self.recovered = (
                f"{self.db.path}: the write-ahead log is missing after an unclean stop; what was recorded "
                f"since the last checkpoint is lost; new epoch {epoch}"
            )
            log.error(self.recovered)
        self._set_meta(epoch=epoch, clean=False)
        # Put "not closed cleanly" into the database file itself, not only into the WAL: otherwise a
        # WAL deleted after a crash would take this mark with it and the loss would go unnoticed.
        with self.db.lock:
            self.db.conn.execute("PRAGMA wal_checkpoint(FULL)")
        return str(epoch)

    def _meta(self) -> dict[str, Any]:
        return {str(k): json.loads(str(v)) for k, v in self.db.query("SELECT key, value FROM meta")}

    def _set_meta(self, **values: Any) -> None:
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    # --- the frame's transaction ---------------------------------------------------------------

    def commit(self, change: FrameCommit) -> None:
        """Write one frame's counts, alert state, messages and progress in one transaction.

        Raises:
            sqlite3.Error: the write failed (e.g. disk full); nothing of this frame was written.
        """
        try:
            with self.db.transaction() as conn:
                rows = [(*key, n) for key, n in change.counts.items()]
                if rows:
                    conn.executemany(_UPSERT.format(table="counts"), rows)
                    conn.executemany(_UPSERT.format(table="interval"), rows)
                if change.alert_state:
                    conn.executemany(
                        "INSERT OR REPLACE INTO alert_state (key, value) VALUES (?, ?)",
                        [(k, json.dumps(v, sort_keys=True)) for k, v in change.alert_state.items()],
                    )
                for m in change.messages:
                    self._insert(conn, m)
                self.outbox.enforce_bound(conn)
                if change.progress is not None:
                    p = change.progress
                    conn.execute(
                        "INSERT OR REPLACE INTO sources (key, frames, finished, updated) VALUES (?, ?, ?, ?)",
                        (p.source, p.frames, int(p.finished), time.time()),
                    )
        except BaseException:
            self.outbox.resync()
            raise

    def _body(self, m: OutMessage) -> dict[str, Any]:
        return {"timestamp": time.time(), **m.payload, **self.envelope}

    def _insert(self, conn: Any, m: OutMessage) -> int:
        return self.outbox.insert(conn, f"{self.topic_base}/{m.kind}", self._body(m), m.retain, m.keep)

    def queue(self, message: OutMessage) -> int:
        """Queue one message in its own transaction; return its ``seq``."""
        topic = f"{self.topic_base}/{message.kind}"
        return self.outbox.put(topic, self._body(message), retain=message.retain, keep=message.keep)

    def queue_counts(self, now: float | None = None, lines: Sequence[str] = ()) -> int:
        """Take the interval and queue the ``counts`` message, in one transaction; return its ``seq``."""
        end = time.time() if now is None else now
        try:
            with self.db.transaction() as conn:
                interval = Counts.from_rows(
                    conn.execute("SELECT line, direction, class_name, n FROM interval")
                )
                total = Counts.from_rows(conn.execute("SELECT line, direction, class_name, n FROM counts"))
                row = conn.execute("SELECT value FROM meta WHERE key = 'interval_start'").fetchone()
                start = float(json.loads(row[0])) if row else end
                conn.execute("DELETE FROM interval")
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('interval_start', ?)",
                    (json.dumps(end),),
                )
                payload = {
                    "timestamp": end,
                    "period_start": start,
                    "period_end": end,
                    "cumulative": total.to_json(lines),
                    "interval": interval.to_json(lines),
                }
                seq = self._insert(conn, OutMessage("counts", payload))
                self.outbox.enforce_bound(conn)
        except BaseException:
            self.outbox.resync()
            raise
        return seq

    # --- reads and commands ----------------------------------------------------------------------

    def totals(self) -> Counts:
        """Cumulative counts since the last reset."""
        return Counts.from_rows(self.db.query("SELECT line, direction, class_name, n FROM counts"))

    def interval(self) -> Counts:
        """Counts since the last counts message, without taking them."""
        return Counts.from_rows(self.db.query("SELECT line, direction, class_name, n FROM interval"))

    def reset(self, line: str | None = None) -> int:
        """Zero the counts of one line (or all lines); return how many counters were removed."""
        where, args = ("", ()) if line is None else (" WHERE line = ?", (line,))
        with self.db.transaction() as conn:
            removed = conn.execute(f"DELETE FROM counts{where}", args).rowcount
            conn.execute(f"DELETE FROM interval{where}", args)
        return int(removed)

    def alert_state(self) -> dict[str, Any]:
        """Every saved alert-state value by key."""
        return {str(k): json.loads(str(v)) for k, v in self.db.query("SELECT key, value FROM alert_state")}

    def progress(self, source: str) -> Progress | None:
        """How far ``source`` was counted, or ``None`` when it never was."""
        rows = self.db.query("SELECT frames, finished FROM sources WHERE key = ?", (source,))
        if not rows:
            return None
        frames, finished = rows[0]
        return Progress(source, int(frames), bool(finished))  # type: ignore[call-overload]

    def forget_progress(self, source: str) -> None:
        """Count ``source`` again from its first frame (``--recount``)."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM sources WHERE key = ?", (source,))

    def close(self) -> None:
        """Mark a clean stop, then close (the close checkpoints the WAL into the database)."""
        try:
            self._set_meta(clean=True)
        except sqlite3.Error as exc:  # e.g. the full disk that ended the run: the next start will say so
            log.error("%s: could not mark a clean stop: %s", self.db.path, exc)
        finally:
            self.db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _migrate_v1(db: Database, folder: Path) -> None:
    """Bring the counts, alert state and unsent messages of lanecount 0.1's two databases along.

    0.1 kept ``counts.db`` (counts, interval, state) and ``outbox.db`` beside each other; they are
    imported once into a new ``state.db`` and renamed ``*.migrated``. Sequence numbers continue.
    """
    counts, outbox = folder / "counts.db", folder / "outbox.db"
    if not counts.exists() and not outbox.exists():
        return
    with db.lock:  # ATTACH is not allowed inside a transaction
        for name, path in (("c", counts), ("o", outbox)):
            if path.exists():
                db.conn.execute(f"ATTACH DATABASE ? AS {name}", (str(path),))
        try:
            with db.transaction() as conn:
                if counts.exists():
                    for table in ("counts", "interval"):
                        conn.execute(
                            f"INSERT INTO {table} (line, direction, class_name, n)"
                            f" SELECT line, direction, class_name, n FROM c.{table}"
                        )
                    conn.execute(
                        "INSERT INTO alert_state (key, value)"
                        " SELECT key, value FROM c.state WHERE key LIKE 'alert:%'"
                    )
                    conn.execute(
                        "INSERT OR REPLACE INTO meta SELECT key, value FROM c.state"
                        " WHERE key = 'interval_start'"
                    )
                if outbox.exists():
                    conn.execute(_OUTBOX_SCHEMA)
                    conn.execute(
                        "INSERT INTO outbox (seq, topic, payload, qos, retain, keep, created)"
                        " SELECT seq, topic, payload, qos, retain, topic LIKE '%/alerts/%', created"
                        " FROM o.outbox"
                    )
                    # sqlite_sequence has no key on name: replace the row the inserts created.
                    conn.execute("DELETE FROM main.sqlite_sequence WHERE name = 'outbox'")
                    conn.execute(
                        "INSERT INTO main.sqlite_sequence (name, seq)"
                        " SELECT 'outbox', seq FROM o.sqlite_sequence WHERE name = 'outbox'"
                    )
        finally:
            for name, path in (("c", counts), ("o", outbox)):
                if path.exists():
                    db.conn.execute(f"DETACH DATABASE {name}")
    for old in (counts, outbox):
        for suffix in ("", "-wal", "-shm"):
            f = Path(f"{old}{suffix}")
            if f.exists():
                f.replace(Path(f"{old}.migrated{suffix}"))
    log.warning(
        "%s: imported the counts and outbox of lanecount 0.1 (%s, %s)", folder, counts.name, outbox.name
    )

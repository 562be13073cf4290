"""All durable state of the daemon in ONE SQLite database, changed by ONE transaction per frame.

``state_dir/state.db`` holds the cumulative counts (since the last ``reset``), the lifetime counts
(``counted``: never reset), the interval counts, the alert state, the outbox, the progress through a
recording, the commands answered, and the stream ``epoch``. :meth:`StateStore.commit` writes a
frame's crossings, its alert-state changes and its outbound messages together, so a kill at any
instant leaves either all of them or none: a counts message's ``cumulative`` always equals the
crossing events queued before it, and an alert whose state is ``raised`` always has its message
queued. A command commits the same way: its effect, its record and its ``cmd/result`` reply.

Every start begins a new epoch (:mod:`edge.epochs`), and its first message says what the start
found. Counting periods are aligned to the clock (:mod:`edge.periods`) and contiguous along the
database: :meth:`StateStore.roll` takes the interval and queues the counts messages in one
transaction, and the next period starts exactly where the last one ended, across restarts too.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge.changes import CommandRecord, FrameCommit, OutMessage, Progress, Reset
from edge.counts import Counts
from edge.db import open_database
from edge.epochs import EpochStart, Found, begin_epoch, epoch_payload
from edge.outbox import _SCHEMA as _OUTBOX_SCHEMA
from edge.outbox import Outbox
from edge.periods import next_boundary, periods_due
from edge.statedir import DirLock, fsync_write, moved_aside, read_marker
from edge.upgrade import import_v1, init_counted

__all__ = ["CommandRecord", "FrameCommit", "OutMessage", "Progress", "Reset", "StateStore"]

log = logging.getLogger(__name__)

_COUNTERS = "line TEXT NOT NULL, direction TEXT NOT NULL, class_name TEXT NOT NULL, n INTEGER NOT NULL"
_SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {t} ({_COUNTERS}, PRIMARY KEY (line, direction, class_name))"
    for t in ("counts", "interval", "counted")
] + [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS alert_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sources"
    " (key TEXT PRIMARY KEY, frames INTEGER NOT NULL, finished INTEGER NOT NULL, updated REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, command TEXT NOT NULL, ok INTEGER NOT NULL,"
    " message TEXT NOT NULL, created REAL NOT NULL)",
    _OUTBOX_SCHEMA,
]
_UPSERT = (
    "INSERT INTO {table} (line, direction, class_name, n) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (line, direction, class_name) DO UPDATE SET n = n + excluded.n"
)
_COMMANDS_KEPT_S = 30 * 86400  # a command id is answered from its record for 30 days


class StateStore:
    """Counts, interval, alert state, outbox, progress, commands and epoch in one database.

    Args:
        path: the database file (its directory is created and locked: one store per directory).
        topic_base: ``{prefix}/{site}/{device}``; messages go to ``{topic_base}/{kind}``.
        envelope: fields added to every payload (``site``, ``device``).
        max_messages: outbox bound.
        now: clock for the first interval start of a new database (tests pass their own).
        publish: queue the epoch and counts messages (the daemon passes ``mqtt.enabled``); without,
            the periods still roll.

    Attributes:
        epoch: this start's epoch (new at every start).
        start: how the start found the state (:class:`~edge.epochs.EpochStart`).
        recovered: one line when earlier state was damaged or lost, else ``None``.
        outbox: the outbox, sharing this database.

    Raises:
        edge.statedir.StateInUse: another process holds the directory.
        sqlite3.Error, OSError: the state cannot be opened now (disk full, I/O error, read-only...);
            nothing was changed.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        topic_base: str = "lanecount/site/device",
        envelope: Mapping[str, Any] | None = None,
        max_messages: int = 100_000,
        now: float | None = None,
        publish: bool = True,
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.topic_base = topic_base
        self.envelope = dict(envelope or {})
        self.publish = publish
        self._dir_lock = DirLock(path.with_suffix(".lock"))
        try:
            found = self._open(path)
            self.start: EpochStart = begin_epoch(found)
            # The marker first: if the commit below never happens, the database still carries the
            # epoch the marker calls "previous", and nothing was published in the new one.
            prev = self.start.previous["epoch"] if self.start.previous else None
            marker = {"epoch": self.start.epoch, "previous": prev, "started": time.time()}
            fsync_write(path.with_suffix(".epoch"), json.dumps(marker) + "\n")
            self.outbox = Outbox(self.db, max_messages, epoch=self.start.epoch)
            self._begin(time.time() if now is None else now)
        except BaseException:
            if hasattr(self, "db"):
                self.db.close()
            self._dir_lock.release()
            raise
        self.epoch = self.start.epoch
        self.recovered = self.start.recovered
        if self.recovered:
            log.error(self.recovered)

    # --- start-up --------------------------------------------------------------------------------

    def _open(self, path: Path) -> Found:
        marker = read_marker(path.with_suffix(".epoch"))
        size = path.stat().st_size if path.exists() else None
        wal_missing = not Path(f"{path}-wal").exists()
        self.db, damaged = open_database(path)
        with self.db.lock:
            tables = {r[0] for r in self.db.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        with self.db.transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            if "counts" in tables:
                init_counted(conn, had_counted="counted" in tables)
        import_v1(self.db, path.parent)
        return Found(
            db=str(path),
            meta=self._meta(),
            last_seq=self._last_seq(),
            marker=marker,
            damaged=damaged,
            file_state="missing" if size is None else "empty" if size == 0 else "present",
            aside=tuple(p.name for p in moved_aside(path)),
            wal_missing=wal_missing,
        )

    def _begin(self, now: float) -> None:
        """Commit the new epoch (and its first message), and mark the database as not closed cleanly."""
        try:
            with self.db.transaction() as conn:
                meta = {"epoch": self.start.epoch, "clean": False}
                if self._get(conn, "interval_start") is None:
                    meta["interval_start"] = now
                self._put(conn, **meta)
                conn.execute("DELETE FROM commands WHERE created < ?", (time.time() - _COMMANDS_KEPT_S,))
                if self.publish:
                    counted = Counts.from_rows(
                        conn.execute("SELECT line, direction, class_name, n FROM counted")
                    )
                    start = float(self._get(conn, "interval_start"))
                    body = epoch_payload(self.start, counted.to_json(), start, time.time())
                    self._insert(conn, OutMessage("epoch", body, keep=True))
                    self.outbox.enforce_bound(conn)
        except BaseException:
            self.outbox.resync()
            raise
        # Put "not closed cleanly" into the database file itself, not only into the WAL: otherwise a
        # WAL deleted after a crash would take this mark with it and the loss would go unnoticed.
        with self.db.lock:
            self.db.conn.execute("PRAGMA wal_checkpoint(FULL)")

    def _meta(self) -> dict[str, Any]:
        return {str(k): json.loads(str(v)) for k, v in self.db.query("SELECT key, value FROM meta")}

    @staticmethod
    def _get(conn: sqlite3.Connection, key: str) -> Any:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    @staticmethod
    def _put(conn: sqlite3.Connection, **values: Any) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def _last_seq(self) -> int:
        rows = self.db.query("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    # --- the frame's transaction ---------------------------------------------------------------

    def commit(self, change: FrameCommit) -> None:
        """Write one frame's (or command's) changes, messages and progress in one transaction.

        Raises:
            sqlite3.Error: the write failed (e.g. disk full); nothing of this frame was written.
        """
        try:
            with self.db.transaction() as conn:
                rows = [(*key, n) for key, n in change.counts.items()]
                if rows:
                    for table in ("counts", "interval", "counted"):
                        conn.executemany(_UPSERT.format(table=table), rows)
                if change.reset is not None:
                    line = change.reset.line
                    where, args = ("", ()) if line is None else (" WHERE line = ?", (line,))
                    conn.execute(f"DELETE FROM counts{where}", args)
                if change.alert_state:
                    conn.executemany(
                        "INSERT OR REPLACE INTO alert_state (key, value) VALUES (?, ?)",
                        [(k, json.dumps(v, sort_keys=True)) for k, v in change.alert_state.items()],
                    )
                for m in change.messages:
                    self._insert(conn, m)
                self.outbox.enforce_bound(conn)
                if change.record is not None:
                    r = change.record
                    conn.execute(
                        "INSERT INTO commands (id, command, ok, message, created) VALUES (?, ?, ?, ?, ?)",
                        (r.id, r.command, int(r.ok), r.message, time.time()),
                    )
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

    # --- counting periods ------------------------------------------------------------------------

    def roll(self, now: float, period_s: float, lines: Sequence[str] = ()) -> float:
        """Close the periods due at ``now`` (:func:`~edge.periods.periods_due`); return the next boundary.

        In one transaction: the counts messages (unless ``publish`` is off: MQTT off), the interval
        taken, the next interval's start and end.

        Raises:
            sqlite3.Error: the write failed; nothing was taken or queued.
        """
        with self.db.lock:
            start, end, pinned = self._period(period_s)
            due = periods_due(start, end, now, period_s)
            if not due and pinned:
                return end
            try:
                with self.db.transaction() as conn:
                    if due:
                        self._report(conn, due, now, lines)
                        start = due[-1][1]
                        end = next_boundary(start, period_s)
                    self._put(conn, interval_start=start, interval_end=end)
                    self.outbox.enforce_bound(conn)
            except BaseException:
                self.outbox.resync()
                raise
        return end

    def _period(self, period_s: float) -> tuple[float, float, bool]:
        """The current interval's start and end, and whether the end is stored (pinned) yet."""
        meta = {
            str(k): v for k, v in self.db.query("SELECT key, value FROM meta WHERE key LIKE 'interval_%'")
        }
        start = float(json.loads(str(meta["interval_start"])))
        if "interval_end" in meta:
            return start, float(json.loads(str(meta["interval_end"]))), True
        return start, next_boundary(start, period_s), False

    def _report(
        self,
        conn: sqlite3.Connection,
        due: list[tuple[float, float]],
        now: float,
        lines: Sequence[str],
    ) -> None:
        if self.publish:
            interval = Counts.from_rows(conn.execute("SELECT line, direction, class_name, n FROM interval"))
            total = Counts.from_rows(conn.execute("SELECT line, direction, class_name, n FROM counts"))
            counted = Counts.from_rows(conn.execute("SELECT line, direction, class_name, n FROM counted"))
            for i, (a, b) in enumerate(due):
                payload = {
                    "timestamp": now,
                    "period_start": a,
                    "period_end": b,
                    "cumulative": total.to_json(lines),
                    "interval": (interval if i == 0 else Counts()).to_json(lines),
                    "counted": counted.to_json(lines),
                }
                self._insert(conn, OutMessage("counts", payload))
        conn.execute("DELETE FROM interval")

    def shorten_period(self, end: float) -> float:
        """End the current period at ``end`` if that is earlier (a reload shortened the period)."""
        with self.db.transaction() as conn:
            current = self._get(conn, "interval_end")
            if current is None or end < float(current):
                self._put(conn, interval_end=end)
                current = end
        return float(current)

    # --- reads --------------------------------------------------------------------------------------

    def _counters(self, table: str) -> Counts:
        return Counts.from_rows(self.db.query(f"SELECT line, direction, class_name, n FROM {table}"))

    def totals(self) -> Counts:
        """Cumulative counts since the last reset."""
        return self._counters("counts")

    def counted(self) -> Counts:
        """Everything this database has counted since it was created (never reset)."""
        return self._counters("counted")

    def interval(self) -> Counts:
        """Counts since the last counts period, without taking them."""
        return self._counters("interval")

    def alert_state(self) -> dict[str, Any]:
        """Every saved alert-state value by key."""
        return {str(k): json.loads(str(v)) for k, v in self.db.query("SELECT key, value FROM alert_state")}

    def command_record(self, command_id: str) -> CommandRecord | None:
        """The answer given to the command with this ``id``, or ``None`` when it was never answered."""
        rows = self.db.query("SELECT command, ok, message FROM commands WHERE id = ?", (command_id,))
        if not rows:
            return None
        command, ok, message = rows[0]
        return CommandRecord(command_id, str(command), bool(ok), str(message))

    def reset(self, line: str | None = None) -> int:
        """Zero the counts of one line (or all lines); return how many counters were removed."""
        n = sum(1 for (ln, _, _), _ in self.totals().items() if line is None or ln == line)
        self.commit(FrameCommit(reset=Reset(line)))
        return n

    # --- recordings ---------------------------------------------------------------------------------

    def progress(self, source: str) -> Progress | None:
        """How far ``source`` was counted, or ``None`` when it never was."""
        rows = self.db.query("SELECT frames, finished FROM sources WHERE key = ?", (source,))
        if not rows:
            return None
        frames, finished = rows[0]
        return Progress(source, int(frames), bool(finished))  # type: ignore[call-overload]

    def adopt_progress(self, old: str, new: str) -> None:
        """Carry a recording's progress stored under an earlier identity over to ``new``."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE sources SET key = ? WHERE key = ?"
                " AND NOT EXISTS (SELECT 1 FROM sources WHERE key = ?)",
                (new, old, new),
            )

    def forget_progress(self, source: str) -> None:
        """Count ``source`` again from its first frame (``--recount``)."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM sources WHERE key = ?", (source,))

    # --- stop ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Mark a clean stop, then close (the close checkpoints the WAL) and release the directory."""
        try:
            self.outbox.report_drops()
            with self.db.transaction() as conn:
                self._put(conn, clean=True)
        except sqlite3.Error as exc:  # e.g. the full disk that ended the run: the next start will say so
            log.error("%s: could not mark a clean stop: %s", self.db.path, exc)
        finally:
            self.db.close()
            self._dir_lock.release()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

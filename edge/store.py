"""Durable counts and alert state (SQLite), so a restart or a SIGKILL continues where it stopped.

Two count tables share one shape ``(line, class_name, direction, n)``: ``counts`` holds the cumulative
totals, ``interval`` the counts since the last :meth:`CountStore.take_interval`. Both are updated in
the same transaction per batch of crossings, so a killed process never leaves them disagreeing. A
key/value table of JSON values holds the alert engine's state (:mod:`edge.alerts`).

WAL with ``synchronous=FULL``, as in :mod:`edge.outbox`: commits happen once per frame that has
crossings (a few per second at most), so paying an fsync for power-cut safety is cheap.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = ["CountStore", "CrossingLike", "Interval", "StateDB", "class_name"]

Totals = dict[str, dict[str, dict[str, int]]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    line TEXT NOT NULL, class_name TEXT NOT NULL, direction TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (line, class_name, direction)
);
CREATE TABLE IF NOT EXISTS interval (
    line TEXT NOT NULL, class_name TEXT NOT NULL, direction TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (line, class_name, direction)
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_UPSERT = (
    "INSERT INTO {table} (line, class_name, direction, n) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (line, class_name, direction) DO UPDATE SET n = n + excluded.n"
)


class CrossingLike(Protocol):
    """What the store and the alert engine read from a crossing (``edge.counting.Crossing``)."""

    # Read-only properties, so a frozen dataclass with ``direction: Literal["in", "out"]`` matches.
    @property
    def line(self) -> str: ...  # noqa: D102
    @property
    def track_id(self) -> int: ...  # noqa: D102
    @property
    def class_id(self) -> int: ...  # noqa: D102
    @property
    def direction(self) -> str: ...  # noqa: D102
    @property
    def timestamp(self) -> float: ...  # noqa: D102


@dataclass(frozen=True)
class Interval:
    """Counts of one publish period.

    Attributes:
        counts: ``{line: {"in": {class: n}, "out": {class: n}}}``.
        start: Unix time the period began (persisted, so it spans a restart).
        end: Unix time the period was taken.
    """

    counts: Totals
    start: float
    end: float


def class_name(names: Sequence[str] | Mapping[int, str], class_id: int) -> str:
    """Name of ``class_id``; ``class_<id>`` when the model's names do not cover it."""
    try:
        return str(names[class_id])
    except (IndexError, KeyError):
        return f"class_{class_id}"


class CountStore:
    """Cumulative and per-interval crossing counts plus alert state, in one SQLite file.

    Args:
        path: database file (its directory is created), or ``":memory:"``.
        now: clock for the interval start of a new database (tests pass their own).

    Example:
        >>> store = CountStore(":memory:")
        >>> store.add_counts([("entry", "milk", "in")])
        >>> store.totals()
        {'entry': {'in': {'milk': 1}, 'out': {}}}
    """

    def __init__(self, path: str | Path, now: float | None = None) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        if self.get_state("interval_start") is None:
            self.set_state("interval_start", time.time() if now is None else now)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def add(self, crossings: Iterable[CrossingLike], names: Sequence[str] | Mapping[int, str]) -> int:
        """Count a batch of crossings in one transaction.

        Args:
            crossings: objects with ``line``, ``class_id`` and ``direction`` (``"in"``/``"out"``).
            names: class names of the model, indexed by class id.

        Returns:
            The number of crossings counted.
        """
        keys = [(c.line, class_name(names, int(c.class_id)), str(c.direction)) for c in crossings]
        self.add_counts(keys)
        return len(keys)

    def add_counts(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Add one to each ``(line, class_name, direction)`` key, cumulative and interval, atomically."""
        merged: dict[tuple[str, str, str], int] = {}
        for key in keys:
            merged[key] = merged.get(key, 0) + 1
        if not merged:
            return
        rows = [(*k, n) for k, n in merged.items()]
        with self._tx() as db:
            db.executemany(_UPSERT.format(table="counts"), rows)
            db.executemany(_UPSERT.format(table="interval"), rows)

    def _read(self, table: str, line: str | None = None) -> Totals:
        with self._lock:
            rows = self._db.execute(
                f"SELECT line, class_name, direction, n FROM {table} ORDER BY line, class_name"
            ).fetchall()
        out: Totals = {}
        for ln, cls, direction, n in rows:
            if line is None or ln == line:
                out.setdefault(ln, {"in": {}, "out": {}}).setdefault(direction, {})[cls] = int(n)
        return out

    def totals(self, line: str | None = None) -> Totals:
        """Cumulative counts ``{line: {"in": {class: n}, "out": {class: n}}}`` (one line if given)."""
        return self._read("counts", line)

    def interval(self) -> Totals:
        """Counts since the last :meth:`take_interval`, without resetting them."""
        return self._read("interval")

    def take_interval(self, now: float | None = None) -> Interval:
        """Return the counts since the last call and start a new interval, atomically."""
        end = time.time() if now is None else now
        with self._tx() as db:
            rows = db.execute("SELECT line, class_name, direction, n FROM interval").fetchall()
            start_row = db.execute("SELECT value FROM state WHERE key = 'interval_start'").fetchone()
            db.execute("DELETE FROM interval")
            db.execute(
                "INSERT OR REPLACE INTO state (key, value) VALUES ('interval_start', ?)", (json.dumps(end),)
            )
        counts: Totals = {}
        for ln, cls, direction, n in sorted(rows):
            counts.setdefault(ln, {"in": {}, "out": {}}).setdefault(direction, {})[cls] = int(n)
        start = float(json.loads(start_row[0])) if start_row else end
        return Interval(counts, start, end)

    def reset(self, line: str | None = None) -> int:
        """Zero the counts of one line (or all lines); return how many counters were removed."""
        where, args = ("", ()) if line is None else (" WHERE line = ?", (line,))
        with self._tx() as db:
            removed = db.execute(f"DELETE FROM counts{where}", args).rowcount
            db.execute(f"DELETE FROM interval{where}", args)
        return int(removed)

    def counts_message(self, now: float | None = None) -> dict[str, Any]:
        """Take the interval and build the ``counts`` payload (see ``edge/schemas/counts.json``)."""
        iv = self.take_interval(now)
        return {
            "timestamp": iv.end,
            "period_start": iv.start,
            "period_end": iv.end,
            "cumulative": self.totals(),
            "interval": iv.counts,
        }

    # --- key/value state for the alert engine -------------------------------------------------

    def get_state(self, key: str) -> Any:
        """Stored JSON value of ``key``, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_state(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key`` (committed at once)."""
        self.set_states({key: value})

    def set_states(self, values: Mapping[str, Any]) -> None:
        """Store several values in one transaction."""
        if not values:
            return
        rows = [(k, json.dumps(v, sort_keys=True)) for k, v in values.items()]
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", rows)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> CountStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


StateDB = CountStore

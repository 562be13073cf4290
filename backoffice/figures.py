"""Counts messages → hourly figures that hold, and the spans where the stream cannot prove them.

The rules (device protocol 2: edge/schemas/counts.json and epoch.json describe it):

1. **Each counts message is counted once**, in the UTC hour of its period (a period never spans a quarter
   hour). Its ``interval`` is exact for that period. The ledger's key (epoch, seq) makes it once.
2. **Chain.** Along one state database, consecutive counts messages j, k have
   ``k.period_start == j.period_end``. When counts messages were lost in between (the device's outbox
   bound dropped them), their total per line/direction/class is ``k.counted - k.interval - j.counted``
   and their time is ``[j.period_end, k.period_start)``: the *stretch*. A stretch inside one hour is
   added to that hour (exact). Across hours, a key whose crossing events received in the stretch
   account for its whole missing total is spread by the events' times (exact); otherwise the key's
   total is *unattributed*: reported with its time span, never guessed into an hour.
3. **Epochs.** An epoch continued from ``previous = (P, L)`` chains to P's last counts message with
   seq <= L. When P published beyond L (a restored backup: a *fork*) or the state was recovered, the
   epoch is a *break*: its carried-over period and catch-up (periods ending by its start, and the one
   starting at its ``interval_start``) replay what P had counted and are not counted again; the time
   from P's last report to the new epoch's start is a *transition span*: unprovable, with a lower bound
   from P's crossing events received in it. An epoch whose first counts message has no predecessor
   (no epoch message yet, or a new database) gets a transition span from the device's earlier
   coverage to it when there is a hole.
4. ``counted`` is never reset, so a ``reset`` command changes nothing here.

Storage: each ``counts_periods`` row records how it was settled (role, gap, the unattributed remainder)
and exactly what it added to ``hourly`` (``contrib``; NULL means "its interval, in its own hour"), so a
late message, a late event or a late epoch message re-settles the rows it touches: subtract the old
contribution, add the new one. The result does not depend on the order messages arrive in (a test
permutes arrivals and compares).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Connection

from backoffice import tables as t

__all__ = [
    "Deltas",
    "EpochState",
    "Key",
    "Period",
    "Settler",
    "attribute",
    "flat",
    "hour_of",
    "nest",
]

Key = tuple[str, str, str]  # line, direction, class
Deltas = dict[tuple[int, int, Key], int]  # (device_id, hour, key) -> n to add to hourly
HOUR = 3600
OPEN_GAPS = "counts_periods.gap IN ('partial', 'unknown')"  # the predicate of ix_counts_periods_open
_MAX_HOPS = 32  # epochs walked back to find a chain predecessor


def hour_of(ts: float) -> int:
    """Start of the UTC hour holding ``ts``."""
    return int(ts // HOUR) * HOUR


def flat(doc: Mapping[str, Any] | None) -> dict[Key, int]:
    """``{line: {in: {class: n}}}`` → ``{(line, 'in', class): n}`` (zeros left out)."""
    out: dict[Key, int] = {}
    for line, by_dir in (doc or {}).items():
        for direction, by_class in by_dir.items():
            for cls, n in by_class.items():
                if n:
                    out[(line, direction, cls)] = int(n)
    return out


def nest(counts: Mapping[Key, int]) -> dict[str, dict[str, dict[str, int]]]:
    """The inverse of :func:`flat`."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for (line, direction, cls), n in sorted(counts.items()):
        out.setdefault(line, {"in": {}, "out": {}}).setdefault(direction, {})[cls] = n
    return out


def attribute(
    totals: Mapping[Key, int], start: float, end: float, events: Iterable[tuple[float, Key]]
) -> tuple[dict[tuple[int, Key], int], dict[Key, int]]:
    """Spread ``totals`` (counted in ``[start, end)``) over UTC hours.

    Returns:
        (exact part per (hour, key), unattributed remainder per key). Within one hour everything is
        exact; across hours a key is exact only when its events in the span number its total.

    Example:
        >>> attribute({("l", "in", "a"): 2}, 7200.0, 7300.0, [])
        ({(7200, ('l', 'in', 'a')): 2}, {})
        >>> attribute({("l", "in", "a"): 2}, 3000.0, 4000.0, [(3500.0, ("l", "in", "a"))])
        ({}, {('l', 'in', 'a'): 2})
    """
    exact: dict[tuple[int, Key], int] = {}
    rest: dict[Key, int] = {}
    if not totals:
        return exact, rest
    first = hour_of(start)
    if end <= first + HOUR:
        return {(first, k): n for k, n in totals.items() if n}, rest
    times: dict[Key, list[float]] = defaultdict(list)
    for ts, key in events:
        if start <= ts < end and key in totals:
            times[key].append(ts)
    for key, n in totals.items():
        if n <= 0:
            continue
        if len(times[key]) == n:
            for ts in times[key]:
                exact[(hour_of(ts), key)] = exact.get((hour_of(ts), key), 0) + 1
        else:
            rest[key] = n
    return exact, rest


@dataclass
class Period:
    """One ``counts_periods`` row (what arrived, and how it is settled now)."""

    epoch_id: int
    seq: int
    device_id: int
    start: float
    end: float
    interval: dict[Key, int]
    counted: dict[Key, int] | None
    role: str = "counted"
    gap: str = "pending"
    gap_start: float | None = None
    open_counts: dict[Key, int] | None = None
    contrib: dict[tuple[int, Key], int] | None = None  # None: the interval in hour_of(start)

    def contribution(self) -> dict[tuple[int, Key], int]:
        """What this row adds to ``hourly``."""
        if self.role != "counted" or self.gap == "pending":
            return {}
        if self.contrib is None:
            h = hour_of(self.start)
            return {(h, k): n for k, n in self.interval.items()}
        return self.contrib

    def row(self) -> dict[str, Any]:
        """Column values for ``counts_periods``."""
        return {
            "epoch_id": self.epoch_id,
            "seq": self.seq,
            "device_id": self.device_id,
            "period_start": self.start,
            "period_end": self.end,
            "interval": json.dumps(nest(self.interval), separators=(",", ":")),
            "counted": None
            if self.counted is None
            else json.dumps(nest(self.counted), separators=(",", ":")),
            **self.settled(),
        }

    def settled(self) -> dict[str, Any]:
        """The settlement columns."""
        return {
            "role": self.role,
            "gap": self.gap,
            "gap_start": self.gap_start,
            "open_counts": None if not self.open_counts else json.dumps(nest(self.open_counts)),
            "contrib": None if self.contrib is None else _dump_contrib(self.contrib),
        }

    @classmethod
    def from_row(cls, r: Any) -> Period:
        """From a ``counts_periods`` row."""
        return cls(
            epoch_id=r.epoch_id,
            seq=int(r.seq),
            device_id=r.device_id,
            start=float(r.period_start),
            end=float(r.period_end),
            interval=flat(json.loads(r.interval)),
            counted=None if r.counted is None else flat(json.loads(r.counted)),
            role=r.role,
            gap=r.gap,
            gap_start=r.gap_start,
            open_counts=None if r.open_counts is None else flat(json.loads(r.open_counts)),
            contrib=None if r.contrib is None else _load_contrib(r.contrib),
        )


def _dump_contrib(contrib: Mapping[tuple[int, Key], int]) -> str:
    return json.dumps([[h, *k, n] for (h, k), n in sorted(contrib.items())], separators=(",", ":"))


def _load_contrib(text: str) -> dict[tuple[int, Key], int]:
    return {(int(h), (line, d, c)): int(n) for h, line, d, c, n in json.loads(text)}


@dataclass
class EpochState:
    """The mutable part of an ``epochs`` row, loaded at the start of a batch and written back at its end."""

    id: int
    device_id: int
    epoch: str
    started: float | None = None
    state: str | None = None
    interval_start: float | None = None
    prev_epoch: str | None = None
    prev_last_seq: int | None = None
    parent_id: int | None = None
    parent_max_seq: int | None = None
    child_id: int | None = None
    min_seq: int | None = None
    max_seq: int | None = None
    top_seq: int | None = None
    n_messages: int = 0
    pruned_seq: int = 0
    tail_seq: int | None = None
    tail_end: float | None = None
    counted_text: str | None = None  # the epoch message's `counted`, as stored (None: not arrived)
    announced: Any = None  # the epoch message that arrived in this batch
    dirty: set[str] = field(default_factory=set)

    @property
    def fork(self) -> bool:
        """P published beyond ``previous.last_seq``: this epoch's state was restored from a backup."""
        return (
            self.state == "continued"
            and self.prev_last_seq is not None
            and self.parent_max_seq is not None
            and self.parent_max_seq > self.prev_last_seq
        )

    @property
    def is_break(self) -> bool:
        """Recovered, forked, or continued without a known last seq: the start replays or lost data."""
        if self.state == "recovered" or self.fork:
            return True
        return self.state == "continued" and self.prev_last_seq is None

    @property
    def linked(self) -> bool:
        """Continues the parent's database seamlessly: its first counts chain to the parent's."""
        return self.state == "continued" and self.parent_id is not None and not self.is_break

    @property
    def fresh_db(self) -> bool:
        """The epoch began on an empty database (nothing counted before it: nothing to replay)."""
        return (
            self.state is not None
            and self.counted_text is not None
            and not flat(json.loads(self.counted_text))
        )

    def is_replay(self, p: Period) -> bool:
        """A break's carried-over period or catch-up: counted by the parent already (or lost)."""
        if not self.is_break or self.fresh_db:
            return False
        return (self.started is not None and p.end <= self.started) or p.start == self.interval_start

    def virtual_start(self) -> Period | None:
        """The epoch message as the chain's start when no earlier counts message is known.

        On an empty database it is exact (counted was zero at ``interval_start``); otherwise it only
        says where the epoch's periods began (what came before is unknown).
        """
        if self.state is None or self.interval_start is None or (self.is_break and not self.fresh_db):
            return None
        counted: dict[Key, int] | None = {} if self.fresh_db else None
        return Period(self.id, 0, self.device_id, self.interval_start, self.interval_start, {}, counted)

    def set(self, **values: Any) -> None:
        """Change fields and remember them for the write-back."""
        for k, v in values.items():
            if getattr(self, k) != v:
                setattr(self, k, v)
                self.dirty.add(k)


class Settler:
    """Settles counts periods inside one batch's transaction; collects the ``hourly`` deltas.

    Args:
        conn: the batch's connection (inside its transaction).
        epochs: the batch's epochs by id (more are loaded on demand).
    """

    def __init__(self, conn: Connection, epochs: dict[int, EpochState]) -> None:
        self.conn = conn
        self.epochs = epochs
        self.deltas: Deltas = Counter()
        self.transitions: set[int] = set()  # epochs whose transition span must be recomputed

    # --- hourly ------------------------------------------------------------------------------------

    def _add(self, p: Period, sign: int) -> None:
        for (hour, key), n in p.contribution().items():
            self.deltas[(p.device_id, hour, key)] += sign * n

    # --- settling one period -------------------------------------------------------------------------

    def fast(self, p: Period, ep: EpochState) -> bool:
        """Settle ``p`` without a query when it continues its epoch's tail in the same hour.

        Not when a later epoch continues this one: its first period may already span ``p``'s time
        (``p`` arrived late) and must be settled again, which the slow path does.
        """
        if (
            ep.child_id is not None
            or ep.tail_seq is None
            or p.seq <= ep.tail_seq
            or p.start != ep.tail_end
            or p.end > hour_of(p.start) + HOUR
            or ep.is_replay(p)
        ):
            return False
        p.role, p.gap, p.gap_start, p.open_counts, p.contrib = "counted", "none", p.start, None, None
        self._add(p, +1)
        ep.set(tail_seq=p.seq, tail_end=p.end)
        return True

    def settle(self, p: Period) -> None:
        """(Re)compute how ``p`` counts: replay or counted, its stretch from its predecessor, its hours."""
        self._add(p, -1)
        ep = self.epoch(p.epoch_id)
        p.open_counts, p.contrib = None, None
        if ep.is_replay(p):
            p.role, p.gap, p.gap_start, p.contrib = "replay", "none", None, {}
            return
        p.role = "counted"
        pred, path = self.predecessor(p, ep)
        exact: dict[tuple[int, Key], int] = {}
        rest: dict[Key, int] = {}
        unknown = False
        if pred is None:
            p.gap, p.gap_start = "root", None
        else:
            p.gap_start = pred.end
            missing = _missing(pred, p)
            if missing is None:
                unknown = p.start > pred.end
            elif missing:
                exact, rest = attribute(
                    missing, pred.end, p.start, self.events(p.device_id, path, pred.end, p.start)
                )
        own, own_rest = attribute(p.interval, p.start, p.end, self.events(p.device_id, path, p.start, p.end))
        for k, n in own.items():
            exact[k] = exact.get(k, 0) + n
        for k2, n in own_rest.items():
            rest[k2] = rest.get(k2, 0) + n
        if pred is not None:
            p.gap = "unknown" if unknown else "partial" if rest else "none"
        elif rest:
            p.gap = "partial"
        p.open_counts = rest or None
        simple = {(hour_of(p.start), k): n for k, n in p.interval.items()}
        p.contrib = None if exact == simple else exact
        self._add(p, +1)
        if ep.tail_seq is None or p.seq >= ep.tail_seq:
            ep.set(tail_seq=p.seq, tail_end=p.end)

    def predecessor(self, p: Period, ep: EpochState) -> tuple[Period | None, list[int]]:
        """The counts message before ``p`` on the same database, and the epochs walked to find it.

        Without one, the start of the chain's first epoch (:meth:`EpochState.virtual_start`), if known.
        """
        path = [ep.id]
        below, cur = p.seq, ep
        for _ in range(_MAX_HOPS):
            row = self.conn.execute(
                select(t.counts_periods)
                .where(t.counts_periods.c.epoch_id == cur.id, t.counts_periods.c.seq < below)
                .order_by(t.counts_periods.c.seq.desc())
                .limit(1)
            ).first()
            if row is not None:
                return Period.from_row(row), path
            if not cur.linked or cur.parent_id is None or cur.prev_last_seq is None:
                return cur.virtual_start(), path
            below = cur.prev_last_seq + 1
            cur = self.epoch(cur.parent_id)
            path.append(cur.id)
        return None, path

    def successor(self, p: Period) -> Period | None:
        """The counts message after ``p`` on the same database, if it arrived."""
        ep = self.epoch(p.epoch_id)
        row = self.conn.execute(
            select(t.counts_periods)
            .where(t.counts_periods.c.epoch_id == ep.id, t.counts_periods.c.seq > p.seq)
            .order_by(t.counts_periods.c.seq)
            .limit(1)
        ).first()
        if row is not None:
            return Period.from_row(row)
        if ep.child_id is None:
            return None
        child = self.epoch(ep.child_id)
        if not child.linked or child.prev_last_seq is None or child.prev_last_seq < p.seq:
            return None
        row = self.conn.execute(
            select(t.counts_periods)
            .where(t.counts_periods.c.epoch_id == child.id)
            .order_by(t.counts_periods.c.seq)
            .limit(1)
        ).first()
        return None if row is None else Period.from_row(row)

    def events(
        self, device_id: int, epoch_ids: list[int], start: float, end: float
    ) -> list[tuple[float, Key]]:
        """Crossing events of these epochs in ``[start, end)``; none needed inside one hour."""
        if end <= hour_of(start) + HOUR:
            return []
        c = t.crossings.c
        rows = self.conn.execute(
            select(c.ts, c.line, c.direction, c.class_name).where(
                c.device_id == device_id, c.epoch_id.in_(epoch_ids), c.ts >= start, c.ts < end
            )
        )
        return [(float(r.ts), (r.line, r.direction, r.class_name)) for r in rows]

    def save(self, p: Period) -> None:
        """Write ``p``'s settlement back."""
        cp = t.counts_periods.c
        self.conn.execute(
            t.counts_periods.update()
            .where(and_(cp.epoch_id == p.epoch_id, cp.seq == p.seq))
            .values(**p.settled())
        )

    def resettle(self, p: Period) -> None:
        """Settle a stored row again and save it."""
        self.settle(p)
        self.save(p)

    # --- epochs ---------------------------------------------------------------------------------------

    def epoch(self, epoch_id: int) -> EpochState:
        """The state of an epoch (loaded once per batch)."""
        if epoch_id not in self.epochs:
            self.epochs.update(load_epochs(self.conn, [epoch_id]))
        return self.epochs[epoch_id]

    def resettle_start(self, ep: EpochState) -> None:
        """After an epoch's link changed: settle its first periods again (replays, the chain's start)."""
        cp = t.counts_periods.c
        rows = self.conn.execute(
            select(t.counts_periods).where(cp.epoch_id == ep.id).order_by(cp.seq).limit(64)
        ).all()
        for r in rows:
            p = Period.from_row(r)
            replay_before = p.role == "replay"
            self.resettle(p)
            if not replay_before and p.role == "counted" and not ep.is_replay(p):
                break  # the first counted period is settled; the chain after it is unchanged
        self.transitions.add(ep.id)

    def transition(self, ep: EpochState) -> None:
        """Recompute the epoch's transition span (see the module docstring, rule 3)."""
        cp = t.counts_periods.c
        first = self.conn.execute(
            select(t.counts_periods)
            .where(cp.epoch_id == ep.id, cp.role == "counted")
            .order_by(cp.seq)
            .limit(1)
        ).first()
        span: tuple[float, float, str] | None = None
        if ep.is_break:
            replay_end = self.conn.execute(
                select(cp.period_end)
                .where(cp.epoch_id == ep.id, cp.role == "replay")
                .order_by(cp.period_end.desc())
                .limit(1)
            ).scalar()
            # Up to the epoch's start, its replays, and (when its first periods were lost too) its first
            # counted period: what lies before cannot be proven.
            ends = [ep.started, replay_end, ep.interval_start]
            if first is not None and not ep.fresh_db:
                ends.append(float(first.period_start))
            end = max((x for x in ends if x is not None), default=None)
            if end is not None:
                start = self._covered_until(ep, end)
                if start is None:
                    start = ep.interval_start
                if start is not None and start < end:
                    span = (start, end, _break_reason(ep))
        elif first is not None and first.gap == "root":
            end = float(first.period_start)
            before = self._covered_until(ep, end, overlap=float(first.period_end))
            if before is not None and before != end:
                start, stop = min(before, end), max(before, end)
                span = (start, stop, _root_reason(ep, before > end))
        self._write_span(ep, span)

    def _covered_until(self, ep: EpochState, end: float, overlap: float | None = None) -> float | None:
        """Where the device's earlier coverage stops: the parent's last period, else any other epoch's."""
        cp = t.counts_periods.c
        q = select(cp.period_end).where(cp.role == "counted").order_by(cp.period_end.desc()).limit(1)
        if ep.parent_id is not None:
            q = q.where(cp.epoch_id == ep.parent_id)
        else:
            q = q.where(cp.device_id == ep.device_id, cp.epoch_id != ep.id)
            q = q.where(cp.period_start < (overlap if overlap is not None else end))
        value = self.conn.execute(q).scalar()
        return None if value is None else float(value)

    def _write_span(self, ep: EpochState, span: tuple[float, float, str] | None) -> None:
        values: dict[str, Any] = {
            "span_start": None,
            "span_end": None,
            "span_reason": None,
            "span_lower": None,
        }
        if span is not None:
            start, end, reason = span
            c = t.crossings.c
            lower = Counter(
                (r.line, r.direction, r.class_name)
                for r in self.conn.execute(
                    select(c.line, c.direction, c.class_name).where(
                        c.device_id == ep.device_id, c.epoch_id != ep.id, c.ts >= start, c.ts < end
                    )
                )
            )
            values = {
                "span_start": start,
                "span_end": end,
                "span_reason": reason,
                "span_lower": json.dumps(nest(lower)),
            }
        self.conn.execute(t.epochs.update().where(t.epochs.c.id == ep.id).values(**values))


def _missing(pred: Period, p: Period) -> dict[Key, int] | None:
    """What the lost counts messages between ``pred`` and ``p`` held; None when it cannot be known."""
    if p.start == pred.end:
        return {}
    if pred.counted is None or p.counted is None:
        return None
    missing: dict[Key, int] = {}
    for key in set(p.counted) | set(pred.counted):
        n = p.counted.get(key, 0) - p.interval.get(key, 0) - pred.counted.get(key, 0)
        if n < 0:
            return None  # counted went backwards: not the same database
        if n:
            missing[key] = n
    return missing


def _break_reason(ep: EpochState) -> str:
    if ep.fork:
        return (
            f"epoch {ep.epoch} restarted from a restored state (epoch {ep.prev_epoch} had published beyond "
            f"seq {ep.prev_last_seq}): counts between its last report and this start are unknown"
        )
    if ep.state == "recovered":
        return f"epoch {ep.epoch} started on a recovered state: counts since the last report are unknown"
    return (
        f"epoch {ep.epoch} does not know the last seq of {ep.prev_epoch}: counts before its start are unknown"
    )


def _root_reason(ep: EpochState, overlap: bool) -> str:
    if overlap:
        return f"epoch {ep.epoch} reports time another epoch of this device reported too (replay?)"
    if ep.state is None:
        return f"epoch {ep.epoch}'s epoch message has not arrived: its link to earlier counts is unknown"
    if ep.state == "new":
        return f"epoch {ep.epoch} is a new state database: the previous one's unreported counts are unknown"
    return f"epoch {ep.epoch}: no earlier counts message of its database arrived"


def load_epochs(conn: Connection, ids: Iterable[int]) -> dict[int, EpochState]:
    """Epoch states by id, with their parent's id and highest seq resolved."""
    e = t.epochs.c
    rows = conn.execute(select(t.epochs).where(e.id.in_(list(ids)))).all()
    out: dict[int, EpochState] = {}
    for r in rows:
        out[r.id] = EpochState(
            id=r.id,
            device_id=r.device_id,
            epoch=r.epoch,
            started=r.started,
            state=r.state,
            interval_start=r.interval_start,
            prev_epoch=r.prev_epoch,
            prev_last_seq=r.prev_last_seq,
            child_id=r.child_id,
            min_seq=r.min_seq,
            max_seq=r.max_seq,
            top_seq=r.top_seq,
            n_messages=int(r.n_messages),
            pruned_seq=int(r.pruned_seq),
            tail_seq=r.tail_seq,
            tail_end=r.tail_end,
            counted_text=r.counted,
        )
    parents = {(s.device_id, s.prev_epoch): s for s in out.values() if s.prev_epoch}
    if parents:
        found = conn.execute(
            select(e.id, e.device_id, e.epoch, e.max_seq).where(e.epoch.in_([k[1] for k in parents]))
        ).all()
        for r in found:
            child = parents.get((r.device_id, r.epoch))
            if child is not None:
                child.parent_id, child.parent_max_seq = r.id, r.max_seq
    return out

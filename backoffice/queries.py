"""Queries: plain functions on a SQLAlchemy connection, typed rows out. The CLI and the dashboard share them.

Every function takes an open :class:`~sqlalchemy.engine.Connection` (``with engine.connect() as conn``)
and keyword arguments; times are Unix seconds. Nothing here writes.

Counts come from the hourly roll-up. A bucket is ``exact`` unless a *span* of one of its devices
overlaps it: a stretch whose total is known but not its hour (``unattributed``), one whose total is
unknown (``unknown``), or an epoch transition where the device may have lost counts (``transition``:
its ``counts`` are a lower bound from crossing events). :func:`counts` returns those spans beside the
rows, so a figure is either proven or says why not — never a guess.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, literal_column, select, text
from sqlalchemy.engine import Connection

from backoffice import tables as t
from backoffice.figures import HOUR, OPEN_GAPS, Key, flat, hour_of

__all__ = [
    "AlertRow",
    "CommandResultRow",
    "CountRow",
    "CountsResult",
    "CrossingRow",
    "DeviceRow",
    "EpochRow",
    "GapRow",
    "RejectedRow",
    "Span",
    "alerts",
    "command_results",
    "conflicts",
    "counts",
    "crossings",
    "day_range",
    "devices",
    "epochs",
    "gaps",
    "rejected",
    "spans",
]

By = Literal["hour", "day"]


class CountRow(NamedTuple):
    """Products counted in one bucket (a named tuple: a month of a chain is many rows).

    Attributes:
        site: store.
        device: lane, or ``None`` when summed over the store's lanes.
        start: the bucket's start (Unix s): a UTC hour, or local midnight of ``tz`` for ``by="day"``.
        line: counting line.
        direction: ``in`` or ``out``.
        class_name: product class.
        n: count.
        exact: False when a span of one of the bucket's devices overlaps it (see :class:`Span`).
    """

    site: str
    device: str | None
    start: float
    line: str
    direction: str
    class_name: str
    n: int
    exact: bool


@dataclass(frozen=True)
class Span:
    """Time whose counts the stream cannot place or prove.

    Attributes:
        kind: ``unattributed`` (``counts`` is the known total; its hours are not known),
            ``unknown`` (the total is not known), ``transition`` (an epoch began after a restore, a
            recovery or an unknown link; ``counts`` is a lower bound from crossing events).
        counts: per (line, direction, class).
    """

    site: str
    device: str
    epoch: str
    start: float
    end: float
    kind: str
    reason: str
    counts: dict[Key, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CountsResult:
    """Rows (sorted by site, device, start, line, direction, class) and the spans over the range."""

    rows: list[CountRow]
    spans: list[Span]

    @property
    def exact(self) -> bool:
        """True when every row is exact."""
        return all(r.exact for r in self.rows) and not self.spans


@dataclass(frozen=True)
class DeviceRow:
    """One lane: its retained status, its last counts, open alerts and missing messages."""

    site: str
    device: str
    status: str | None
    status_reason: str | None
    status_at: float | None
    model_version: str | None
    fps: float | None
    source_state: str | None
    epoch: str | None
    state_recovered: str | None
    first_seen: float
    last_counts_end: float | None
    last_counts_received: float | None
    open_alerts: int
    missing_messages: int
    epochs: int


@dataclass(frozen=True)
class GapRow:
    """Missing seq numbers ``first_seq..last_seq`` of one epoch (closes when they arrive)."""

    site: str
    device: str
    epoch: str
    first_seq: int
    last_seq: int
    since: float

    @property
    def missing(self) -> int:
        """How many seq numbers are missing."""
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True)
class AlertRow:
    """The current state of one alert; ``since`` is when that state began."""

    site: str
    device: str
    topic: str
    kind: str
    product: str | None
    state: str
    since: float
    updated: float
    epoch: str
    seq: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class EpochRow:
    """One epoch of a device: when first seen, its epoch message, its seq range."""

    site: str
    device: str
    epoch: str
    first_seen: float
    state: str | None
    started: float | None
    prev_epoch: str | None
    prev_last_seq: int | None
    min_seq: int | None
    max_seq: int | None
    messages: int
    recovered: str | None


@dataclass(frozen=True)
class CrossingRow:
    """One crossing event."""

    site: str
    device: str
    epoch: str
    seq: int
    ts: float
    line: str
    direction: str
    class_name: str
    track_id: int | None


@dataclass(frozen=True)
class CommandResultRow:
    """A device's reply to a command."""

    site: str
    device: str
    command_id: str | None
    command: str
    ok: bool
    message: str
    duplicate: bool
    ts: float


@dataclass(frozen=True)
class RejectedRow:
    """A malformed message as received (``raw`` truncated)."""

    received: float
    topic: str
    size: int
    reason: str
    raw: bytes


# --- counts --------------------------------------------------------------------------------------------


def counts(
    conn: Connection,
    *,
    since: float,
    until: float,
    site: str | None = None,
    device: str | None = None,
    by: By = "hour",
    tz: str = "UTC",
    per_device: bool = False,
) -> CountsResult:
    """Counts per bucket, line, direction and class for a store (or all stores) in ``[since, until)``.

    ``since`` is rounded down and ``until`` up to whole hours. ``by="day"`` groups hours into days
    starting at midnight in ``tz`` (time zones whose offset is not whole hours get days that start at
    the UTC hour boundary before midnight). ``per_device`` keeps one row per lane.

    Example:
        >>> with engine.connect() as conn:  # doctest: +SKIP
        ...     res = counts(conn, site="s1", since=time.time() - 86400, until=time.time())
    """
    h0, h1 = hour_of(since), -(-int(until) // HOUR) * HOUR
    lanes = per_device or device is not None
    zone = ZoneInfo(tz)
    table = t.hourly if lanes else t.site_hourly  # the store roll-up: no lane rows to add up
    h = table.c
    # Days are summed in the database: a CASE over the local midnights in the range (DST included).
    bucket: Any = h.hour
    whens: list[Any] = [True]
    if by == "day":
        # Literal numbers (ours, computed here): SELECT and GROUP BY must show the same expression.
        starts: list[Any] = [literal_column(str(x)) for x in _day_starts(h0, h1, zone)]
        whens = [(h.hour < nxt, cur) for cur, nxt in itertools.pairwise(starts)]
        bucket = case(*whens, else_=starts[-1]) if whens else starts[0]
    group: list[Any]
    if lanes:
        d = t.devices.c
        group = [d.site, d.device, bucket, h.key_id]
        q = select(*group, func.sum(h.n)).select_from(t.hourly.join(t.devices, d.id == h.device_id))
        q = _filter(q, site, device)
    else:
        group = [h.site, bucket, h.key_id]
        q = select(*group, func.sum(h.n))
        if site is not None:
            q = q.where(h.site == site)
    # One day: the bucket is a constant, and a number in GROUP BY would mean a column's position.
    q = q.where(h.hour >= h0, h.hour < h1).group_by(*[g for g in group if g is not bucket or whens])
    found = spans(conn, since=h0, until=h1, site=site, device=device)
    inexact = _inexact_buckets(found, by, zone, lanes)
    keys = {r.id: (r.line, r.direction, r.class_name) for r in conn.execute(select(t.count_keys))}
    sums: dict[tuple[Any, ...], int] = defaultdict(int)
    for r in conn.execute(q).all():
        line, direction, cls = keys[r[-2]]
        sums[(r[0], r[1] if lanes else "", int(r[-3]), line, direction, cls)] += int(r[-1])
    rows = [
        CountRow(
            k[0], k[1] or None, float(k[2]), k[3], k[4], k[5], n, (k[0], k[1] or None, k[2]) not in inexact
        )
        for k, n in sorted(sums.items())
        if n
    ]
    return CountsResult(rows, found)


def _day_starts(h0: int, h1: int, zone: ZoneInfo) -> list[int]:
    """Local midnights from the one on or before ``h0`` to the last before ``h1``."""
    first = datetime.fromtimestamp(h0, zone).replace(hour=0, minute=0, second=0, microsecond=0)
    out = [int(first.timestamp())]
    day = first.date()
    while True:
        day += timedelta(days=1)
        nxt = int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())
        if nxt >= h1:
            return out
        out.append(nxt)


def _bucket(hour: int, by: By, zone: ZoneInfo) -> int:
    if by == "hour":
        return hour
    local = datetime.fromtimestamp(hour, zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return int(midnight.timestamp())


def _inexact_buckets(
    found: list[Span], by: By, zone: ZoneInfo, per_device: bool
) -> set[tuple[str, str | None, int]]:
    out: set[tuple[str, str | None, int]] = set()
    for s in found:
        hour = hour_of(s.start)
        while hour < s.end:
            out.add((s.site, s.device if per_device else None, _bucket(hour, by, zone)))
            hour += HOUR
    return out


def spans(
    conn: Connection, *, since: float, until: float, site: str | None = None, device: str | None = None
) -> list[Span]:
    """Spans (see :class:`Span`) overlapping ``[since, until)``, sorted by site, device and start."""
    d, cp, e = t.devices.c, t.counts_periods.c, t.epochs.c
    out: list[Span] = []
    start = func.coalesce(cp.gap_start, cp.period_start)
    q = (
        select(d.site, d.device, e.epoch, start.label("start"), cp.period_end, cp.gap, cp.open_counts)
        .select_from(
            t.counts_periods.join(t.devices, d.id == cp.device_id).join(t.epochs, e.id == cp.epoch_id)
        )
        .where(text(OPEN_GAPS), cp.period_end > since, start < until)
    )
    for r in conn.execute(_filter(q, site, device)):
        kind = "unattributed" if r.gap == "partial" else "unknown"
        reason = (
            "counts messages were lost here: their totals are known, not their hours"
            if kind == "unattributed"
            else "counts messages were lost here and their totals cannot be known (no `counted`)"
        )
        opened = flat(json.loads(r.open_counts)) if r.open_counts else {}
        out.append(Span(r.site, r.device, r.epoch, float(r.start), float(r.period_end), kind, reason, opened))
    q2 = (
        select(d.site, d.device, e.epoch, e.span_start, e.span_end, e.span_reason, e.span_lower)
        .select_from(t.epochs.join(t.devices, d.id == e.device_id))
        .where(e.span_end.is_not(None), e.span_end > since, e.span_start < until)
    )
    for r in conn.execute(_filter(q2, site, device)):
        lower = flat(json.loads(r.span_lower)) if r.span_lower else {}
        out.append(
            Span(
                r.site,
                r.device,
                r.epoch,
                float(r.span_start),
                float(r.span_end),
                "transition",
                r.span_reason,
                lower,
            )
        )
    return sorted(out, key=lambda s: (s.site, s.device, s.start))


def _filter(q: Any, site: str | None, device: str | None) -> Any:
    d = t.devices.c
    if site is not None:
        q = q.where(d.site == site)
    if device is not None:
        q = q.where(d.device == device)
    return q


# --- fleet -----------------------------------------------------------------------------------------


def devices(conn: Connection, *, site: str | None = None) -> list[DeviceRow]:
    """Every lane (of one store), sorted by site and device."""
    d, a, g, e = t.devices.c, t.alerts.c, t.seq_gaps.c, t.epochs.c
    open_alerts = select(func.count()).where(a.device_id == d.id, a.state == "raised").scalar_subquery()
    missing = (
        select(func.coalesce(func.sum(g.last_seq - g.first_seq + 1), 0))
        .select_from(t.seq_gaps.join(t.epochs, e.id == g.epoch_id))
        .where(e.device_id == d.id)
        .scalar_subquery()
    )
    n_epochs = select(func.count()).where(e.device_id == d.id).scalar_subquery()
    q = select(
        t.devices, open_alerts.label("open_alerts"), missing.label("missing"), n_epochs.label("n_epochs")
    )
    q = _filter(q, site, None).order_by(d.site, d.device)
    return [
        DeviceRow(
            r.site,
            r.device,
            r.status,
            r.status_reason,
            r.status_at,
            r.model_version,
            r.fps,
            r.source_state,
            r.status_epoch,
            r.state_recovered,
            r.first_seen,
            r.last_counts_end,
            r.last_counts_received,
            int(r.open_alerts),
            int(r.missing),
            int(r.n_epochs),
        )
        for r in conn.execute(q)
    ]


def gaps(conn: Connection, *, site: str | None = None, device: str | None = None) -> list[GapRow]:
    """Missing seq ranges per epoch (what the outbox bound dropped, or what has not arrived yet)."""
    d, g, e = t.devices.c, t.seq_gaps.c, t.epochs.c
    q = (
        select(d.site, d.device, e.epoch, g.first_seq, g.last_seq, g.since)
        .select_from(t.seq_gaps.join(t.epochs, e.id == g.epoch_id).join(t.devices, d.id == e.device_id))
        .order_by(d.site, d.device, e.first_seen, g.first_seq)
    )
    return [
        GapRow(r.site, r.device, r.epoch, int(r.first_seq), int(r.last_seq), r.since)
        for r in conn.execute(_filter(q, site, device))
    ]


def alerts(
    conn: Connection, *, site: str | None = None, device: str | None = None, state: str | None = "raised"
) -> list[AlertRow]:
    """Alerts in ``state`` (``None``: all), oldest state first."""
    d, a = t.devices.c, t.alerts.c
    q = select(d.site, d.device, t.alerts).select_from(t.alerts.join(t.devices, d.id == a.device_id))
    if state is not None:
        q = q.where(a.state == state)
    q = _filter(q, site, device).order_by(a.since, d.site, d.device, a.topic)
    return [
        AlertRow(
            r.site,
            r.device,
            r.topic,
            r.kind,
            r.product,
            r.state,
            r.since,
            r.updated,
            r.epoch,
            int(r.seq),
            json.loads(r.payload),
        )
        for r in conn.execute(q)
    ]


def epochs(conn: Connection, *, site: str | None = None, device: str | None = None) -> list[EpochRow]:
    """Epochs of the lanes, in the order they were first seen."""
    d, e = t.devices.c, t.epochs.c
    q = select(d.site, d.device, t.epochs).select_from(t.epochs.join(t.devices, d.id == e.device_id))
    q = _filter(q, site, device).order_by(d.site, d.device, e.first_seen, e.id)
    return [
        EpochRow(
            r.site,
            r.device,
            r.epoch,
            r.first_seen,
            r.state,
            r.started,
            r.prev_epoch,
            r.prev_last_seq,
            r.min_seq,
            r.max_seq,
            int(r.n_messages),
            r.recovered,
        )
        for r in conn.execute(q)
    ]


def crossings(
    conn: Connection,
    *,
    site: str,
    device: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int = 100,
) -> list[CrossingRow]:
    """The latest crossing events (newest first) of a store or lane."""
    d, c, e = t.devices.c, t.crossings.c, t.epochs.c
    q = select(
        d.site, d.device, e.epoch, c.seq, c.ts, c.line, c.direction, c.class_name, c.track_id
    ).select_from(t.crossings.join(t.devices, d.id == c.device_id).join(t.epochs, e.id == c.epoch_id))
    if since is not None:
        q = q.where(c.ts >= since)
    if until is not None:
        q = q.where(c.ts < until)
    q = _filter(q, site, device).order_by(c.ts.desc()).limit(limit)
    return [
        CrossingRow(
            r.site, r.device, r.epoch, int(r.seq), r.ts, r.line, r.direction, r.class_name, r.track_id
        )
        for r in conn.execute(q)
    ]


def command_results(
    conn: Connection, *, site: str | None = None, device: str | None = None, command_id: str | None = None
) -> list[CommandResultRow]:
    """Replies to commands, newest first (all of one ``command_id`` when given)."""
    d, c = t.devices.c, t.command_results.c
    q = select(d.site, d.device, t.command_results).select_from(
        t.command_results.join(t.devices, d.id == c.device_id)
    )
    if command_id is not None:
        q = q.where(c.command_id == command_id)
    q = _filter(q, site, device).order_by(c.ts.desc())
    return [
        CommandResultRow(r.site, r.device, r.command_id, r.command, r.ok, r.message, r.duplicate, r.ts)
        for r in conn.execute(q)
    ]


def conflicts(conn: Connection, *, limit: int = 100) -> list[dict[str, Any]]:
    """Keys that arrived again with another payload (the first stays in the ledger)."""
    c, e, d = t.conflicts.c, t.epochs.c, t.devices.c
    q = (
        select(d.site, d.device, e.epoch, c.seq, c.received, c.topic, c.payload)
        .select_from(t.conflicts.join(t.epochs, e.id == c.epoch_id).join(t.devices, d.id == e.device_id))
        .order_by(c.received.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(q)]


def rejected(conn: Connection, *, limit: int = 100) -> list[RejectedRow]:
    """Malformed messages, newest first."""
    r = t.rejected.c
    q = (
        select(r.received, r.topic, r.size, r.reason, r.raw)
        .order_by(r.received.desc(), r.id.desc())
        .limit(limit)
    )
    return [RejectedRow(x.received, x.topic, x.size, x.reason, bytes(x.raw)) for x in conn.execute(q)]


def day_range(day: str, tz: str = "UTC") -> tuple[float, float]:
    """``YYYY-MM-DD`` in ``tz`` → [local midnight, next local midnight) in Unix seconds."""
    zone = ZoneInfo(tz)
    start = datetime.fromisoformat(day).replace(tzinfo=zone)
    return start.timestamp(), (start + timedelta(days=1)).timestamp()

"""What the pages and the API show, assembled from the query functions (backoffice/queries.py).

Figures (counts, devices, gaps, alerts) come from :mod:`backoffice.queries` unchanged, so a page shows what
``lanecount-backoffice counts/devices/gaps/alerts`` prints for the same range. This module adds only
what the query commands do not know: a lane's liveness (stale when its counts stopped), the fleet's
newest model, the stores' time zones, conflicts per lane and the command audit log with each device's
answer.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased

from backoffice import queries
from backoffice import tables as t
from backoffice.web import tables as w
from backoffice.web.accounts import User

__all__ = [
    "COMMAND_EXPIRY_S",
    "STALE_PERIODS",
    "CommandView",
    "Lane",
    "Store",
    "commands",
    "conflicts",
    "fleet",
    "lane_state",
    "site_tz",
    "sites",
    "version_key",
]

STALE_PERIODS = 3  # a lane whose counts stopped for this many of its periods is stale
COMMAND_EXPIRY_S = 86400.0  # an unanswered command is sent again (same id) for this long


def version_key(version: str) -> tuple[Any, ...]:
    """Natural order of model versions (``2026.11.28`` < ``2026.12.1``; ``v10`` > ``v9``)."""
    return tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|[^\d.\-_+]+", version)
    )


@dataclass(frozen=True)
class Lane:
    """One device with its liveness.

    Attributes:
        row: what ``lanecount-backoffice devices`` prints for it.
        state: ``online``, ``offline``, ``stale`` (online by its retained status, but no counts for
            ``STALE_PERIODS`` of its periods) or ``unknown`` (no status received).
        since: when that state began (status time; for ``stale`` the last counts received).
        period_s: its counts period, from its newest counts messages (None while unknown: never stale).
        outdated: its model version is not the fleet's newest.
    """

    row: queries.DeviceRow
    state: str
    since: float | None
    period_s: float | None
    outdated: bool


@dataclass
class Store:
    """A store and its lanes."""

    site: str
    tz: str
    lanes: list[Lane] = field(default_factory=list)

    @property
    def open_alerts(self) -> int:
        """Alerts raised now on its lanes."""
        return sum(ln.row.open_alerts for ln in self.lanes)

    @property
    def missing(self) -> int:
        """Messages known to be missing (seq gaps) on its lanes."""
        return sum(ln.row.missing_messages for ln in self.lanes)

    def count(self, state: str) -> int:
        """Lanes in ``state``."""
        return sum(1 for ln in self.lanes if ln.state == state)

    @property
    def attention(self) -> list[Lane]:
        """Lanes that need a look: not online, not on the newest model, open alerts or missing messages."""
        return [
            ln
            for ln in self.lanes
            if ln.state != "online" or ln.outdated or ln.row.open_alerts or ln.row.missing_messages
        ]


def lane_state(
    row: queries.DeviceRow, period_s: float | None, now: float, uptime_s: float | None = None
) -> tuple[str, float | None]:
    """(state, since) of a lane: its retained status, overruled by ``stale`` when its counts stopped.

    ``since``: online, when the daemon started (status time less its uptime); offline, the status
    time; stale, the last counts received.
    """
    if row.status is None:
        return "unknown", None
    received = row.last_counts_received
    if (
        row.status == "online"
        and period_s
        and received is not None
        and now - received > STALE_PERIODS * period_s
    ):
        return "stale", received
    if row.status == "online" and row.status_at is not None and uptime_s is not None:
        return "online", row.status_at - uptime_s
    return row.status, row.status_at


def uptimes(conn: Connection, site: str | None = None) -> dict[tuple[str, str], float]:
    """Each online lane's uptime at its last status (from the retained status document)."""
    d = t.devices.c
    q = select(d.site, d.device, d.status_json).where(d.status == "online")
    if site is not None:
        q = q.where(d.site == site)
    out = {}
    for r in conn.execute(q):
        up = json.loads(r.status_json or "{}").get("uptime_s")
        if isinstance(up, (int, float)):
            out[(r.site, r.device)] = float(up)
    return out


def _regular(start: float | None, end: float | None) -> float | None:
    """The length of a regular period (start and end both multiples of it), else None.

    A counts period ends on a multiple of the device's period (edge/schemas/counts.json); the exceptions
    are cut short by a start or a stop, or are the one catch-up period after a pause, and those are
    (almost never) multiples of their own length at both ends.
    """
    if start is None or end is None or end - start <= 0:
        return None
    d = end - start
    return d if all(abs(x / d - round(x / d)) < 1e-6 for x in (start, end)) else None


def periods(conn: Connection, site: str | None = None) -> dict[tuple[str, str], float]:
    """Each lane's counts period, from the regular periods among its three newest counts messages.

    A length that repeats wins (normal periods repeat); else the shortest (a catch-up period after a
    pause is longer). Three index look-ups per lane (the newest message and its chain predecessors).
    """
    d, cp = t.devices.c, t.counts_periods
    p1, p2 = aliased(cp), aliased(cp)
    q = select(
        d.site,
        d.device,
        cp.c.period_start,
        cp.c.period_end,
        p1.c.period_start.label("s1"),
        p1.c.period_end.label("e1"),
        p2.c.period_start.label("s2"),
        p2.c.period_end.label("e2"),
    ).select_from(
        t.devices.join(cp, and_(cp.c.device_id == d.id, cp.c.period_end == d.last_counts_end))
        .outerjoin(p1, and_(p1.c.device_id == d.id, p1.c.period_end == cp.c.gap_start))
        .outerjoin(p2, and_(p2.c.device_id == d.id, p2.c.period_end == p1.c.gap_start))
    )
    if site is not None:
        q = q.where(d.site == site)
    out: dict[tuple[str, str], float] = {}
    for r in conn.execute(q):
        p = pick_period([_regular(r.period_start, r.period_end), _regular(r.s1, r.e1), _regular(r.s2, r.e2)])
        if p is not None:
            out[(r.site, r.device)] = max(p, out.get((r.site, r.device), 0.0))
    return out


def pick_period(lengths: list[float | None]) -> float | None:
    """The device's period from regular period lengths (None: not regular).

    A length that repeats wins (normal periods repeat), else the shortest (the catch-up period after a
    pause is longer).
    """
    regular = [p for p in lengths if p]
    repeated = [p for p in regular if regular.count(p) > 1]
    return repeated[0] if repeated else min(regular, default=None)


def site_tz(conn: Connection, default: str) -> dict[str, str]:
    """Time zone per store that has one set (others use ``default``)."""
    return {r.site: r.tz for r in conn.execute(select(w.site_settings.c.site, w.site_settings.c.tz))} | {
        "": default
    }


def sites(conn: Connection, user: User) -> list[str]:
    """The stores ``user`` may see that have reported (an admin: every store), sorted."""
    found = sorted({s for (s,) in conn.execute(select(t.devices.c.site).distinct())})
    return [s for s in found if user.may_see(s)]


def newest_version(conn: Connection) -> str | None:
    """The newest model version any lane of the fleet reports."""
    versions = [v for (v,) in conn.execute(select(t.devices.c.model_version).distinct()) if v]
    return max(versions, key=version_key) if versions else None


def fleet(
    conn: Connection, user: User, default_tz: str, now: float | None = None, site: str | None = None
) -> tuple[list[Store], str | None]:
    """Stores (those ``user`` may see; or only ``site``) with their lanes, and the fleet's newest model."""
    now = time.time() if now is None else now
    tzs = site_tz(conn, default_tz)
    newest = newest_version(conn)
    if site is not None:
        ok = user.may_see(site)
        rows = queries.devices(conn, site=site) if ok else []
        per, up = (periods(conn, site=site), uptimes(conn, site=site)) if ok else ({}, {})
    elif user.is_admin:
        rows, per, up = queries.devices(conn), periods(conn), uptimes(conn)
    else:
        rows, per, up = [], {}, {}
        for s in user.sites:
            rows += queries.devices(conn, site=s)
            per |= periods(conn, site=s)
            up |= uptimes(conn, site=s)
    stores: dict[str, Store] = {}
    for r in rows:
        p = per.get((r.site, r.device))
        state, since = lane_state(r, p, now, up.get((r.site, r.device)))
        outdated = bool(newest and r.model_version and version_key(r.model_version) < version_key(newest))
        store = stores.setdefault(r.site, Store(r.site, tzs.get(r.site, default_tz)))
        store.lanes.append(Lane(r, state, since, p, outdated))
    return [stores[s] for s in sorted(stores)], newest


def lane(conn: Connection, site: str, device: str, now: float | None = None) -> Lane | None:
    """One lane with its liveness, or None when the back office has never heard of it."""
    rows = [r for r in queries.devices(conn, site=site) if r.device == device]
    if not rows:
        return None
    newest = newest_version(conn)
    p = periods(conn, site=site).get((site, device))
    up = uptimes(conn, site=site).get((site, device))
    state, since = lane_state(rows[0], p, time.time() if now is None else now, up)
    outdated = bool(
        newest and rows[0].model_version and version_key(rows[0].model_version) < version_key(newest)
    )
    return Lane(rows[0], state, since, p, outdated)


def conflicts(
    conn: Connection, site: str, device: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Keys of one store (or lane) that arrived again with another payload, newest first."""
    c, e, d = t.conflicts.c, t.epochs.c, t.devices.c
    q = (
        select(d.site, d.device, e.epoch, c.seq, c.received, c.topic)
        .select_from(t.conflicts.join(t.epochs, e.id == c.epoch_id).join(t.devices, d.id == e.device_id))
        .where(d.site == site)
        .order_by(c.received.desc())
        .limit(limit)
    )
    if device is not None:
        q = q.where(d.device == device)
    return [dict(r._mapping) for r in conn.execute(q)]


# --- commands: the audit log ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandView:
    """A command as the audit log shows it.

    Attributes:
        state: ``done`` (the device answered ok), ``refused`` (it answered not ok), ``sent`` (the
            broker took it, no answer yet), ``queued`` (no answer yet and the device was offline, or
            the broker was unreachable: it is sent again), ``expired`` (no answer within
            ``COMMAND_EXPIRY_S``: not sent again). Only an answer from the device makes it ``done``.
        summary: one line for people.
    """

    id: str
    site: str
    device: str
    command: str
    payload: dict[str, Any]
    user_name: str
    created: float
    attempts: int
    sent_at: float | None
    last_error: str | None
    device_state: str | None
    answered: float | None
    ok: bool | None
    answer: str | None
    duplicate: bool
    state: str
    summary: str


def _state(r: Any, now: float) -> tuple[str, str]:
    if r.ok is not None:
        if r.ok:
            return "done", f"done: {r.message}"
        return "refused", f"refused by the device: {r.message}"
    if now - r.created > COMMAND_EXPIRY_S:
        return "expired", "no answer from the device within 24 h; not sent again"
    if r.sent_at is None:
        return "queued", f"not sent yet ({r.last_error or 'broker unreachable'}); retrying"
    if r.device_state != "online":
        return "queued", (
            f"sent, no answer yet: the device was {r.device_state or 'unknown'} when sent; "
            "sent again when it is back online"
        )
    return "sent", "sent, no answer yet"


def commands(
    conn: Connection,
    *,
    sites: Iterable[str] | None = None,
    command_id: str | None = None,
    limit: int = 200,
    now: float | None = None,
) -> list[CommandView]:
    """Commands (of ``sites``; None: all), newest first, each with the device's answer if it came.

    The answer is the collector's ``command_results`` row with the command's id from the same
    site and device (an answer from another device cannot complete it).
    """
    now = time.time() if now is None else now
    r, d = t.command_results.c, t.devices.c
    picked = select(w.commands)
    if command_id is not None:
        picked = picked.where(w.commands.c.id == command_id)
    if sites is not None:
        picked = picked.where(w.commands.c.site.in_(list(sites)))
    cmds = picked.order_by(w.commands.c.created.desc()).limit(limit).subquery()
    answers = (
        select(d.site, d.device, r.command_id, r.ok, r.message, r.duplicate, r.ts)
        .select_from(t.command_results.join(t.devices, d.id == r.device_id))
        .where(r.command_id.in_(select(cmds.c.id)))
        .subquery()
    )
    c, a = cmds.c, answers.c
    q = (
        select(cmds, a.ok, a.message, a.duplicate, a.ts.label("answered"))
        .select_from(
            cmds.outerjoin(answers, and_(a.command_id == c.id, a.site == c.site, a.device == c.device))
        )
        .order_by(c.created.desc(), c.id, a.ts)
    )
    out: dict[str, CommandView] = {}
    for row in conn.execute(q):
        if row.id in out:  # more answers (a resend answered from the device's record): keep the first
            continue
        state, summary = _state(row, now)
        out[row.id] = CommandView(
            row.id,
            row.site,
            row.device,
            row.command,
            json.loads(row.payload),
            row.user_name,
            row.created,
            row.attempts,
            row.sent_at,
            row.last_error,
            row.device_state,
            row.answered,
            row.ok,
            row.message,
            bool(row.duplicate),
            state,
            summary,
        )
    return list(out.values())

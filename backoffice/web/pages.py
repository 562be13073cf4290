"""Server-rendered pages: fleet, store, lane, alerts, commands, login. Same data as the API.

The store and lane pages show counts exactly as ``lanecount-backoffice counts`` prints them for the
same range (each page names that command), from the same query function.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from backoffice import queries
from backoffice.queries import By
from backoffice.render import counts_columns
from backoffice.web import views
from backoffice.web.accounts import LoginRefused, Session, end_session, login
from backoffice.web.app import templates
from backoffice.web.commands import CommandError
from backoffice.web.deps import (
    MAX_PAGE_DAYS,
    Settings,
    StoreRef,
    check_tz,
    csrf,
    login_csrf,
    optional_session,
    page_admin_session,
    page_session,
    settings,
    store,
)
from backoffice.web.session import client_address, set_login_cookie, set_session_cookie
from backoffice.web.settings import set_site_tz

__all__ = ["router", "today_range"]

router = APIRouter(include_in_schema=False)

Day = Annotated[str | None, Query(max_length=10, description="YYYY-MM-DD in the store's time zone")]
Days = Annotated[int, Query(ge=1, le=MAX_PAGE_DAYS)]
FLEET_ALL_LANES = (
    200  # more lanes than this: the fleet page lists those that need a look (?all=1: every lane)
)
MAX_HOUR_DAYS = 7  # a page lists every bucket: hours for a week at most


def today_range(tz: str, now: float | None = None) -> tuple[float, float]:
    """[local midnight, next local midnight) of today in ``tz``."""
    today = datetime.fromtimestamp(time.time() if now is None else now, ZoneInfo(tz)).date()
    return queries.day_range(today.isoformat(), tz)


def _days(day: str | None, days: int, tz: str) -> tuple[str, float, float, str]:
    """(first day, since, until, last day shown) for ``day`` (default today) and ``days`` days."""
    zone = ZoneInfo(tz)
    try:
        first = date.fromisoformat(day) if day else datetime.now(zone).date()
    except ValueError:
        raise HTTPException(400, f"day: {day!r} is not a date (YYYY-MM-DD)") from None
    if not date(2000, 1, 1) <= first <= date(2200, 1, 1):
        raise HTTPException(400, f"day: {day!r} is out of range")
    start = datetime.combine(first, datetime.min.time(), zone)
    end = datetime.combine(first + timedelta(days=days), datetime.min.time(), zone)
    return (
        first.isoformat(),
        start.timestamp(),
        end.timestamp(),
        (first + timedelta(days=days - 1)).isoformat(),
    )


def _page(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"now": time.time(), **ctx}, status_code=status)


def _safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host, no ``//``): an open redirect otherwise."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


# --- login -----------------------------------------------------------------------------------------------


@router.get("/login")
def login_page(
    request: Request,
    cfg: Annotated[Settings, Depends(settings)],
    s: Annotated[Session | None, Depends(optional_session)],
    next: Annotated[str, Query(max_length=2000)] = "/",
) -> Response:
    """The login form (a signed-in user goes straight on)."""
    if s is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_form(request, cfg, _safe_next(next), None, 200)


def _login_form(request: Request, cfg: Settings, target: str, error: str | None, status: int) -> Response:
    token = secrets.token_urlsafe(32)
    resp = _page(
        request, "login.html", {"session": None, "next": target, "error": error, "csrf": token}, status
    )
    set_login_cookie(resp, cfg, token)
    return resp


@router.post("/login", dependencies=[Depends(login_csrf)])
def login_post(
    request: Request,
    cfg: Annotated[Settings, Depends(settings)],
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    """Check the password, start a session, go on to ``next``."""
    try:
        token, _ = login(cfg.writer, name, password, client_address(request))
    except LoginRefused as exc:
        resp = _login_form(request, cfg, _safe_next(next), str(exc), 429 if exc.retry_after else 401)
        if exc.retry_after:
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    if previous := request.cookies.get(cfg.session_cookie):
        end_session(cfg.writer, previous)  # signing in again: the old session ends
    resp = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(resp, cfg, token)
    return resp


@router.post("/logout", dependencies=[Depends(csrf)])
def logout(request: Request, cfg: Annotated[Settings, Depends(settings)]) -> Response:
    """End the session."""
    end_session(cfg.writer, request.cookies.get(cfg.session_cookie, ""))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(cfg.session_cookie, path="/", secure=cfg.secure_cookies, httponly=True, samesite="lax")
    return resp


# --- fleet, store, lane ----------------------------------------------------------------------------------


@router.get("/")
def fleet_page(
    request: Request,
    s: Annotated[Session, Depends(page_session)],
    cfg: Annotated[Settings, Depends(settings)],
    all: Annotated[bool, Query(description="every lane, also of a large fleet")] = False,
) -> Response:
    """Stores → lanes with liveness, model, alerts, gaps (a large fleet: the lanes that need a look)."""
    with cfg.reader.connect() as conn:
        stores, newest = views.fleet(conn, s.user, cfg.default_tz)
    show_all = all or sum(len(st.lanes) for st in stores) <= FLEET_ALL_LANES
    ctx = {"session": s, "stores": stores, "newest": newest, "title": "Fleet", "show_all": show_all}
    return _page(request, "fleet.html", ctx)


def _buckets(since: float, until: float, by: By, tz: str) -> list[int]:
    """Every bucket start of the range: UTC hours, or local midnights of ``tz``."""
    if by == "hour":
        return list(range(int(since) // 3600 * 3600, int(until), 3600))
    zone, out = ZoneInfo(tz), []
    day = datetime.fromtimestamp(since, zone).date()
    while (start := datetime.combine(day, datetime.min.time(), zone).timestamp()) < until:
        out.append(int(start))
        day += timedelta(days=1)
    return out


def _chart(rows: list[queries.CountRow], buckets: list[int]) -> dict[str, Any]:
    """UPlot's data: every bucket of the range on x, one series per line/direction/class."""
    index = {b: i for i, b in enumerate(buckets)}
    series: dict[str, list[int]] = defaultdict(lambda: [0] * len(buckets))
    for r in rows:
        if int(r.start) in index:
            series[f"{r.class_name} {r.direction} ({r.line})"][index[int(r.start)]] += r.n
    return {"x": buckets, "series": [{"label": k, "values": v} for k, v in sorted(series.items())]}


def _table(
    rows: list[queries.CountRow], columns: list[str], by: By, tz: str
) -> list[tuple[int, bool, list[Any]]]:
    """(start, exact, cells) per row, cells in ``columns`` order, as ``counts --format table`` prints them."""
    fmt = "%Y-%m-%d %H:%M" if by == "hour" else "%Y-%m-%d"
    zone, shown = ZoneInfo(tz), {}
    out = []
    for r in rows:
        if r.start not in shown:
            shown[r.start] = datetime.fromtimestamp(r.start, zone).strftime(fmt)
        values = {"start": shown[r.start], "exact": "yes" if r.exact else "NO"}
        out.append((int(r.start), r.exact, [values.get(c, getattr(r, c, None)) for c in columns]))
    return out


def _counts_ctx(
    cfg: Settings, ref: StoreRef, device: str | None, day: str | None, days: int, by: By | None
) -> dict[str, Any]:
    first, lo, hi, last = _days(day, days, ref.tz)
    by = by or ("hour" if days <= 2 else "day")
    if by == "hour" and days > MAX_HOUR_DAYS:
        raise HTTPException(
            400, f"by hour: at most {MAX_HOUR_DAYS} days on a page (by day, or the CSV export)"
        )
    t0, t1 = today_range(ref.tz)
    with cfg.reader.connect() as conn:
        res = queries.counts(conn, since=lo, until=hi, site=ref.site, device=device, by=by, tz=ref.tz)
        today = queries.counts(conn, since=t0, until=t1, site=ref.site, device=device, by="day", tz=ref.tz)
        gaps = queries.gaps(conn, site=ref.site, device=device)
        conflicts = views.conflicts(conn, ref.site, device)
        crossings = queries.crossings(conn, site=ref.site, device=device, limit=30)
    until_day = (date.fromisoformat(last) + timedelta(days=1)).isoformat()
    lane_opt = f" --device {device}" if device else ""
    cli = f"lanecount-backoffice counts --site {ref.site}{lane_opt} --since {first} --until {until_day}"
    cli += f" --by {by} --tz {ref.tz}"
    columns = counts_columns(device)
    return {
        "ref": ref,
        "day": first,
        "days": days,
        "by": by,
        "last": last,
        "since": lo,
        "until": hi,
        "res": res,
        "rows": _table(res.rows, columns, by, ref.tz),
        "today": today,
        "gaps": gaps,
        "conflicts": conflicts,
        "crossings": crossings,
        "chart": _chart(res.rows, _buckets(lo, hi, by, ref.tz)),
        "cli": cli,
        "columns": columns,
        "export": f"since={first}&until={until_day}&by={by}",
    }


@router.get("/sites/{site}")
def store_page(
    request: Request,
    s: Annotated[Session, Depends(page_session)],
    ref: Annotated[StoreRef, Depends(store)],
    cfg: Annotated[Settings, Depends(settings)],
    day: Day = None,
    days: Days = 1,
    by: Annotated[By | None, Query(description="hour or day (default: hour up to 2 days)")] = None,
) -> Response:
    """A store: its lanes, counts per hour (chart + table), today's totals, crossings, gaps."""
    ctx = _counts_ctx(cfg, ref, None, day, days, by)
    with cfg.reader.connect() as conn:
        stores, newest = views.fleet(conn, s.user, cfg.default_tz, site=ref.site)
    ctx["store"] = stores[0] if stores else None
    return _page(request, "store.html", {"session": s, "title": f"Store {ref.site}", "newest": newest, **ctx})


@router.get("/sites/{site}/lanes/{device}")
def lane_page(
    request: Request,
    device: str,
    s: Annotated[Session, Depends(page_session)],
    ref: Annotated[StoreRef, Depends(store)],
    cfg: Annotated[Settings, Depends(settings)],
    day: Day = None,
    days: Days = 1,
    by: Annotated[By | None, Query(description="hour or day (default: hour up to 2 days)")] = None,
) -> Response:
    """A lane: status, counts per hour (chart + table), today's totals, latest crossings, gaps, conflicts."""
    with cfg.reader.connect() as conn:
        lane = views.lane(conn, ref.site, device)
        alerts = queries.alerts(conn, site=ref.site, device=device, state=None)
    if lane is None:
        raise HTTPException(404, f"no lane {device!r} in store {ref.site!r}")
    ctx = _counts_ctx(cfg, ref, device, day, days, by)
    return _page(
        request,
        "lane.html",
        {"session": s, "title": f"Lane {ref.site}/{device}", "lane": lane, "alerts": alerts, **ctx},
    )


@router.post("/sites/{site}/settings", dependencies=[Depends(csrf)])
def store_settings(
    s: Annotated[Session, Depends(page_admin_session)],
    ref: Annotated[StoreRef, Depends(store)],
    cfg: Annotated[Settings, Depends(settings)],
    tz: Annotated[str, Form(max_length=64)],
) -> Response:
    """An admin sets the store's time zone."""
    set_site_tz(cfg.writer, ref.site, check_tz(tz.strip()), s.user.name)
    return RedirectResponse(f"/sites/{quote(ref.site, safe='')}", status_code=303)


# --- alerts and commands ---------------------------------------------------------------------------------


def _visible(cfg: Settings, s: Session, site: str | None) -> list[str]:
    with cfg.reader.connect() as conn:
        visible = views.sites(conn, s.user)
    if site and site not in visible:
        raise HTTPException(404, f"no store {site!r}")
    return [site] if site else visible


@router.get("/alerts")
def alerts_page(
    request: Request,
    s: Annotated[Session, Depends(page_session)],
    cfg: Annotated[Settings, Depends(settings)],
    site: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Open restock and source alerts with their age; "Restocked" on depletion alerts."""
    scope = _visible(cfg, s, site or None)
    with cfg.reader.connect() as conn:
        tzs = views.site_tz(conn, cfg.default_tz)
        rows = sorted(
            (a for x in scope for a in queries.alerts(conn, site=x)),
            key=lambda a: (a.since, a.site, a.device),
        )
        cmds = views.commands(conn, sites=scope, limit=20)
        stores = views.sites(conn, s.user)
    ctx = {
        "session": s,
        "title": "Alerts",
        "alerts": rows,
        "commands": cmds,
        "site": site or "",
        "stores": stores,
        "tzs": tzs,
        "default_tz": cfg.default_tz,
        "can_command": cfg.commander.enabled,
    }
    return _page(request, "alerts.html", ctx)


@router.post("/alerts/restocked", dependencies=[Depends(csrf)])
def restocked(
    s: Annotated[Session, Depends(page_session)],
    cfg: Annotated[Settings, Depends(settings)],
    site: Annotated[str, Form(max_length=200)],
    device: Annotated[str, Form(max_length=200)],
    product: Annotated[str, Form(max_length=200)],
    stock: Annotated[str, Form(max_length=12)] = "",
) -> Response:
    """Send ``restocked`` (recorded in the audit log first) and show the command's page."""
    _visible(cfg, s, site)  # 404 for a store the user may not see, like every page
    try:
        n = int(stock) if stock.strip() else None
    except ValueError:
        raise HTTPException(400, f"stock: {stock!r} is not a whole number") from None
    if n is not None and not 0 <= n <= 1_000_000:
        raise HTTPException(400, "stock: between 0 and 1000000")
    try:
        cmd_id = cfg.commander.restocked(s.user.name, site, device, product, n)
    except CommandError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return RedirectResponse(f"/commands/{cmd_id}", status_code=303)


@router.get("/commands")
def commands_page(
    request: Request,
    s: Annotated[Session, Depends(page_session)],
    cfg: Annotated[Settings, Depends(settings)],
    site: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """The audit log."""
    scope = _visible(cfg, s, site or None)
    with cfg.reader.connect() as conn:
        cmds = views.commands(conn, sites=None if (s.user.is_admin and not site) else scope)
        tzs = views.site_tz(conn, cfg.default_tz)
    return _page(
        request,
        "commands.html",
        {"session": s, "title": "Commands", "commands": cmds, "tzs": tzs, "default_tz": cfg.default_tz},
    )


@router.get("/commands/{command_id}")
def command_page(
    request: Request,
    command_id: str,
    s: Annotated[Session, Depends(page_session)],
    cfg: Annotated[Settings, Depends(settings)],
) -> Response:
    """One command; the page reloads itself until the device answers."""
    with cfg.reader.connect() as conn:
        found = views.commands(conn, command_id=command_id[:64])
        tzs = views.site_tz(conn, cfg.default_tz)
        alert = None
        if found and s.user.may_see(found[0].site):
            c = found[0]
            alert = next(
                (
                    a
                    for a in queries.alerts(conn, site=c.site, device=c.device, state=None)
                    if a.kind == "depletion" and a.product == c.payload.get("product")
                ),
                None,
            )
    if not found or not s.user.may_see(found[0].site):
        raise HTTPException(404, f"no command {command_id[:64]!r}")
    c = found[0]
    ctx = {
        "session": s,
        "title": f"Command {c.id[:8]}",
        "c": c,
        "alert": alert,
        "tz": tzs.get(c.site, cfg.default_tz),
        "refresh": c.state in ("sent", "queued"),
    }
    return _page(request, "command.html", ctx)

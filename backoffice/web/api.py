"""The JSON API under ``/api/``: the same data as the pages, the same query functions as the CLI.

Who may call what is in :data:`backoffice.web.access.ENDPOINTS` (tested exhaustively from it).
"""

from __future__ import annotations

import re
import time
from dataclasses import fields
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from backoffice import queries
from backoffice.queries import By
from backoffice.render import _plain, counts_columns, render
from backoffice.web import views
from backoffice.web.accounts import LoginRefused, Session, end_session, login
from backoffice.web.commands import CommandError
from backoffice.web.deps import (
    MAX_RANGE_DAYS,
    Settings,
    StoreRef,
    admin_session,
    api_session,
    check_tz,
    csrf,
    login_csrf,
    settings,
    store,
    time_range,
)
from backoffice.web.session import client_address, new_login_token, set_session_cookie
from backoffice.web.settings import set_site_tz

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["api"])

Since = Annotated[
    str,
    Query(
        max_length=40, description="now, today, -30d, -2h, Unix seconds or ISO date/time (store's time zone)"
    ),
]
Until = Annotated[str, Query(max_length=40, description="end (exclusive), same forms")]
Name = Annotated[str, Query(max_length=200)]


class LoginBody(BaseModel):
    """Credentials."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class RestockedBody(BaseModel):
    """The shelf of ``product`` was refilled (to ``stock`` units; default: the device's configured stock)."""

    model_config = ConfigDict(extra="forbid")
    product: str = Field(min_length=1, max_length=200)
    stock: int | None = Field(None, ge=0, le=1_000_000)


class SiteSettingsBody(BaseModel):
    """Per-store settings."""

    model_config = ConfigDict(extra="forbid")
    tz: str = Field(min_length=1, max_length=64, description="IANA time zone, e.g. Europe/Paris")


def _flat(row: Any) -> dict[str, Any]:
    """A dataclass row of scalars as a dict (``asdict`` deep-copies: slow for thousands of rows)."""
    if hasattr(row, "_asdict"):  # a NamedTuple (CountRow)
        return dict(row._asdict())
    return {f.name: getattr(row, f.name) for f in fields(row)}


def _who(s: Session) -> dict[str, Any]:
    return {
        "name": s.user.name,
        "role": s.user.role,
        "sites": list(s.user.sites) if not s.user.is_admin else None,
    }


# --- session ---------------------------------------------------------------------------------------------


@router.get("/csrf", summary="A token for POST /api/login (also set as a cookie)")
def get_csrf(response: Response, cfg: Annotated[Settings, Depends(settings)]) -> dict[str, str]:
    """Step 1 of signing in from a script: send this token as ``X-CSRF-Token`` with ``POST /api/login``."""
    return {"csrf_token": new_login_token(response, cfg)}


@router.post("/login", summary="Sign in; sets the session cookie", dependencies=[Depends(login_csrf)])
def post_login(
    body: LoginBody, request: Request, response: Response, cfg: Annotated[Settings, Depends(settings)]
) -> dict[str, Any]:
    """Check the password; answers the session's CSRF token for later POST/PUT requests.

    Wrong name or password: 401. Too many failures for this name or address: 429 with Retry-After.
    """
    try:
        token, session = login(cfg.writer, body.name, body.password, client_address(request))
        if previous := request.cookies.get(cfg.session_cookie):
            end_session(cfg.writer, previous)  # signing in again: the old session ends
    except LoginRefused as exc:
        if exc.retry_after:
            raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
        raise HTTPException(401, str(exc)) from None
    set_session_cookie(response, cfg, token)
    return {"user": _who(session), "csrf_token": session.csrf}


@router.post("/logout", summary="End this session", dependencies=[Depends(csrf)])
def post_logout(
    request: Request,
    response: Response,
    s: Annotated[Session, Depends(api_session)],
    cfg: Annotated[Settings, Depends(settings)],
) -> dict[str, bool]:
    """The session is deleted on the server; the cookie is cleared."""
    end_session(cfg.writer, request.cookies.get(cfg.session_cookie, ""))
    response.delete_cookie(
        cfg.session_cookie, path="/", secure=cfg.secure_cookies, httponly=True, samesite="lax"
    )
    return {"ok": True}


@router.get("/me", summary="Who is signed in")
def get_me(s: Annotated[Session, Depends(api_session)]) -> dict[str, Any]:
    """Name, role, stores (null: every store) and the CSRF token of this session."""
    return {"user": _who(s), "csrf_token": s.csrf}


# --- fleet ------------------------------------------------------------------------------------------------


@router.get("/fleet", summary="Stores and their lanes: status, staleness, model, alerts, gaps")
def get_fleet(
    s: Annotated[Session, Depends(api_session)], cfg: Annotated[Settings, Depends(settings)]
) -> dict[str, Any]:
    """Every lane the caller may see, grouped by store; ``outdated``: not on the fleet's newest model."""
    now = time.time()
    with cfg.reader.connect() as conn:
        stores, newest = views.fleet(conn, s.user, cfg.default_tz, now)
    return JSONResponse(
        {  # type: ignore[return-value]
            "now": now,
            "newest_model_version": newest,
            "stores": [
                {
                    "site": st.site,
                    "tz": st.tz,
                    "lanes": [
                        {
                            **_flat(ln.row),
                            "state": ln.state,
                            "since": ln.since,
                            "period_s": ln.period_s,
                            "outdated": ln.outdated,
                        }
                        for ln in st.lanes
                    ],
                }
                for st in stores
            ],
        }
    )


@router.get("/sites", summary="The stores the caller may see, with their time zones")
def get_sites(
    s: Annotated[Session, Depends(api_session)], cfg: Annotated[Settings, Depends(settings)]
) -> list[dict[str, str]]:
    """Stores that have reported."""
    with cfg.reader.connect() as conn:
        tzs = views.site_tz(conn, cfg.default_tz)
        return [{"site": x, "tz": tzs.get(x, cfg.default_tz)} for x in views.sites(conn, s.user)]


@router.put("/sites/{site}/settings", summary="Set a store's time zone (admin)", dependencies=[Depends(csrf)])
def put_site_settings(
    body: SiteSettingsBody,
    s: Annotated[Session, Depends(admin_session)],
    ref: Annotated[StoreRef, Depends(store)],
    cfg: Annotated[Settings, Depends(settings)],
) -> dict[str, str]:
    """Times of this store are shown in ``tz`` on every page and in exports."""
    set_site_tz(cfg.writer, ref.site, check_tz(body.tz), s.user.name)
    return {"site": ref.site, "tz": body.tz}


def _counts(
    cfg: Settings, ref: StoreRef, since: str, until: str, device: str | None, by: By, per_device: bool
) -> tuple[queries.CountsResult, list[str]]:
    lo, hi = time_range(since, until, ref.tz, MAX_RANGE_DAYS)
    with cfg.reader.connect() as conn:
        if device is not None and views.lane(conn, ref.site, device) is None:
            raise HTTPException(404, f"no lane {device!r} in store {ref.site!r}")
        res = queries.counts(
            conn, since=lo, until=hi, site=ref.site, device=device, by=by, tz=ref.tz, per_device=per_device
        )
    return res, counts_columns(device, per_device)


@router.get("/sites/{site}/counts", summary="Counts per hour (or day), line, direction and class (JSON)")
def get_counts(
    ref: Annotated[StoreRef, Depends(store)],
    cfg: Annotated[Settings, Depends(settings)],
    since: Since = "today",
    until: Until = "now",
    device: Name | None = None,
    by: By = "hour",
    per_device: bool = False,
) -> dict[str, Any]:
    """What ``lanecount-backoffice counts --site SITE --tz TZ --format json`` prints for the same range.

    A row with ``exact: false`` overlaps a span the stream cannot prove (listed in ``spans``).
    """
    res, _ = _counts(cfg, ref, since, until, device, by, per_device)
    body = {
        "site": ref.site,
        "tz": ref.tz,
        "rows": [_flat(r) for r in res.rows],
        "spans": [_plain(x) for x in res.spans],
    }
    return JSONResponse(body)  # type: ignore[return-value]  # plain json.dumps: a month is 6,000 rows


@router.get(
    "/sites/{site}/counts.csv",
    summary="Counts per hour (or day) as CSV (a spreadsheet export)",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
def get_counts_csv(
    ref: Annotated[StoreRef, Depends(store)],
    cfg: Annotated[Settings, Depends(settings)],
    since: Since = "today",
    until: Until = "now",
    device: Name | None = None,
    by: By = "hour",
    per_device: bool = False,
) -> Response:
    """Byte for byte what ``lanecount-backoffice counts --format csv`` prints (times in the store's zone)."""
    res, cols = _counts(cfg, ref, since, until, device, by, per_device)
    body = render(res.rows, "csv", cols, ref.tz) + "\n"
    # A header is latin-1: any other character of a store or lane id becomes "_".
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"lanecount-{ref.site}{'-' + device if device else ''}-{by}.csv")
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/sites/{site}/lanes/{device}",
    summary="One lane: status, today's totals, latest crossings, gaps, conflicts",
)
def get_lane(
    device: str,
    ref: Annotated[StoreRef, Depends(store)],
    cfg: Annotated[Settings, Depends(settings)],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Everything the lane page shows, but the hourly table (``/counts?device=``)."""
    from backoffice.web.pages import today_range

    lo, hi = today_range(ref.tz)
    with cfg.reader.connect() as conn:
        ln = views.lane(conn, ref.site, device)
        if ln is None:
            raise HTTPException(404, f"no lane {device!r} in store {ref.site!r}")
        today = queries.counts(conn, since=lo, until=hi, site=ref.site, device=device, by="day", tz=ref.tz)
        return {
            "lane": {
                **_plain(ln.row),
                "state": ln.state,
                "since": ln.since,
                "period_s": ln.period_s,
                "outdated": ln.outdated,
            },
            "tz": ref.tz,
            "today": {"rows": [_plain(r) for r in today.rows], "spans": [_plain(x) for x in today.spans]},
            "crossings": [
                _plain(c) for c in queries.crossings(conn, site=ref.site, device=device, limit=limit)
            ],
            "gaps": [_plain(g) for g in queries.gaps(conn, site=ref.site, device=device)],
            "conflicts": views.conflicts(conn, ref.site, device),
        }


@router.get("/gaps", summary="Missing seq ranges per lane and epoch")
def get_gaps(
    s: Annotated[Session, Depends(api_session)],
    cfg: Annotated[Settings, Depends(settings)],
    site: Name | None = None,
) -> list[dict[str, Any]]:
    """What ``lanecount-backoffice gaps`` prints, for the stores the caller may see."""
    with cfg.reader.connect() as conn:
        return [_plain(g) for x in _scope(conn, s, site) for g in queries.gaps(conn, site=x)]


@router.get("/alerts", summary="Restock and source alerts, oldest first, with their age")
def get_alerts(
    s: Annotated[Session, Depends(api_session)],
    cfg: Annotated[Settings, Depends(settings)],
    site: Name | None = None,
    all: Annotated[bool, Query(description="cleared alerts too")] = False,
) -> list[dict[str, Any]]:
    """What ``lanecount-backoffice alerts`` prints (``--all``: cleared too), plus ``age_s``."""
    now = time.time()
    with cfg.reader.connect() as conn:
        rows = [
            a
            for x in _scope(conn, s, site)
            for a in queries.alerts(conn, site=x, state=None if all else "raised")
        ]
    rows.sort(key=lambda a: (a.since, a.site, a.device, a.topic))
    return [{**_plain(a), "age_s": now - a.since} for a in rows]


def _scope(conn: Any, s: Session, site: str | None) -> list[str]:
    """The stores a listing covers: ``site`` if the caller may see it (else 404), or all it may see."""
    visible = views.sites(conn, s.user)
    if site is None:
        return visible
    if site not in visible:
        raise HTTPException(404, f"no store {site!r}")
    return [site]


@router.post(
    "/sites/{site}/lanes/{device}/restocked",
    summary="Send `restocked` to a lane (a depletion alert of it must exist)",
    status_code=202,
    dependencies=[Depends(csrf)],
)
def post_restocked(
    device: str,
    body: RestockedBody,
    s: Annotated[Session, Depends(api_session)],
    ref: Annotated[StoreRef, Depends(store)],
    cfg: Annotated[Settings, Depends(settings)],
) -> dict[str, Any]:
    """Recorded in the audit log, then published (QoS 1); 202: poll ``/api/commands/{id}`` for the answer.

    ``state`` is ``done`` only once the device has answered ok.
    """
    try:
        cmd_id = cfg.commander.restocked(s.user.name, ref.site, device, body.product, body.stock)
    except CommandError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    with cfg.reader.connect() as conn:
        return _plain(views.commands(conn, command_id=cmd_id)[0])


@router.get("/commands", summary="The audit log: commands sent, by whom, and the devices' answers")
def get_commands(
    s: Annotated[Session, Depends(api_session)],
    cfg: Annotated[Settings, Depends(settings)],
    site: Name | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """Newest first, for the stores the caller may see."""
    with cfg.reader.connect() as conn:
        scope = _scope(conn, s, site) if (site or not s.user.is_admin) else None
        return [_plain(c) for c in views.commands(conn, sites=scope, limit=limit)]


@router.get("/commands/{command_id}", summary="One command and the device's answer")
def get_command(
    command_id: str,
    s: Annotated[Session, Depends(api_session)],
    cfg: Annotated[Settings, Depends(settings)],
) -> dict[str, Any]:
    """``state``: done, refused, sent, queued or expired (see the README)."""
    with cfg.reader.connect() as conn:
        found = views.commands(conn, command_id=command_id[:64])
    if not found or not s.user.may_see(found[0].site):
        raise HTTPException(404, f"no command {command_id[:64]!r}")
    return _plain(found[0])

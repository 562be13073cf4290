"""Who is calling and what they may touch: FastAPI dependencies every route declares.

Every route names one of :func:`api_session` / :func:`page_session` (signed in, else 401 or the login
page), :func:`admin_session` (the admin role, else 403), plus :func:`csrf` when it changes state, and
:func:`store` when it names a store: a store the caller may not see is answered exactly like a store
that does not exist (404), so a store user learns nothing about other stores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, HTTPException, Request
from sqlalchemy import Engine, select

from backoffice import tables as t
from backoffice.web import tables as w
from backoffice.web.accounts import Session, load_session, same_token
from backoffice.web.commands import Commander

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LOGIN_CSRF_COOKIE",
    "LoginRequired",
    "Settings",
    "StoreRef",
    "admin_session",
    "api_session",
    "csrf",
    "login_csrf",
    "optional_session",
    "page_admin_session",
    "page_session",
    "parse_when",
    "settings",
    "store",
]

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_CSRF_COOKIE = "lanecount_login_csrf"
MAX_RANGE_DAYS = 400  # like `lanecount-backoffice counts`
MAX_PAGE_DAYS = 31  # a page lists every hour: a month at most


@dataclass
class Settings:
    """What ``serve`` was started with (the app's state)."""

    reader: Engine
    writer: Engine
    commander: Commander
    default_tz: str = "UTC"
    secure_cookies: bool = False
    started: float = 0.0

    @property
    def session_cookie(self) -> str:
        """``__Host-`` binds the cookie to this host over HTTPS (no subdomain can set or read it)."""
        return "__Host-lanecount_session" if self.secure_cookies else "lanecount_session"

    @property
    def login_cookie(self) -> str:
        """The pre-login CSRF cookie (double submit)."""
        return f"__Host-{LOGIN_CSRF_COOKIE}" if self.secure_cookies else LOGIN_CSRF_COOKIE


class LoginRequired(Exception):
    """A page asked for without a session: the app answers with the login page."""


def settings(request: Request) -> Settings:
    """The app's settings."""
    cfg: Settings = request.app.state.settings
    return cfg


def optional_session(request: Request) -> Session | None:
    """The caller's session, or None (cached on the request)."""
    if not hasattr(request.state, "session"):
        cfg = settings(request)
        request.state.session = load_session(cfg.reader, cfg.writer, request.cookies.get(cfg.session_cookie))
    session: Session | None = request.state.session
    return session


def api_session(s: Annotated[Session | None, Depends(optional_session)]) -> Session:
    """A signed-in caller, else 401."""
    if s is None:
        raise HTTPException(401, "not signed in: POST /api/login first (or sign in at /login)")
    return s


def page_session(s: Annotated[Session | None, Depends(optional_session)]) -> Session:
    """A signed-in caller, else the login page."""
    if s is None:
        raise LoginRequired()
    return s


def admin_session(s: Annotated[Session, Depends(api_session)]) -> Session:
    """An admin, else 403."""
    if not s.user.is_admin:
        raise HTTPException(403, "only an admin may do this")
    return s


def page_admin_session(s: Annotated[Session, Depends(page_session)]) -> Session:
    """An admin, else 403 (a page: no session goes to the login page)."""
    if not s.user.is_admin:
        raise HTTPException(403, "only an admin may do this")
    return s


def _signed_in(request: Request, s: Session | None) -> Session:
    if s is None:
        if request.url.path.startswith("/api/"):
            raise HTTPException(401, "not signed in: POST /api/login first (or sign in at /login)")
        raise LoginRequired()
    return s


async def _sent_token(request: Request) -> str | None:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    return sent


_CSRF_REFUSED = "missing or wrong CSRF token: reload the page (API: send the X-CSRF-Token header)"


async def csrf(request: Request, s: Annotated[Session | None, Depends(optional_session)]) -> None:
    """A state-changing request: signed in (else 401 or the login page) and with the session's token.

    The token comes in the ``X-CSRF-Token`` header or the ``csrf_token`` form field; else 403.
    """
    session = _signed_in(request, s)
    if not same_token(await _sent_token(request), session.csrf):
        raise HTTPException(403, _CSRF_REFUSED)


async def login_csrf(request: Request) -> None:
    """A login carries the token that the login form (or ``GET /api/csrf``) set in a cookie, else 403.

    A double submit: another site cannot read the cookie, so it cannot forge a login either.
    """
    if not same_token(await _sent_token(request), request.cookies.get(settings(request).login_cookie)):
        raise HTTPException(403, _CSRF_REFUSED)


@dataclass(frozen=True)
class StoreRef:
    """A store the caller may see, with its time zone."""

    site: str
    tz: str


def store(site: str, request: Request, s: Annotated[Session | None, Depends(optional_session)]) -> StoreRef:
    """The store in the path, if the caller may see it and it has reported; else 404 (both alike)."""
    s = _signed_in(request, s)
    cfg = settings(request)
    with cfg.reader.connect() as conn:
        known = (
            s.user.may_see(site)
            and conn.execute(select(t.devices.c.id).where(t.devices.c.site == site).limit(1)).first()
        )
        tz = conn.execute(select(w.site_settings.c.tz).where(w.site_settings.c.site == site)).scalar()
    if not known:
        raise HTTPException(404, f"no store {site!r}")
    return StoreRef(site, tz or cfg.default_tz)


def check_tz(tz: str) -> str:
    """A time zone name, else 400."""
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise HTTPException(400, f"unknown time zone {tz!r} (e.g. UTC, Europe/Paris)") from None
    return tz


def parse_when(value: str, tz: str, name: str, now: float | None = None) -> float:
    """``now``, ``today``, ``-30d``, Unix seconds or an ISO date/time in ``tz`` (as the CLI), else 400."""
    from backoffice.cli import parse_time  # the CLI's own parser: the same forms everywhere

    try:
        value_s = parse_time(value, tz, time.time() if now is None else now)
    except Exception:
        raise HTTPException(
            400,
            f"{name}: {value!r} is not a time (now, today, -30d, -2h, Unix seconds or 2025-12-06[T14:00])",
        ) from None
    if not 0 <= value_s < 1e11:
        raise HTTPException(400, f"{name}: {value!r} is out of range")
    return value_s


def time_range(since: str, until: str, tz: str, max_days: int = MAX_RANGE_DAYS) -> tuple[float, float]:
    """[since, until) in Unix seconds, checked: ordered, at most ``max_days`` long; else 400."""
    lo, hi = parse_when(since, tz, "since"), parse_when(until, tz, "until")
    if hi <= lo:
        raise HTTPException(400, f"until ({_fmt(hi, tz)}) must be after since ({_fmt(lo, tz)})")
    if hi - lo > max_days * 86400:
        raise HTTPException(400, f"the range is longer than {max_days} days: narrow since/until")
    return lo, hi


def _fmt(ts: float, tz: str) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).isoformat(timespec="minutes")

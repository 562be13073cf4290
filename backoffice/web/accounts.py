"""Users, passwords (argon2id), sessions and the failed-login limit. Plain functions on an engine.

A session cookie holds a random token (256 bits); the database keeps only its SHA-256, so a copy of the
database does not let anyone sign in. Each session has its own CSRF token, and signing in always starts
a new session (a token planted before the login is never promoted). A session ends after
``SESSION_IDLE_S`` without requests or ``SESSION_MAX_S`` after the login, at logout, when its user's
password changes, or when the user is removed.

Failed logins are rate-limited per name and per client address over ``FAIL_WINDOW_S``; a refused
attempt is not even checked against the password, so guessing stops at the limit. Every failure is
logged (name, address, how many in the window).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from backoffice.web import tables as w

__all__ = [
    "FAIL_WINDOW_S",
    "MAX_FAILS_PER_ADDRESS",
    "MAX_FAILS_PER_NAME",
    "MIN_PASSWORD",
    "ROLES",
    "AccountError",
    "LoginRefused",
    "Session",
    "User",
    "add_user",
    "check_site_name",
    "count_users",
    "end_session",
    "list_users",
    "load_session",
    "login",
    "remove_user",
    "set_password",
]

log = logging.getLogger(__name__)

ROLES = ("admin", "store")
MIN_PASSWORD = 10
SESSION_IDLE_S = 12 * 3600.0
SESSION_MAX_S = 7 * 86400.0
TOUCH_EVERY_S = 300.0  # a session's idle clock is written at most this often (not at every request)
FAIL_WINDOW_S = 900.0
MAX_FAILS_PER_NAME = 5
MAX_FAILS_PER_ADDRESS = 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SITE_BAD = re.compile(r"[/+#\x00-\x1f]")

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile
# Verified when the name is unknown, so an attacker cannot tell names from the response time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """A user, role, store or password the back office refuses (one line for the user)."""


@dataclass(frozen=True)
class User:
    """A login and what it may see: an admin every store, a store user its ``sites``."""

    id: int
    name: str
    role: str
    sites: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        """True for the head office role."""
        return self.role == "admin"

    def may_see(self, site: str) -> bool:
        """Whether this user may see (and command) the store ``site``."""
        return self.is_admin or site in self.sites


@dataclass(frozen=True)
class Session:
    """A signed-in browser or script."""

    user: User
    csrf: str
    expires: float


class LoginRefused(Exception):
    """A login that did not succeed; ``retry_after`` is set when the rate limit refused it."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_site_name(site: str) -> str:
    """A store id as it appears in MQTT topics (no ``/``, ``+``, ``#``, no control characters).

    Raises:
        AccountError: an empty or impossible store id.
    """
    if not site or len(site) > 200 or _SITE_BAD.search(site):
        raise AccountError(f"{site!r} is not a store id (1..200 characters, no '/', '+', '#')")
    return site


def _check(name: str, role: str, sites: list[str]) -> None:
    if not _NAME.fullmatch(name):
        raise AccountError(f"user name {name!r}: use 1..64 letters, digits, '.', '_', '@' or '-'")
    if role not in ROLES:
        raise AccountError(f"--role: {role!r} is not one of {', '.join(ROLES)}")
    if role == "store" and not sites:
        raise AccountError("--sites: a store user needs at least one store (e.g. --sites s1,s2)")
    if role == "admin" and sites:
        raise AccountError("--sites: an admin sees every store; leave --sites out")
    for s in sites:
        check_site_name(s)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")


def add_user(engine: Engine, name: str, role: str, sites: list[str], password: str) -> User:
    """Create a user.

    Raises:
        AccountError: a bad name, role, store list or password, or the name is taken.
    """
    _check(name, role, sites)
    _check_password(password)
    now = time.time()
    with engine.begin() as conn:
        if conn.execute(select(w.users.c.id).where(w.users.c.name == name)).first():
            raise AccountError(f"user {name!r} exists (change its password with `user passwd {name}`)")
        key = conn.execute(
            insert(w.users).values(
                name=name, role=role, password_hash=_hasher.hash(password), created=now, password_changed=now
            )
        ).inserted_primary_key
        assert key is not None
        uid = key[0]
        if sites:
            conn.execute(insert(w.user_sites), [{"user_id": uid, "site": s} for s in sorted(set(sites))])
    log.info("user %s added (role %s, stores %s)", name, role, ",".join(sites) or "all")
    return User(int(uid), name, role, tuple(sorted(set(sites))))


def set_password(engine: Engine, name: str, password: str) -> None:
    """Change a password; the user's sessions end.

    Raises:
        AccountError: unknown user or a password too short.
    """
    _check_password(password)
    with engine.begin() as conn:
        uid = _user_id(conn, name)
        conn.execute(
            update(w.users)
            .where(w.users.c.id == uid)
            .values(password_hash=_hasher.hash(password), password_changed=time.time())
        )
        conn.execute(delete(w.web_sessions).where(w.web_sessions.c.user_id == uid))
    log.info("user %s: password changed, sessions ended", name)


def remove_user(engine: Engine, name: str) -> None:
    """Remove a user and end its sessions (its commands stay in the audit log, by name).

    Raises:
        AccountError: unknown user.
    """
    with engine.begin() as conn:
        uid = _user_id(conn, name)
        conn.execute(delete(w.web_sessions).where(w.web_sessions.c.user_id == uid))
        conn.execute(delete(w.user_sites).where(w.user_sites.c.user_id == uid))
        conn.execute(delete(w.users).where(w.users.c.id == uid))
    log.info("user %s removed", name)


def _user_id(conn: Connection, name: str) -> int:
    uid = conn.execute(select(w.users.c.id).where(w.users.c.name == name)).scalar()
    if uid is None:
        raise AccountError(f"no user {name!r} (see `lanecount-backoffice user list`)")
    return int(uid)


def count_users(conn: Connection) -> int:
    """How many users exist."""
    return int(conn.execute(select(func.count()).select_from(w.users)).scalar() or 0)


def list_users(conn: Connection) -> list[User]:
    """Every user, by name."""
    sites: dict[int, list[str]] = {}
    for uid, site in conn.execute(
        select(w.user_sites.c.user_id, w.user_sites.c.site).order_by(w.user_sites.c.site)
    ):
        sites.setdefault(int(uid), []).append(site)
    q = select(w.users.c.id, w.users.c.name, w.users.c.role).order_by(w.users.c.name)
    return [User(int(r.id), r.name, r.role, tuple(sites.get(int(r.id), []))) for r in conn.execute(q)]


def _load_user(conn: Connection, uid: int) -> User | None:
    row = conn.execute(
        select(w.users.c.id, w.users.c.name, w.users.c.role).where(w.users.c.id == uid)
    ).first()
    if row is None:
        return None
    sites = conn.execute(
        select(w.user_sites.c.site).where(w.user_sites.c.user_id == uid).order_by(w.user_sites.c.site)
    )
    return User(int(row.id), row.name, row.role, tuple(s for (s,) in sites))


# --- login ---------------------------------------------------------------------------------------------


def login(
    engine: Engine, name: str, password: str, address: str, now: float | None = None
) -> tuple[str, Session]:
    """Check a password and start a session; return (cookie token, session).

    Raises:
        LoginRefused: wrong name or password (one message for both), or too many failures lately.
    """
    now = time.time() if now is None else now
    name, address = name[:64], address[:64]
    f = w.login_failures.c
    with engine.connect() as conn:
        by_name = conn.execute(
            select(func.count(), func.min(f.at)).where(f.name == name, f.at > now - FAIL_WINDOW_S)
        ).first()
        by_addr = conn.execute(
            select(func.count(), func.min(f.at)).where(f.address == address, f.at > now - FAIL_WINDOW_S)
        ).first()
        row = conn.execute(
            select(w.users.c.id, w.users.c.password_hash).where(w.users.c.name == name)
        ).first()
    assert by_name is not None and by_addr is not None
    for (n, oldest), limit in ((by_name, MAX_FAILS_PER_NAME), (by_addr, MAX_FAILS_PER_ADDRESS)):
        if n >= limit:
            wait = max(1, int(oldest + FAIL_WINDOW_S - now) + 1)
            log.warning(
                "login refused for %r from %s: %d failed logins in %d min (rate limit)",
                name,
                address,
                n,
                FAIL_WINDOW_S // 60,
            )
            raise LoginRefused(
                f"too many failed logins; try again in {(wait + 59) // 60} min", retry_after=wait
            )
    if not _verify(row.password_hash if row else _DUMMY_HASH, password) or row is None:
        with engine.begin() as conn:
            conn.execute(insert(w.login_failures).values(name=name, address=address, at=now))
            conn.execute(delete(w.login_failures).where(f.at < now - 86400.0))
        log.warning(
            "failed login for %r from %s (%d in %d min)",
            name,
            address,
            int(by_name[0]) + 1,
            FAIL_WINDOW_S // 60,
        )
        raise LoginRefused("wrong user name or password")
    if _hasher.check_needs_rehash(row.password_hash):
        with engine.begin() as conn:
            conn.execute(
                update(w.users).where(w.users.c.id == row.id).values(password_hash=_hasher.hash(password))
            )
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(
            insert(w.web_sessions).values(
                token_hash=_digest(token),
                user_id=row.id,
                csrf=csrf,
                created=now,
                last_seen=now,
                expires=now + SESSION_IDLE_S,
                address=address,
            )
        )
        conn.execute(delete(w.web_sessions).where(w.web_sessions.c.expires < now))
        user = _load_user(conn, int(row.id))
    assert user is not None
    log.info("login: %s from %s", name, address)
    return token, Session(user, csrf, now + SESSION_IDLE_S)


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def load_session(
    reader: Engine, writer: Engine, token: str | None, now: float | None = None
) -> Session | None:
    """The live session of a cookie token, or None; extends its idle time now and then (``writer``)."""
    if not token or len(token) > 100:
        return None
    now = time.time() if now is None else now
    s = w.web_sessions.c
    key = _digest(token)
    with reader.connect() as conn:
        row = conn.execute(
            select(s.user_id, s.csrf, s.created, s.last_seen, s.expires).where(s.token_hash == key)
        ).first()
        if row is None or row.expires <= now:
            return None
        user = _load_user(conn, int(row.user_id))
    if user is None:
        return None
    expires = float(row.expires)
    if now - row.last_seen > TOUCH_EVERY_S:
        expires = min(now + SESSION_IDLE_S, row.created + SESSION_MAX_S)
        with writer.begin() as conn:
            conn.execute(
                update(w.web_sessions).where(s.token_hash == key).values(last_seen=now, expires=expires)
            )
    return Session(user, row.csrf, expires)


def end_session(engine: Engine, token: str) -> None:
    """Log out: the session is gone from the database."""
    with engine.begin() as conn:
        conn.execute(delete(w.web_sessions).where(w.web_sessions.c.token_hash == _digest(token)))


def same_token(a: str | None, b: str | None) -> bool:
    """Constant-time comparison of two tokens (False when either is missing)."""
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())

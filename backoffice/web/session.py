"""Cookies: the session cookie (HttpOnly, SameSite=Lax, Secure behind TLS) and the pre-login CSRF cookie."""

from __future__ import annotations

import secrets

from fastapi import Request, Response

from backoffice.web.accounts import SESSION_MAX_S
from backoffice.web.deps import Settings

__all__ = ["client_address", "new_login_token", "set_login_cookie", "set_session_cookie"]


def client_address(request: Request) -> str:
    """The caller's address (behind a proxy, uvicorn's --forwarded-allow-ips says whose header to trust)."""
    return request.client.host if request.client else "unknown"


def set_session_cookie(response: Response, cfg: Settings, token: str) -> None:
    """The session cookie: no script can read it, other sites' top-level POSTs do not carry it."""
    response.set_cookie(
        cfg.session_cookie,
        token,
        max_age=int(SESSION_MAX_S),
        path="/",
        secure=cfg.secure_cookies,
        httponly=True,
        samesite="lax",
    )
    response.delete_cookie(
        cfg.login_cookie, path="/", secure=cfg.secure_cookies, httponly=True, samesite="strict"
    )


def new_login_token(response: Response, cfg: Settings) -> str:
    """A fresh pre-login CSRF token, set as a cookie; the login form (or script) sends it back."""
    token = secrets.token_urlsafe(32)
    set_login_cookie(response, cfg, token)
    return token


def set_login_cookie(response: Response, cfg: Settings, token: str) -> None:
    """The pre-login CSRF cookie (double submit): only this site's own form can echo it."""
    response.set_cookie(
        cfg.login_cookie,
        token,
        max_age=3600,
        path="/",
        secure=cfg.secure_cookies,
        httponly=True,
        samesite="strict",
    )

"""The FastAPI application: pages (server-rendered) and the JSON API under ``/api/``.

Security around every response: a strict Content-Security-Policy (scripts and styles from this
server only, no inline script), no framing, no MIME sniffing, no caching of data, same-origin
referrers. Errors are one line: JSON ``{"detail": ...}`` under ``/api/``, a small page elsewhere;
a request the app cannot parse is a 4xx, never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from backoffice import __version__
from backoffice.render import when
from backoffice.web.deps import LoginRequired, Settings, optional_session
from edge.notify import Notifier

__all__ = ["create_app", "templates"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(max(0, seconds))
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


templates.env.filters["when"] = when
templates.env.filters["age"] = _age
templates.env.filters["url"] = lambda s: quote(str(s), safe="")
templates.env.globals["version"] = __version__


def create_app(cfg: Settings, notifier: Notifier | None = None) -> FastAPI:
    """The application for ``cfg`` (``serve`` runs it with uvicorn; tests with a TestClient).

    ``notifier`` tells systemd (Type=notify) the app is ready once its start-up has run.
    """
    from backoffice.web import api, docs, pages

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg.commander.start()
        if notifier is not None:
            notifier.ready("serving")
        try:
            yield
        finally:
            if notifier is not None:
                notifier.stopping()
            cfg.commander.stop()

    app = FastAPI(
        title="lanecount back office",
        version=__version__,
        description=(
            "Counts per lane and hour, lanes, gaps, alerts and commands. Sign in with `POST /api/login` "
            "(after `GET /api/csrf`); send the `X-CSRF-Token` header on every POST and PUT. A store user "
            "sees and commands only its stores: any other store answers 404."
        ),
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = cfg
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.mount("/api/docs/static", StaticFiles(directory=str(docs.SWAGGER)), name="swagger")
    app.include_router(api.router)
    app.include_router(docs.router)
    app.include_router(pages.router)
    _handlers(app)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for k, v in HEADERS.items():
            response.headers.setdefault(k, v)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        hdrs = dict(exc.headers or {})
        if _is_api(request):
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=hdrs)
        return _error_page(request, exc.status_code, str(exc.detail), hdrs)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        detail = "; ".join(_problem(e) for e in exc.errors()) or "bad request"
        if _is_api(request):
            return JSONResponse({"detail": detail}, 422)
        return _error_page(request, 422, detail, {})


def _problem(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")]
    where = ".".join(loc) or "request"
    return f"{where}: {err.get('msg', 'invalid')}"


def _error_page(request: Request, status: int, message: str, headers: dict[str, str]) -> Response:
    session = getattr(request.state, "session", None)
    if session is None and status != 401:
        try:
            session = optional_session(request)
        except Exception:  # the error page itself must never fail
            session = None
    resp: HTMLResponse = templates.TemplateResponse(
        request, "error.html", {"status": status, "message": message, "session": session}, status_code=status
    )
    resp.headers.update(headers)
    return resp

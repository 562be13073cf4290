"""The API's OpenAPI page (Swagger UI) served from this server: no CDN at run time.

Swagger UI's files come from the ``fastapi-offline`` wheel (MIT; it ships Swagger UI 5, Apache-2.0).
The page's own start-up script is a static file, so the strict Content-Security-Policy holds.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.responses import HTMLResponse

__all__ = ["SWAGGER", "router"]

SWAGGER = Path(fastapi_offline.__file__).resolve().parent / "static"
router = APIRouter(include_in_schema=False)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lanecount back office API</title>
<link rel="stylesheet" href="/api/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/api/docs/static/swagger-ui-bundle.js"></script>
<script src="/static/docs-init.js"></script></body></html>
"""


@router.get("/api/docs")
def docs() -> HTMLResponse:
    """Swagger UI on /api/openapi.json (public: it holds the API's shape, no data)."""
    csp = (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": csp})

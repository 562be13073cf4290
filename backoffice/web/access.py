"""Who may call what: one table of every endpoint, which the tests check exhaustively against the app.

Access levels:

- ``public``: anyone (the login form, the API's description; no data).
- ``signed-in``: any user; what it lists is cut to the caller's stores (``?site=`` of a store the
  caller may not see: 404).
- ``store``: the store in the path must be one the caller may see; any other store, existing or
  not, is 404 (a store user cannot tell them apart).
- ``admin``: the admin role only; a store user gets 403.

``changes``: the request changes state, so it also needs the session's CSRF token (``X-CSRF-Token``
header or ``csrf_token`` form field; before login, the pre-login token): without it, 403.
Anonymous callers get 401 from ``/api/`` and are sent to the login page (303) elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ENDPOINTS", "Endpoint", "markdown"]


@dataclass(frozen=True)
class Endpoint:
    """One route: method, path, access level, whether it changes state, and what it is for."""

    method: str
    path: str
    access: str
    changes: bool
    what: str


ENDPOINTS: tuple[Endpoint, ...] = (
    # pages
    Endpoint("GET", "/login", "public", False, "login form (sets the pre-login CSRF cookie)"),
    Endpoint("POST", "/login", "public", True, "sign in (pre-login CSRF token; rate-limited)"),
    Endpoint("POST", "/logout", "signed-in", True, "sign out"),
    Endpoint("GET", "/", "signed-in", False, "fleet: the caller's stores and lanes"),
    Endpoint("GET", "/sites/{site}", "store", False, "store: lanes, counts per hour, totals, gaps"),
    Endpoint("POST", "/sites/{site}/settings", "admin", True, "set a store's time zone"),
    Endpoint("GET", "/sites/{site}/lanes/{device}", "store", False, "lane: status, counts, crossings, gaps"),
    Endpoint("GET", "/alerts", "signed-in", False, "open alerts of the caller's stores"),
    Endpoint("POST", "/alerts/restocked", "store", True, "send restocked (store in the form)"),
    Endpoint("GET", "/commands", "signed-in", False, "audit log of the caller's stores"),
    Endpoint("GET", "/commands/{command_id}", "store", False, "one command (404 for another store's)"),
    # API
    Endpoint("GET", "/api/csrf", "public", False, "pre-login CSRF token"),
    Endpoint("POST", "/api/login", "public", True, "sign in (pre-login CSRF token; rate-limited)"),
    Endpoint("POST", "/api/logout", "signed-in", True, "sign out"),
    Endpoint("GET", "/api/me", "signed-in", False, "who am I, and my CSRF token"),
    Endpoint("GET", "/api/fleet", "signed-in", False, "stores and lanes"),
    Endpoint("GET", "/api/sites", "signed-in", False, "the caller's stores and time zones"),
    Endpoint("PUT", "/api/sites/{site}/settings", "admin", True, "set a store's time zone"),
    Endpoint("GET", "/api/sites/{site}/counts", "store", False, "counts per hour/day (JSON export)"),
    Endpoint("GET", "/api/sites/{site}/counts.csv", "store", False, "counts per hour/day (CSV export)"),
    Endpoint("GET", "/api/sites/{site}/lanes/{device}", "store", False, "one lane"),
    Endpoint("POST", "/api/sites/{site}/lanes/{device}/restocked", "store", True, "send restocked"),
    Endpoint("GET", "/api/gaps", "signed-in", False, "missing messages of the caller's stores"),
    Endpoint("GET", "/api/alerts", "signed-in", False, "alerts of the caller's stores"),
    Endpoint("GET", "/api/commands", "signed-in", False, "audit log of the caller's stores"),
    Endpoint("GET", "/api/commands/{command_id}", "store", False, "one command (404 for another store's)"),
    Endpoint("GET", "/api/openapi.json", "public", False, "the API's OpenAPI description"),
    Endpoint("GET", "/api/docs", "public", False, "Swagger UI on it"),
)


def markdown() -> str:
    """The table as Markdown, for the README: endpoint × role."""
    cell = {
        "public": ("yes", "yes", "yes"),
        "signed-in": ("no", "yes¹", "yes"),
        "store": ("no", "its stores; others 404", "yes"),
        "admin": ("no", "403", "yes"),
    }
    lines = ["| endpoint | anonymous | store user | admin | CSRF token |", "| --- | --- | --- | --- | --- |"]
    for e in ENDPOINTS:
        anon, store, admin = cell[e.access]
        if anon == "no":
            anon = "401" if e.path.startswith("/api/") else "→ /login"
        lines.append(
            f"| `{e.method} {e.path}` | {anon} | {store} | {admin} | {'needed' if e.changes else ''} |"
        )
    lines.append("\n¹ only its stores are listed; `?site=` of another store: 404.")
    return "\n".join(lines)

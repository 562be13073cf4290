"""The end of ``make demo``: the dashboard on the demo's database, with a login made for it.

Creates (or gives a new password to) the admin user ``demo`` with a random password, serves the
dashboard on a free loopback port, checks that the login works and the fleet page lists the demo's
lanes, and prints the URL and the login. In a terminal it then serves until Ctrl-C; under ``CI=true``
(or without a terminal) it stops right away.

    python -m backoffice.web.demo --db demo-out/backoffice.db [--broker mqtt://127.0.0.1:1883]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import threading
import time
from typing import Any

from backoffice.collector import BrokerURL
from backoffice.db import make_engine, migrate
from backoffice.web.accounts import AccountError, add_user, set_password
from backoffice.web.app import create_app
from backoffice.web.bench import Client
from backoffice.web.commands import Commander
from backoffice.web.deps import Settings

__all__ = ["main"]

USER = "demo"


def demo_login(db: str) -> str:
    """The ``demo`` admin with a new random password (returned)."""
    writer = make_engine(db, writer=True)
    migrate(writer)
    password = secrets.token_urlsafe(12)
    try:
        add_user(writer, USER, "admin", [], password)
    except AccountError:
        set_password(writer, USER, password)  # a second demo run: same user, new password
    return password


def start(db: str, broker: str | None, port: int) -> tuple[Any, threading.Thread]:
    """Uvicorn serving the dashboard in a thread; returns (server, thread) once it listens."""
    import uvicorn

    reader, writer = make_engine(db), make_engine(db, writer=True)
    url = BrokerURL.parse(broker) if broker else None
    app = create_app(Settings(reader, writer, Commander(reader, writer, url), "UTC"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit("error: the dashboard did not start")
        time.sleep(0.05)
    return server, thread


def main(argv: list[str] | None = None) -> int:
    """Serve the demo's dashboard; 0 when it answered with the demo's lanes."""
    from edge.demo import free_port

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", required=True, help="the demo collector's database")
    p.add_argument("--broker", default=None, help="mqtt://HOST:PORT for commands (the demo's broker)")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    a = p.parse_args(argv)
    password = demo_login(a.db)
    port = a.port or free_port()
    server, thread = start(a.db, a.broker, port)
    base = f"http://127.0.0.1:{port}"
    try:
        page = Client(base, USER, password).get("/").decode()
    except OSError as exc:
        print(f"error: the dashboard did not answer: {exc}", file=sys.stderr)
        server.should_exit = True
        return 1
    lanes = page.count('class="lane state-')
    print(f"\ndashboard: {base}/   ({lanes} lane{'s' if lanes != 1 else ''} on the fleet page)")
    print(f"login:     {USER} / {password}   (an admin made for this demo; `user add` makes yours)")
    if not a.broker:
        print("           read-only: the demo's broker has stopped (Restocked needs serve --broker)")
    interactive = os.environ.get("CI", "").lower() not in ("true", "1") and sys.stdin.isatty()
    if interactive:
        print("serving until Ctrl-C ...", flush=True)
        try:
            while thread.is_alive():
                thread.join(0.5)
        except KeyboardInterrupt:
            pass
    server.should_exit = True
    thread.join(10)
    return 0 if lanes else 1


if __name__ == "__main__":
    sys.exit(main())

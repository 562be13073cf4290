"""Helpers for the dashboard tests: a database fed by simulated devices, users, signed-in clients."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Engine

from backoffice.ingest import Ingest
from backoffice.protocol import Message, parse
from backoffice.simdevice import SimDevice

PASSWORD = "correct horse battery staple"


def store(ingest: Ingest, messages: list[tuple[str, bytes]]) -> None:
    """Parse and store (topic, payload) pairs in one batch, as the collector would."""
    parsed = [parse(topic, payload, time.time(), "lanecount") for topic, payload in messages]
    bad = [p for p in parsed if not isinstance(p, Message)]
    assert not bad, bad
    ingest.store(parsed)


def flush(ingest: Ingest, dev: SimDevice) -> None:
    """Store everything in the device's outbox."""
    store(ingest, [(m.topic, m.payload) for m in dev.take()])


def status(ingest: Ingest, dev: SimDevice, state: str, now: float, **extra: Any) -> None:
    """Store a retained status of ``dev`` (``extra`` overrides fields, e.g. model_version)."""
    body = json.loads(dev.status(now, state))
    body.update(extra)
    store(ingest, [(f"lanecount/{dev.site}/{dev.device}/status", json.dumps(body).encode())])


def answer(
    ingest: Ingest, dev: SimDevice, cmd_id: str, ok: bool = True, message: str = "milk_carton restocked"
) -> None:
    """The device's ``cmd/result`` for a command id (as the daemon publishes it)."""
    dev._queue(
        "cmd/result",
        {"id": cmd_id, "command": "restocked", "ok": ok, "message": message, "timestamp": time.time()},
    )
    flush(ingest, dev)


def login(client: Any, name: str, password: str = PASSWORD) -> str:
    """Sign a TestClient in through the API; return the session's CSRF token."""
    token = client.get("/api/csrf").json()["csrf_token"]
    res = client.post(
        "/api/login", json={"name": name, "password": password}, headers={"X-CSRF-Token": token}
    )
    assert res.status_code == 200, res.text
    return str(res.json()["csrf_token"])


def engines(path: str) -> tuple[Engine, Engine]:
    """(reader, writer) on a migrated SQLite database."""
    from backoffice.db import make_engine, migrate

    writer = make_engine(path, writer=True)
    migrate(writer)
    return make_engine(path), writer

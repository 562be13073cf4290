"""Page-load times of the dashboard on a chain-sized database (``make bench-dashboard``).

Builds (once) the benchmark database of the collector's benchmark (``backoffice.generate``: 30 days of
hourly counts of 100 stores × 10 lanes), adds what the dashboard shows beyond counts (each lane's
status, model, last counts periods, some raised alerts, the last hour's crossing events, commands),
starts ``lanecount-backoffice serve`` on it and times every page and export over HTTP: the server's
whole answer (queries, rendering, transfer on loopback), sequential requests, after a warm-up.

    python -m backoffice.web.bench --db bench-out/dashboard.db [--runs 20] [--out bench-out/dashboard.json]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from backoffice import tables as t
from backoffice.db import make_engine, migrate
from backoffice.web import tables as w
from backoffice.web.accounts import add_user

__all__ = ["main"]

PASSWORD = "bench-password-not-secret"
PERIOD = 60.0


def decorate(engine: Engine, now: float) -> dict[str, int]:
    """Status, model, last counts periods, alerts, crossings and commands for every generated lane."""
    with engine.connect() as conn:
        devs = conn.execute(
            select(t.devices.c.id, t.devices.c.site, t.devices.c.device).order_by(t.devices.c.id)
        ).all()
        latest = dict(
            conn.execute(
                select(t.epochs.c.device_id, func.max(t.epochs.c.id)).group_by(t.epochs.c.device_id)
            ).all()
        )
        epoch_of = dict(conn.execute(select(t.epochs.c.id, t.epochs.c.epoch)).all())
    end = now // PERIOD * PERIOD
    periods, alerts, crossings, cmds = [], [], [], []
    with engine.begin() as conn:
        for i, (dev_id, site, device) in enumerate(devs):
            offline = i % 97 == 5  # stale: 1 lane in 89 (freshen)
            received = now - 10
            conn.execute(
                t.devices.update()
                .where(t.devices.c.id == dev_id)
                .values(
                    status="offline" if offline else "online",
                    status_reason="connection lost" if offline else None,
                    status_at=now - 5,
                    status_json=json.dumps({"state": "online", "uptime_s": 3600.0 + i}),
                    model_version="2026.10.02" if i % 20 == 3 else "2026.11.28",
                    fps=14.5,
                    source_state="ok",
                    status_epoch=epoch_of[latest[dev_id]],
                    last_counts_end=end,
                    last_counts_received=received,
                )
            )
            for k in range(3):
                start = end - (3 - k) * PERIOD
                periods.append(
                    {
                        "epoch_id": latest[dev_id],
                        "seq": 2_000_000 + k,
                        "device_id": dev_id,
                        "period_start": start,
                        "period_end": start + PERIOD,
                        "interval": "{}",
                        "counted": None,
                        "role": "counted",
                        "gap": "none",
                        "gap_start": start if k else None,
                        "open_counts": None,
                        "contrib": None,
                    }
                )
            for k in range(30):
                crossings.append(
                    {
                        "epoch_id": latest[dev_id],
                        "seq": 3_000_000 + k,
                        "device_id": dev_id,
                        "ts": now - 3600 + k * 120,
                        "line": "lane",
                        "direction": "in",
                        "class_name": "apple" if k % 3 else "milk_carton",
                        "track_id": k,
                    }
                )
            if i % 25 == 0:
                body = {
                    "kind": "depletion",
                    "product": "milk_carton",
                    "state": "raised",
                    "threshold": 3,
                    "estimate": 2,
                    "stock": 40,
                    "line": "lane",
                    "site": site,
                    "device": device,
                    "epoch": epoch_of[latest[dev_id]],
                    "seq": 4_000_000,
                    "timestamp": now - 60 * i,
                }
                alerts.append(
                    {
                        "device_id": dev_id,
                        "topic": "alerts/restock/depletion/milk_carton",
                        "kind": "depletion",
                        "product": "milk_carton",
                        "state": "raised",
                        "since": now - 60 * i,
                        "updated": now - 60 * i,
                        "epoch": body["epoch"],
                        "seq": 4_000_000,
                        "payload": json.dumps(body),
                    }
                )
                cmds.append(
                    {
                        "id": f"{i:032x}",
                        "site": site,
                        "device": device,
                        "command": "restocked",
                        "payload": json.dumps({"id": f"{i:032x}", "product": "milk_carton"}),
                        "user_name": "bench-admin",
                        "created": now - 30 * i,
                        "attempts": 1,
                        "sent_at": now - 30 * i,
                        "last_error": None,
                        "device_state": "online",
                    }
                )
        conn.execute(t.counts_periods.insert(), periods)
        conn.execute(t.crossings.insert(), crossings)
        conn.execute(t.alerts.insert(), alerts)
        conn.execute(w.commands.insert(), cmds)
        conn.exec_driver_sql("ANALYZE")
    add_user(engine, "bench-admin", "admin", [], PASSWORD)
    add_user(engine, "bench-store", "store", [devs[0][1]], PASSWORD)
    return {"lanes": len(devs), "periods": len(periods), "crossings": len(crossings), "alerts": len(alerts)}


def freshen(engine: Engine, now: float) -> None:
    """Status and last counts as of ``now`` (the database may be days old): 1 lane in 89 stale."""
    d = t.devices.c
    with engine.begin() as conn:
        conn.execute(t.devices.update().values(status_at=now - 5, last_counts_received=now - 10))
        conn.execute(t.devices.update().where(d.id % 89 == 8).values(last_counts_received=now - 900))


def build(db: str, days: int, stores: int, lanes: int) -> None:
    """The benchmark database (the collector's generator, then :func:`decorate`)."""
    from backoffice.generate import generate

    engine = make_engine(db, writer=True)
    migrate(engine)
    started = time.perf_counter()
    print("generating:", json.dumps(generate(engine, days, stores, lanes)), flush=True)
    print(
        "dashboard data:",
        json.dumps(decorate(engine, time.time())),
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )


class Client:
    """A signed-in HTTP client (cookie jar, CSRF token)."""

    def __init__(self, base: str, name: str, password: str = PASSWORD) -> None:
        """Sign in as ``name``."""
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        token = json.loads(self.get("/api/csrf"))["csrf_token"]
        body = json.dumps({"name": name, "password": password}).encode()
        req = urllib.request.Request(
            f"{base}/api/login", body, {"Content-Type": "application/json", "X-CSRF-Token": token}
        )
        with self.opener.open(req, timeout=30) as r:
            assert r.status == 200

    def get(self, path: str) -> bytes:
        """The body of a GET (raises on anything but 200)."""
        with self.opener.open(f"{self.base}{path}", timeout=60) as r:
            return bytes(r.read())


def pages(site: str, today: str, month_ago: str) -> list[tuple[str, str, str]]:
    """(label, user, path) of what is timed."""
    return [
        ("fleet, admin (1,000 lanes: those needing a look)", "bench-admin", "/"),
        ("fleet, admin, every lane (?all=1)", "bench-admin", "/?all=1"),
        ("fleet, store user (10 lanes)", "bench-store", "/"),
        ("store, today", "bench-store", f"/sites/{site}"),
        ("store, 31 days", "bench-store", f"/sites/{site}?day={month_ago}&days=31"),
        ("lane, today", "bench-store", f"/sites/{site}/lanes/lane-00"),
        ("lane, 31 days", "bench-store", f"/sites/{site}/lanes/lane-00?day={month_ago}&days=31"),
        ("alerts, admin (all stores)", "bench-admin", "/alerts"),
        ("commands, admin", "bench-admin", "/commands"),
        ("API fleet, admin", "bench-admin", "/api/fleet"),
        ("API counts, store, 30 days (JSON)", "bench-store", f"/api/sites/{site}/counts?since=-30d"),
        ("CSV export, store, 30 days", "bench-store", f"/api/sites/{site}/counts.csv?since=-30d"),
    ]


def measure(base: str, runs: int) -> list[dict[str, Any]]:
    """Time each page ``runs`` times after two warm-up loads."""
    clients = {name: Client(base, name) for name in ("bench-admin", "bench-store")}
    today = datetime.now(timezone.utc).date()
    out = []
    for label, user, path in pages("store-0000", today.isoformat(), (today - timedelta(days=30)).isoformat()):
        c = clients[user]
        for _ in range(2):
            size = len(c.get(path))
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            c.get(path)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        row = {
            "page": label,
            "path": path,
            "kb": round(size / 1024),
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
            "max_ms": round(times[-1], 1),
        }
        print(
            f"{label:<36} p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  ({row['kb']} kB)",
            flush=True,
        )
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    """Build the database if needed, serve it, time the pages, print a Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="bench-out/dashboard.db", help="SQLite file or URL (built when absent)")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--stores", type=int, default=100)
    p.add_argument("--lanes", type=int, default=10)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--port", type=int, default=8099)
    p.add_argument("--out", type=Path, default=Path("bench-out/dashboard.json"))
    a = p.parse_args(argv)
    if "://" not in a.db and not Path(a.db).exists():
        Path(a.db).parent.mkdir(parents=True, exist_ok=True)
        build(a.db, a.days, a.stores, a.lanes)
    freshen(make_engine(a.db, writer=True), time.time())
    cmd = [
        sys.executable,
        "-c",
        "from backoffice.cli import main; main()",
        "serve",
        "--db",
        a.db,
        "--port",
        str(a.port),
        "--log-level",
        "WARNING",
    ]
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{a.port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/login", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("error: serve did not start") from None
                time.sleep(0.2)
        rows = measure(base, a.runs)
    finally:
        server.terminate()
        server.wait(10)
    print("\n| page | p50 ms | p95 ms | size |\n| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['page']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['kb']} kB |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"db": a.db, "runs": a.runs, "pages": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

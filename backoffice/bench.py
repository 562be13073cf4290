"""``make bench-backoffice``: ingest rate, publish→commit latency and query times, SQLite vs PostgreSQL.

Everything runs on this machine, privately: a Mosquitto on a free port, a PostgreSQL cluster made with
initdb (:mod:`backoffice.localpg`), the real ``lanecount-backoffice collect`` processes.

1. **Ingest rate** (per collector, exactly-once kept): simulated lanes (:mod:`backoffice.simdevice`,
   a checkout lane's mix: a crossing every few seconds, a counts message every 10 s) publish a backlog
   while the collectors' sessions are offline; the collectors then drain it. Rate = messages stored /
   (last commit - first message received), per collector count (1, 2 in one shared subscription).
   Afterwards the ledger must hold every published message once and the roll-up equal the truth.
2. **Latency**: the same lanes publish live at half the 1-collector rate, timestamps = publish time;
   p50/p99 of commit time - timestamp, from the collector's own statistics.
3. **Queries** on a generated history (:mod:`backoffice.generate`: 30 days x 1,000 lanes): "counts per
   hour per class for one store, last 30 days" and "all stores today" (per store and class, by day; and
   by hour). Median of 7 runs after a warm-up.

Prints a Markdown table and writes ``results.json`` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from backoffice import queries
from backoffice import tables as t
from backoffice.db import make_engine, migrate
from backoffice.generate import generate
from backoffice.localpg import PgCluster, pg_bin
from backoffice.simdevice import Fleet, Outgoing, SimDevice, next_boundary
from edge.demo import free_port

CLASSES = ["apple", "banana", "bread", "milk_carton", "eggs", "cheese"]


class Mosquitto:
    """A private broker whose sessions keep every queued message (the back office's production setting)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 0\nmax_queued_bytes 0\n"
        )
        binary = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else "mosquitto"
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def close(self) -> None:
        """Stop it."""
        self.proc.terminate()
        self.proc.wait(10)


class Collectors:
    """N ``lanecount-backoffice collect`` processes of one shared-subscription group."""

    def __init__(
        self, n: int, port: int, db: str, group: str, out: Path, extra: list[str] | None = None
    ) -> None:
        self.cmds = []
        self.stats = [out / f"{group}-{i}.json" for i in range(n)]
        self.logs = [out / f"{group}-{i}.log" for i in range(n)]
        for i in range(n):
            self.cmds.append(
                [
                    sys.executable,
                    *(
                        ["-m", "cProfile", "-o", f"{os.environ['BENCH_PROFILE']}/{group}-{i}.prof"]
                        if os.environ.get("BENCH_PROFILE")
                        else []
                    ),
                    "-m",
                    "backoffice",
                    "collect",
                    "--broker",
                    f"mqtt://127.0.0.1:{port}",
                    "--db",
                    db,
                    "--group",
                    group,
                    "--client-id",
                    f"{group}-{i}",
                    "--stats-out",
                    str(self.stats[i]),
                    *(extra or []),
                ]
            )
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        """Start all, wait until each has subscribed (its session exists from then on)."""
        for s in self.stats:
            s.unlink(missing_ok=True)
        self.procs = []
        offsets = [log.stat().st_size if log.exists() else 0 for log in self.logs]
        for cmd, log in zip(self.cmds, self.logs, strict=True):
            with open(log, "ab") as f:
                self.procs.append(subprocess.Popen(cmd, stdout=f, stderr=f))
        for log, offset in zip(self.logs, offsets, strict=True):
            deadline = time.monotonic() + 60
            while b"subscribed to" not in log.read_bytes()[offset:]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a collector did not subscribe: {log.read_text()[-1500:]}")
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL all (their sessions stay with the broker)."""
        for p in self.procs:
            p.kill()
            p.wait(10)

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM all; return their statistics."""
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            p.wait(60)
        return [json.loads(s.read_text()) for s in self.stats]


def workload(lanes: int, seconds: float, seed: int = 1) -> tuple[list[SimDevice], list[Outgoing]]:
    """``lanes`` checkout lanes for ``seconds`` (simulated): ~0.3 crossings/s, a counts message per 10 s."""
    rng = random.Random(seed)
    t0 = 1_765_000_800.0
    devs = [SimDevice(f"store-{i // 10:03d}", f"lane-{i % 10}", period=10.0) for i in range(lanes)]
    events: list[tuple[float, int]] = []
    for i in range(lanes):
        ts = t0
        while ts < t0 + seconds:
            ts += rng.expovariate(0.3)
            events.append((ts, i))
    for d in devs:
        d.start(t0)
    msgs: list[Outgoing] = []
    for ts, i in sorted(events):
        if ts < t0 + seconds:
            devs[i].cross(ts, rng.choice(CLASSES), rng.choice(["in", "in", "in", "out"]))
    for d in devs:
        d.tick(next_boundary(t0 + seconds, d.period))
    # Interleave the lanes as a broker sees them: by time, each lane's own order kept.
    for d in devs:
        msgs += d.take()
    msgs.sort(key=lambda m: (json.loads(m.payload)["timestamp"], m.seq))
    return devs, msgs


def verify(db: str, sent: list[Outgoing], devs: list[SimDevice]) -> str:
    """Exactly once: every published key stored once, no conflict, the roll-up equals the truth."""
    engine = make_engine(db)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(t.messages)).scalar_one()
        conflicts = conn.execute(select(func.count()).select_from(t.conflicts)).scalar_one()
        total = conn.execute(select(func.coalesce(func.sum(t.site_hourly.c.n), 0))).scalar_one()
    engine.dispose()
    truth = sum(len(d.truth) for d in devs)
    ok = stored == len(sent) and conflicts == 0 and total == truth
    return (
        "yes" if ok else f"NO (stored {stored}/{len(sent)}, conflicts {conflicts}, counted {total}/{truth})"
    )


def ingest_run(
    broker: Mosquitto, db: str, n: int, sent: list[Outgoing], devs: list[SimDevice], out: Path, tag: str
) -> dict[str, Any]:
    """Backlog drained by ``n`` collectors into a fresh ``db``."""
    engine = make_engine(db, writer=True)
    migrate(engine)
    engine.dispose()
    cols = Collectors(n, broker.port, db, f"bench-{tag}", out)
    cols.start()
    cols.kill()  # offline: the broker queues the backlog for their sessions
    fleet = Fleet("127.0.0.1", broker.port, client_id=f"sim-{tag}", max_inflight=5000)
    fleet.publish(sent, timeout=600)
    fleet.close()
    cols.start()
    reader = make_engine(db)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        with reader.connect() as conn:
            if conn.execute(select(func.count()).select_from(t.messages)).scalar_one() >= len(sent):
                break
        time.sleep(0.5)
    reader.dispose()
    stats = cols.stop()
    first = min(s["first_received"] for s in stats if s["first_received"])
    last = max(s["last_commit"] for s in stats if s["last_commit"])
    rate = sum(s["stored"] for s in stats) / (last - first)
    return {
        "db": tag.split("-")[0],
        "collectors": n,
        "messages": len(sent),
        "msgs_per_s": round(rate, 0),
        "per_collector": round(rate / n, 0),
        "exactly_once": verify(db, sent, devs),
    }


def latency_run(
    broker: Mosquitto, db: str, rate: float, seconds: float, out: Path, tag: str
) -> dict[str, Any]:
    """Live publishing at ``rate`` msgs/s for ``seconds`` after a 10 s warm-up; the collector's lag.

    The warm-up (every lane's first messages: new devices and epochs) is left out with SIGUSR1.
    """
    engine = make_engine(db, writer=True)
    migrate(engine)
    engine.dispose()
    cols = Collectors(1, broker.port, db, f"lat-{tag}", out)
    cols.start()
    fleet = Fleet("127.0.0.1", broker.port, client_id=f"live-{tag}", max_inflight=5000)
    rng = random.Random(2)
    devs = [SimDevice(f"store-{i // 10:03d}", f"lane-{i % 10}", period=10.0) for i in range(200)]
    now = time.time()
    for d in devs:
        d.start(now)
    start, sent = time.monotonic(), 0
    infos = []
    warm = True
    while time.monotonic() - start < seconds + 10:
        if warm and time.monotonic() - start >= 10:
            warm = False
            cols.procs[0].send_signal(signal.SIGUSR1)
        due = int((time.monotonic() - start) * rate) - sent
        now = time.time()
        for _ in range(max(0, due)):
            devs[rng.randrange(len(devs))].cross(now, rng.choice(CLASSES))
        for d in devs:
            d.tick(now)
            for m in d.take():
                infos.append(fleet.client.publish(m.topic, m.payload, qos=1))
                sent += 1
        time.sleep(0.005)
    for info in infos:
        info.wait_for_publish(60)
    time.sleep(2)
    fleet.close()
    (s,) = cols.stop()
    return {
        "db": tag,
        "rate": round(rate),
        "sent": sent,
        "lag_p50_s": s["lag_p50_s"],
        "lag_p99_s": s["lag_p99_s"],
    }


def query_run(db: str, tag: str) -> dict[str, Any]:
    """The two queries on a generated 30-day, 1,000-lane history."""
    engine = make_engine(db, writer=True)
    migrate(engine)
    made = generate(engine)
    engine.dispose()
    engine = make_engine(db)
    now = time.time()
    today = now - now % 86400
    cases = {
        "one store, 30 days, per hour and class": lambda c: queries.counts(
            c, site="store-0042", since=now - 30 * 86400, until=now
        ),
        "all stores today, per store and class": lambda c: queries.counts(
            c, since=today, until=today + 86400, by="day"
        ),
        "all stores today, per store, hour and class": lambda c: queries.counts(
            c, since=today, until=today + 86400
        ),
    }
    res: dict[str, Any] = {"db": tag, "hourly_rows": made["hourly_rows"], "generate_s": made["seconds"]}
    with engine.connect() as conn:
        for name, q in cases.items():
            q(conn)
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                rows = q(conn).rows
                times.append(time.perf_counter() - t0)
            res[name] = {"ms": round(statistics.median(times) * 1000, 1), "rows": len(rows)}
    engine.dispose()
    return res


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-out/backoffice"))
    p.add_argument("--lanes", type=int, default=200)
    p.add_argument("--seconds", type=float, default=900.0, help="simulated time of the backlog")
    p.add_argument("--live-s", type=float, default=20.0, help="length of each latency run")
    p.add_argument("--live-rate", type=float, default=1500.0, help="latency run's rate without an ingest run")
    p.add_argument("--skip-queries", action="store_true")
    p.add_argument("--parts", default="ingest,latency,queries", help="which parts to run (comma-separated)")
    p.add_argument("--dbs", default="sqlite,postgresql", help="which databases (comma-separated)")
    p.add_argument("--collectors", default="1,2", help="ingest runs with these numbers of collectors")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lanecount-bench-"))
    bindir = pg_bin()
    pg = PgCluster(bindir) if bindir is not None else None
    if pg is not None:
        pg.start()
    broker = Mosquitto(tmp)
    results: dict[str, Any] = {"ingest": [], "latency": [], "queries": []}
    try:
        devs, sent = workload(a.lanes, a.seconds)
        print(f"workload: {len(sent)} messages from {a.lanes} lanes", flush=True)
        dbs = [("sqlite", lambda name: str(tmp / f"{name}.db"))]
        if pg is not None:
            dbs.append(("postgresql", lambda name: pg.createdb(name)))
        dbs = [(tag, make) for tag, make in dbs if tag in a.dbs.split(",")]
        parts = set(a.parts.split(","))
        for tag, make in dbs:
            for n in [int(x) for x in a.collectors.split(",")] if "ingest" in parts else ():
                r = ingest_run(broker, make(f"ingest{n}"), n, sent, devs, a.out, f"{tag}-{n}")
                print(json.dumps(r), flush=True)
                results["ingest"].append(r)
            if "latency" in parts:
                one = [r for r in results["ingest"] if r["db"] == tag and r["collectors"] == 1]
                rate = one[0]["msgs_per_s"] / 2 if one else a.live_rate
                r = latency_run(broker, make("latency"), rate, a.live_s, a.out, tag)
                print(json.dumps(r), flush=True)
                results["latency"].append(r)
            if "queries" in parts and not a.skip_queries:
                r = query_run(make("history"), tag)
                print(json.dumps(r), flush=True)
                results["queries"].append(r)
    finally:
        broker.close()
        if pg is not None:
            pg.close()
    (a.out / f"results-{a.parts.replace(',', '-')}.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


def table(results: dict[str, Any]) -> str:
    """The README's table."""
    lines = [
        "| database | collectors | msgs/s (all) | msgs/s per collector | exactly once |",
        "|---|---|---|---|---|",
    ]
    for r in results["ingest"]:
        lines.append(
            f"| {r['db']} | {r['collectors']} | {r['msgs_per_s']:.0f} | {r['per_collector']:.0f} "
            f"| {r['exactly_once']} |"
        )
    lines += ["", "| database | live rate (msgs/s) | lag p50 (s) | lag p99 (s) |", "|---|---|---|---|"]
    for r in results["latency"]:
        lines.append(f"| {r['db']} | {r['rate']} | {r['lag_p50_s']} | {r['lag_p99_s']} |")
    if results["queries"]:
        names = [k for k in results["queries"][0] if isinstance(results["queries"][0][k], dict)]
        lines += [
            "",
            "| query (30 days x 1,000 lanes) | " + " | ".join(r["db"] for r in results["queries"]) + " |",
        ]
        lines.append("|---|" + "---|" * len(results["queries"]))
        for name in names:
            cells = [f"{r[name]['ms']} ms ({r[name]['rows']} rows)" for r in results["queries"]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

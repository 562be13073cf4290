"""Helpers for the back office tests: feed simulated devices' messages, read figures back, compare."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, func, select

from backoffice import queries
from backoffice import tables as t
from backoffice.ingest import Ingest, Outcome
from backoffice.protocol import Message, parse
from backoffice.simdevice import Outgoing, SimDevice

HOUR = 3600
T0 = 1_765_000_800.0 - (1_765_000_800.0 % HOUR)  # an hour start (2025-12-06 06:00 UTC)


def feed(
    ingest: Ingest, messages: Iterable[Outgoing], batch: int = 200, prefix: str = "lanecount"
) -> Outcome:
    """Parse and store messages in batches; return the summed outcome."""
    total = Outcome()
    parsed = [parse(m.topic, m.payload, time.time(), prefix) for m in messages]
    assert all(isinstance(p, Message) for p in parsed), [p for p in parsed if not isinstance(p, Message)][:3]
    for i in range(0, len(parsed), batch):
        out = ingest.store(parsed[i : i + batch])
        for k in ("stored", "duplicates", "conflicts", "rejected", "expired"):
            setattr(total, k, getattr(total, k) + getattr(out, k))
    return total


def hourly(
    engine: Engine, site: str, device: str, since: float = 0.0, until: float = 4e9
) -> tuple[Counter, list]:
    """(Counter of (hour, line, direction, class) -> n, spans) as the query function returns them."""
    with engine.connect() as conn:
        res = queries.counts(conn, site=site, device=device, since=since, until=until)
    return Counter({(int(r.start), r.line, r.direction, r.class_name): r.n for r in res.rows}), res.spans


def inexact_hours(spans: Sequence[queries.Span]) -> set[int]:
    """Hours that any span overlaps."""
    out = set()
    for s in spans:
        h = int(s.start // HOUR) * HOUR
        while h < s.end:
            out.add(h)
            h += HOUR
    return out


def assert_figures_hold(engine: Engine, dev: SimDevice) -> tuple[Counter, list]:
    """Every hour no span touches equals the truth; no hour is ever over the truth; spans' totals hold."""
    got, spans = hourly(engine, dev.site, dev.device)
    truth = dev.truth_hourly()
    loose = inexact_hours(spans)
    for key in set(got) | set(truth):
        if key[0] in loose:
            assert got[key] <= truth[key], f"hour {key} over the truth: {got[key]} > {truth[key]}"
        else:
            assert got[key] == truth[key], f"hour {key}: stored {got[key]}, true {truth[key]}"
    for s in spans:
        real = Counter((ln, d, c) for ts, ln, d, c in dev.truth if s.start <= ts < s.end)
        for key, n in s.counts.items():
            if s.kind == "unattributed":
                # The known total of lost counts messages in the stretch: the truth minus what the exact
                # hours already hold is at least this much.
                assert n <= real[key], (s, real)
            else:
                assert n <= real[key], f"lower bound {n} over the truth {real[key]} for {key} in {s}"
    return got, spans


def ledger(engine: Engine) -> list[tuple[str, str, str, int, str]]:
    """Every stored message: (site, device, epoch, seq, payload)."""
    d, e, m = t.devices.c, t.epochs.c, t.messages.c
    q = (
        select(d.site, d.device, e.epoch, m.seq, m.payload)
        .select_from(t.messages.join(t.epochs, e.id == m.epoch_id).join(t.devices, d.id == e.device_id))
        .order_by(d.site, d.device, e.epoch, m.seq)
    )
    with engine.connect() as conn:
        return [(r.site, r.device, r.epoch, int(r.seq), r.payload) for r in conn.execute(q)]


def count_rows(engine: Engine, table: t.Table) -> int:
    """Rows in a table."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def published_keys(messages: Iterable[Outgoing]) -> dict[tuple[str, str, str, int], bytes]:
    """(site, device, epoch, seq) -> payload of what the devices published."""
    out = {}
    for m in messages:
        b = json.loads(m.payload)
        out[(b["site"], b["device"], b["epoch"], b["seq"])] = m.payload
    return out


# --- a real collector process -------------------------------------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# What a production broker for the back office needs (README, "Back office"): sessions kept while a
# collector is away, no cap on the messages queued for it.
BROKER_EXTRA = ["max_queued_messages 0", "max_queued_bytes 0"]


class CollectorProc:
    """``lanecount-backoffice collect`` as a child process (``python -m backoffice``)."""

    def __init__(
        self, broker: Any, db: str, log: Path, client_id: str = "bo-test", *args: str, env: dict | None = None
    ) -> None:
        self.cmd = [
            sys.executable,
            "-m",
            "backoffice",
            "collect",
            "--broker",
            f"mqtt://127.0.0.1:{broker.port}",
            "--db",
            db,
            "--client-id",
            client_id,
            "--batch-ms",
            "50",
            "--log-level",
            "INFO",
            *args,
        ]
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._offset = 0  # where this run's log begins

    def start(self, env: dict | None = None) -> CollectorProc:
        self._offset = len(self.text())
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.cmd, stdout=out, stderr=out, cwd=ROOT, env={**self.env, **(env or {})}
        )
        out.close()
        return self

    def ready(self, timeout: float = 30.0) -> CollectorProc:
        """Wait until this run has subscribed (messages published before that reach nobody)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "subscribed to" in self.text()[self._offset :]:
                return self
            assert self.running(), self.text()[-2000:]
            time.sleep(0.05)
        raise AssertionError(f"the collector did not subscribe: {self.text()[-2000:]}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def term(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_for_rows(engine: Engine, n: int, timeout: float = 60.0, table: t.Table = t.messages) -> int:
    """Poll until ``table`` holds ``n`` rows (or the timeout); return the count."""
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        try:
            got = count_rows(engine, table)
        except Exception:
            got = -1
        if got >= n:
            return got
        time.sleep(0.1)
    return got

"""Simulated devices that follow the device protocol 2 (edge/schemas) exactly, with a ground truth.

A :class:`SimDevice` is one lane's state database, reduced to what the protocol shows: seq numbers that
continue along the database, a new epoch at every start, the ``epoch`` message, periods aligned to the
clock (the next multiple of ``publish_period_s`` or of 900 s), the catch-up after a pause, ``counted``
that is never reset, and a bounded outbox that drops the oldest droppable messages. What a test does to
a real device it can do here: stop and start, restore a backup (a fork), lose the database (recovered),
reset, let the outbox overflow. Every crossing is recorded as ground truth.

Time is explicit (``now`` arguments), so tests can play a day in milliseconds; :class:`Fleet` publishes
the outboxes of many devices through one MQTT client (tests and ``make bench-backoffice``).
"""

from __future__ import annotations

import copy
import json
import math
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fleet", "Outgoing", "SimDevice", "next_boundary"]

QUARTER = 900.0


def next_boundary(t: float, period: float) -> float:
    """The first period end after ``t``: the next multiple of ``period`` or of 900 s, whichever is first."""
    return min(math.floor(t / period) * period + period, math.floor(t / QUARTER) * QUARTER + QUARTER)


def last_boundary(t: float, period: float) -> float:
    """The last boundary at or before ``t``."""
    return max(math.floor(t / period) * period, math.floor(t / QUARTER) * QUARTER)


@dataclass
class Outgoing:
    """A queued message: topic, payload bytes (final), retain, keep (never dropped by the bound)."""

    seq: int
    topic: str
    payload: bytes
    retain: bool = False
    keep: bool = False

    @property
    def kind(self) -> str:
        """The topic below the device."""
        return self.topic.split("/", 3)[3]


Counts = dict[tuple[str, str, str], int]


def _per_line(counts: Counts, lines: Iterable[str]) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {line: {"in": {}, "out": {}} for line in lines}
    for (line, d, c), n in sorted(counts.items()):
        if n:
            out.setdefault(line, {"in": {}, "out": {}})[d][c] = n
    return out


@dataclass
class _Db:
    """What the device's state database holds."""

    last_seq: int = 0
    epoch: str | None = None
    counted: Counts = field(default_factory=Counter)
    cumulative: Counts = field(default_factory=Counter)
    interval: Counts = field(default_factory=Counter)
    interval_start: float | None = None
    outbox: deque[Outgoing] = field(default_factory=deque)


class SimDevice:
    """One simulated lane (see the module docstring).

    Args:
        site: store id.
        device: lane id.
        prefix: topic prefix.
        period: ``publish_period_s``.
        max_messages: the outbox bound.
        lines: the counting lines (every counts message lists them, as the daemon does).
    """

    def __init__(
        self,
        site: str,
        device: str,
        prefix: str = "lanecount",
        period: float = 10.0,
        max_messages: int = 100_000,
        lines: Iterable[str] = ("lane",),
    ) -> None:
        self.site, self.device, self.prefix, self.period = site, device, prefix, period
        self.max_messages = max_messages
        self.lines = list(lines)
        self.db = _Db()
        self.running = False
        self.truth: list[tuple[float, str, str, str]] = []  # every real crossing: ts, line, direction, class
        self.dropped = 0
        self.published: list[Outgoing] = []  # what left the outbox (test bookkeeping)
        self._lost_epoch: str | None = None  # the epoch marker that survives a lost database

    # --- life cycle --------------------------------------------------------------------------------

    def start(self, now: float, state: str | None = None, recovered: str | None = None) -> None:
        """Start the daemon: a new epoch, its epoch message, then the catch-up periods."""
        db = self.db
        previous = None if db.epoch is None else {"epoch": db.epoch, "last_seq": db.last_seq}
        if state is None:
            state = "new" if db.epoch is None else "continued"
        if self._lost_epoch is not None:
            previous = {"epoch": self._lost_epoch, "last_seq": None}
            state, recovered = "recovered", recovered or "state database lost; new database"
            self._lost_epoch = None
        db.epoch = secrets.token_hex(8)
        if db.interval_start is None:
            db.interval_start = now
        body: dict[str, Any] = {
            "state": state,
            "previous": previous,
            "counted": _per_line(db.counted, self.lines),
            "interval_start": db.interval_start,
            "timestamp": now,
        }
        if recovered:
            body["recovered"] = recovered
        self._queue("epoch", body, keep=True)
        self.running = True
        self._roll(now)

    def stop(self) -> None:
        """A stop (clean or not: the protocol reports the held interval at the next start)."""
        self.running = False

    def snapshot(self) -> _Db:
        """A backup of the state database (restore it with :meth:`restore`)."""
        return copy.deepcopy(self.db)

    def restore(self, backup: _Db) -> None:
        """Replace the state database with a backup (the next start forks)."""
        self.db = copy.deepcopy(backup)

    def lose_database(self) -> None:
        """The state database is gone; the epoch marker outside it survives (next start: recovered)."""
        self._lost_epoch = self.db.epoch
        self.db = _Db()

    # --- what the daemon does ------------------------------------------------------------------------

    def cross(
        self, ts: float, cls: str, direction: str = "in", line: str = "lane", track_id: int = 0
    ) -> None:
        """A crossing at wall time ``ts`` (committed with its event message, like a frame)."""
        assert self.running, "the device is stopped"
        self._roll(ts)
        key = (line, direction, cls)
        for c in (self.db.counted, self.db.cumulative, self.db.interval):
            c[key] += 1
        self.truth.append((ts, line, direction, cls))
        body = {
            "line": line,
            "track_id": track_id,
            "class_id": 0,
            "class_name": cls,
            "direction": direction,
            "frame": int(ts * 15) % 1_000_000,
            "timestamp": ts,
        }
        self._queue("events/crossing", body)

    def tick(self, now: float) -> None:
        """The loop's periodic turn: queue counts messages whose boundary has passed."""
        if self.running:
            self._roll(now)

    def reset(self, now: float, line: str | None = None) -> None:
        """The ``reset`` command: ``cumulative`` restarts, ``counted`` never does."""
        self._roll(now)
        for key in [k for k in self.db.cumulative if line is None or k[0] == line]:
            del self.db.cumulative[key]
        self._queue(
            "cmd/result",
            {"id": f"r{now}", "command": "reset", "ok": True, "message": "counts reset", "timestamp": now},
        )

    def alert(self, now: float, product: str, state: str, estimate: int = 0) -> None:
        """A depletion alert change (retained, never dropped)."""
        body = {
            "kind": "depletion",
            "product": product,
            "state": state,
            "threshold": 2,
            "estimate": estimate,
            "stock": 10,
            "timestamp": now,
        }
        self._queue(f"alerts/restock/depletion/{product}", body, retain=True, keep=True)

    def status(self, now: float, state: str = "online") -> bytes:
        """A retained status payload (not queued: the daemon publishes it directly)."""
        body: dict[str, Any] = {"state": state, "site": self.site, "device": self.device}
        if state == "online":
            body |= {
                "timestamp": now,
                "uptime_s": 1.0,
                "model_version": "sim-1",
                "fps": 15.0,
                "source": "ok",
                "epoch": self.db.epoch,
            }
        else:
            body["reason"] = "shutdown"
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    def _roll(self, now: float) -> None:
        db = self.db
        assert db.interval_start is not None
        first = next_boundary(db.interval_start, self.period)
        if now < first:
            return
        self._queue_counts(first, now)
        last = last_boundary(now, self.period)
        if last > first:
            self._queue_counts(last, now)  # the one empty catch-up period

    def _queue_counts(self, end: float, now: float) -> None:
        db = self.db
        body = {
            "timestamp": now,  # when it was queued: at or after period_end
            "period_start": db.interval_start,
            "period_end": end,
            "cumulative": _per_line(db.cumulative, self.lines),
            "interval": _per_line(db.interval, self.lines),
            "counted": _per_line(db.counted, self.lines),
        }
        db.interval = Counter()
        db.interval_start = end
        self._queue("counts", body)

    def _queue(self, kind: str, body: dict[str, Any], retain: bool = False, keep: bool = False) -> None:
        db = self.db
        db.last_seq += 1
        payload = {**body, "seq": db.last_seq, "epoch": db.epoch, "site": self.site, "device": self.device}
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        db.outbox.append(
            Outgoing(db.last_seq, f"{self.prefix}/{self.site}/{self.device}/{kind}", text, retain, keep)
        )
        excess = len(db.outbox) - self.max_messages
        if excess > 0:
            kept: deque[Outgoing] = deque()
            for m in db.outbox:
                if excess > 0 and not m.keep:
                    excess -= 1
                    self.dropped += 1
                else:
                    kept.append(m)
            db.outbox = kept

    # --- the outbox ----------------------------------------------------------------------------------

    def take(self, n: int | None = None) -> list[Outgoing]:
        """Remove and return up to ``n`` pending messages, oldest first (as if acknowledged)."""
        out: list[Outgoing] = []
        while self.db.outbox and (n is None or len(out) < n):
            out.append(self.db.outbox.popleft())
        self.published += out
        return out

    def truth_hourly(self) -> Counter[tuple[int, str, str, str]]:
        """The true counts per (UTC hour, line, direction, class)."""
        return Counter((int(ts // 3600) * 3600, line, d, c) for ts, line, d, c in self.truth)


class Fleet:
    """Publish many simulated devices' outboxes through one MQTT 5 client (QoS 1, in seq order).

    A message leaves its device's outbox when taken; :meth:`publish` returns only when the broker has
    acknowledged everything (or raises after ``timeout``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str = "lanecount-sim",
        max_inflight: int = 1000,
        reconnect_s: float = 1.0,
    ) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self._paho = paho
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self._connected.set()
        self.client.on_disconnect = lambda c, u, f, rc, p: self._connected.clear()
        self.client.reconnect_delay_set(reconnect_s, 5)  # type: ignore[arg-type]  # default: the edge daemon's first reconnect delay
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError(f"simulated devices could not connect to {host}:{port}")

    def publish(self, messages: Iterable[Outgoing], timeout: float = 60.0) -> int:
        """Publish and wait for every PUBACK; what a lost connection took is sent again.

        At least once, like a device's outbox: the collector sees the duplicates.
        """
        pending = list(messages)
        total = len(pending)
        deadline = time.monotonic() + timeout
        while pending:
            if not self._connected.wait(max(0.01, deadline - time.monotonic())):
                raise TimeoutError("the simulated devices lost the broker")
            infos = [(m, self.client.publish(m.topic, m.payload, qos=1, retain=m.retain)) for m in pending]
            pending = []
            for m, info in infos:
                try:
                    info.wait_for_publish(max(0.01, deadline - time.monotonic()))
                    ok = info.is_published()
                except (RuntimeError, ValueError):
                    ok = False
                if not ok:
                    pending.append(m)
            if pending and time.monotonic() >= deadline:
                raise TimeoutError("the broker did not acknowledge the simulated devices' messages")
            if pending:
                time.sleep(0.1)
        return total

    def raw(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish anything (malformed messages for the fuzz test) and wait for its PUBACK."""
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()

"""``lanecount-backoffice collect``: MQTT 5 shared subscription → batches → one commit each → acks.

The ingest path, top-down, in :meth:`Collector.run`:

1. paho's network thread puts every message (QoS 1, ``manual_ack``) on a queue, nothing else;
2. the main thread takes up to ``batch_size`` messages or what came within ``batch_ms`` of the first,
   validates each (:func:`backoffice.protocol.parse`), and stores the batch in one transaction
   (:class:`backoffice.ingest.Ingest`);
3. only after the commit it acknowledges the batch's messages (PUBACK, in the order received).

A collector killed at any instant has acknowledged only committed messages: the broker delivers the
rest again (same session, persistent: stable client id, ``clean_start=False``, a session expiry), and the
ledger's key makes the second insert a no-op. A PUBACK is sent only on the connection the message came
on: after a reconnect its packet id may name another message. While the database is unreachable or
full the batch is retried with backoff and nothing is acknowledged; the broker's receive maximum then
stops the flow. A batch the database refuses for its data (never expected: :mod:`backoffice.protocol`
screens values) is split until the one message is found and rejected, so it cannot stall the rest.

SIGTERM/SIGINT: stop taking messages, store and acknowledge the batch in hand, disconnect. Messages
still unread stay with the broker for the next start (or for the other collectors of the group).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from backoffice.db import prune
from backoffice.ingest import Ingest, Outcome
from backoffice.metrics import Metrics
from backoffice.protocol import Message, Rejection, parse, subscriptions
from edge.notify import Notifier

__all__ = ["BrokerURL", "Collector", "CollectorConfig", "Stats"]

log = logging.getLogger(__name__)

FAULT_ENV = "LANECOUNT_BACKOFFICE_FAULT"  # tests: "point:n" SIGKILLs the collector the n-th time at point


@dataclass(frozen=True)
class BrokerURL:
    """``mqtt://[user@]host[:port]`` or ``mqtts://`` (TLS with the system's CAs, port 8883)."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """Parse a broker URL.

        Raises:
            ValueError: not an mqtt:// or mqtts:// URL with a host.
        """
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"--broker: {url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"--broker: bad port in {url!r}") from None
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, port, tls, user, password)


@dataclass
class CollectorConfig:
    """Options of ``collect`` (see ``lanecount-backoffice collect --help``)."""

    broker: BrokerURL
    prefix: str = "lanecount"
    group: str = "lanecount-backoffice"
    client_id: str = field(default_factory=lambda: f"lanecount-backoffice-{socket.gethostname()}")
    session_expiry_s: int = 7 * 86400
    batch_size: int = 500
    batch_ms: float = 100.0
    max_bytes: int = 65536
    keep_days: float | None = None
    prune_every_s: float = 3600.0
    stats_out: Path | None = None
    report_every_s: float = 60.0
    metrics_port: int | None = None


@dataclass
class _Item:
    gen: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: float


class Stats:
    """Counters and latency samples; a one-line summary and a JSON document for the benchmark."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start afresh (SIGUSR1: e.g. after a benchmark's warm-up)."""
        self.started = time.time()
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "messages",
                "stored",
                "duplicates",
                "conflicts",
                "rejected",
                "expired",
                "status",
                "batches",
                "retries",
                "acked",
            ),
            0,
        )
        self.lag: deque[float] = deque(maxlen=200_000)  # device timestamp -> commit
        self.hold: deque[float] = deque(maxlen=200_000)  # received -> commit
        self.first_received: float | None = None  # when the first stored batch began to arrive
        self.last_commit: float | None = None

    def add(self, out: Outcome, batch: list[Message | Rejection], committed: float) -> None:
        """Account for a committed batch."""
        if self.first_received is None:
            self.first_received = min(m.received for m in batch)
        self.last_commit = committed
        self.counts["batches"] += 1
        self.counts["messages"] += len(batch)
        for k in ("stored", "duplicates", "conflicts", "rejected", "expired", "status"):
            self.counts[k] += getattr(out, k)
        for m in batch:
            self.hold.append(committed - m.received)
            if isinstance(m, Message) and m.keyed:
                self.lag.append(committed - m.ts)

    def snapshot(self) -> dict[str, Any]:
        """Counters, rates and percentiles."""
        elapsed = max(1e-9, time.time() - self.started)
        busy = (self.last_commit - self.first_received) if self.first_received and self.last_commit else 0.0
        return {
            **self.counts,
            "elapsed_s": round(elapsed, 3),
            "first_received": self.first_received,
            "last_commit": self.last_commit,
            "busy_s": round(busy, 3),
            "stored_per_busy_s": round(self.counts["stored"] / busy, 1) if busy > 0 else None,
            "stored_per_s": round(self.counts["stored"] / elapsed, 1),
            "lag_p50_s": _pct(self.lag, 50),
            "lag_p99_s": _pct(self.lag, 99),
            "hold_p50_s": _pct(self.hold, 50),
            "hold_p99_s": _pct(self.hold, 99),
        }

    def line(self) -> str:
        """One log line."""
        s = self.snapshot()
        return (
            f"stored {s['stored']} ({s['stored_per_s']}/s), duplicates {s['duplicates']}, "
            f"conflicts {s['conflicts']}, rejected {s['rejected']}, "
            f"lag p50 {s['lag_p50_s']} s p99 {s['lag_p99_s']} s"
        )


def _pct(values: deque[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 4)


class Collector:
    """Receive, store, acknowledge (see the module docstring).

    Args:
        cfg: the options.
        ingest: the write path, on a writer engine.
        password: the broker password (from ``--password-file``), if any.
    """

    def __init__(self, cfg: CollectorConfig, ingest: Ingest, password: str | None = None) -> None:
        self.cfg = cfg
        self.ingest = ingest
        self.stats = Stats()
        self.metrics = Metrics()
        self.notifier = Notifier()
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._gen = 0
        self._ack_lock = threading.Lock()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._faults = _faults(os.environ.get(FAULT_ENV, ""))
        ingest.hook = self._fault
        self._client = self._make_client(password or cfg.broker.password)

    # --- MQTT ------------------------------------------------------------------------------------------

    def _make_client(self, password: str | None) -> paho.Client:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.cfg.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        paho_log = log.getChild("paho")
        paho_log.addFilter(_not_while_connecting)
        client.enable_logger(paho_log)
        client.suppress_exceptions = True
        # Back quickly after a broker restart: Mosquitto 2.0.11 forgets shared subscriptions across a
        # restart (plain ones it restores), so until we subscribe again messages for the group reach
        # no one. Devices and store bridges reconnect after >= 1 s; we try every 0.2 s at first.
        client.reconnect_delay_set(0.2, 10)  # type: ignore[arg-type]  # paho takes floats
        if self.cfg.broker.username:
            client.username_pw_set(self.cfg.broker.username, password)
        if self.cfg.broker.tls:
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        # Unacknowledged messages the broker may send us: a few batches' worth, so a batch can fill up.
        props.ReceiveMaximum = min(65535, max(100, 4 * self.cfg.batch_size))
        return props

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning(
                "MQTT broker %s:%d refused the connection: %s",
                self.cfg.broker.host,
                self.cfg.broker.port,
                reason,
            )
            return
        with self._ack_lock:
            self._gen += 1
        shared, plain = subscriptions(self.cfg.prefix, self.cfg.group)
        opts = SubscribeOptions(qos=1)
        client.subscribe([(topic, opts) for topic in shared + plain])
        log.info(
            "MQTT connected to %s:%d as %s (session %s); shared group %r",
            self.cfg.broker.host,
            self.cfg.broker.port,
            self.cfg.client_id,
            "resumed" if flags.session_present else "new",
            self.cfg.group,
        )
        self._connected.set()
        self.metrics.connected.set(1)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("the broker refused subscriptions: %s", ", ".join(failed))
        else:
            log.info("subscribed to %d topic filters", len(reasons))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._ack_lock:
            self._gen += 1  # packet ids of the old connection must not be acknowledged on the next one
        self._connected.clear()
        self.metrics.connected.set(0)
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting", reason)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = repr(msg._topic)
        self._queue.put(_Item(self._gen, msg.mid, msg.qos, topic, bytes(msg.payload), time.time()))

    # --- the loop --------------------------------------------------------------------------------------

    def run(self) -> int:
        """Collect until SIGTERM/SIGINT or :meth:`stop`; return the exit code."""
        b = self.cfg.broker
        if self.cfg.metrics_port is not None:
            self.metrics.serve(self.cfg.metrics_port)
        self._client.connect_async(
            b.host, b.port, keepalive=30, clean_start=False, properties=self._connect_properties()
        )
        self._client.loop_start()
        self.notifier.ready(f"collecting from {b.host}:{b.port}")
        next_report = time.monotonic() + self.cfg.report_every_s
        next_prune = time.monotonic() if self.cfg.keep_days is not None else float("inf")
        try:
            while not self._stop.is_set():
                self.notifier.alive()
                batch = self._take()
                if batch:
                    self._commit(batch)
                now = time.monotonic()
                if now >= next_report:
                    next_report = now + self.cfg.report_every_s
                    self._report()
                if now >= next_prune and not self._stop.is_set():
                    next_prune = now + self.cfg.prune_every_s
                    self._prune()
            batch = self._take(drain=True)  # SIGTERM: the batch in hand, nothing more
            if batch:
                self._commit(batch)
        finally:
            self.notifier.stopping()
            self._report()
            self._client.disconnect()
            self._client.loop_stop()
        return 0

    def stop(self, *_: Any) -> None:
        """Finish the batch in hand and return from :meth:`run` (signal handler)."""
        self._stop.set()

    def install_signals(self) -> None:
        """SIGTERM and SIGINT stop the collector cleanly; SIGUSR1 starts the statistics afresh."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGUSR1, lambda *_: self.stats.reset())

    def _take(self, drain: bool = False) -> list[_Item]:
        """Up to ``batch_size`` messages: the first within 0.5 s, the rest within ``batch_ms`` of it."""
        items: list[_Item] = []
        if drain:
            while len(items) < self.cfg.batch_size:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            return items
        try:
            items.append(self._queue.get(timeout=0.5))
        except queue.Empty:
            return items
        deadline = time.monotonic() + self.cfg.batch_ms / 1000.0
        while len(items) < self.cfg.batch_size and not self._stop.is_set():
            left = deadline - time.monotonic()
            try:
                items.append(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _commit(self, items: list[_Item]) -> None:
        """Parse, store (retrying while the database is away), then acknowledge."""
        batch = [parse(i.topic, i.payload, i.received, self.cfg.prefix, self.cfg.max_bytes) for i in items]
        self._fault("before-begin")
        started = time.monotonic()
        out = self._store(batch)
        if out is None:
            return  # stopping while the database is away: acknowledge nothing, the broker keeps them
        committed = time.time()
        self._fault("after-commit")
        for line in out.conflict_lines:
            log.error(line)
        for r in batch:
            if isinstance(r, Rejection):
                log.warning("rejected a message on %s: %s", r.topic[:200], r.reason)
        self.stats.add(out, batch, committed)
        self._observe(out, batch, committed, started)
        self._ack(items)

    def _store(self, batch: list[Message | Rejection]) -> Outcome | None:
        delay, failing_since = 0.5, None
        while True:
            try:
                out = self._store_splitting(batch)
                if failing_since is not None:
                    log.warning("database back after %.1f s; batch stored", time.monotonic() - failing_since)
                return out
            except DBAPIError as exc:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.error(
                        "database unavailable, retrying (nothing is acknowledged meanwhile): %s",
                        _one_line(exc),
                    )
                self.stats.counts["retries"] += 1
                self.metrics.retries.inc()
                self.notifier.alive()  # waiting for the database is not hanging: keep the watchdog fed
                self.notifier.status(
                    f"database unavailable for {time.monotonic() - failing_since:.0f} s; retrying"
                )
                if self._stop.wait(delay) and time.monotonic() - failing_since > 20:
                    log.error(
                        "stopping with the database unavailable: %d messages left to the broker", len(batch)
                    )
                    return None
                delay = min(5.0, delay * 2)

    def _store_splitting(self, batch: list[Message | Rejection]) -> Outcome:
        """Store; a batch refused for its data is halved until the one bad message is rejected."""
        try:
            return self.ingest.store(batch)
        except (IntegrityError, DataError) as exc:
            if exc.connection_invalidated:
                raise
            if len(batch) == 1:
                m = batch[0]
                log.error("the database refused a message on %s: %s", m.topic[:200], _one_line(exc))
                raw = m.text.encode() if isinstance(m, Message) else m.raw
                return self.ingest.store(
                    [Rejection(m.topic, raw, f"database refused it: {_one_line(exc)}", m.received)]
                )
            half = len(batch) // 2
            a, b = self._store_splitting(batch[:half]), self._store_splitting(batch[half:])
            return _merge(a, b)

    def _observe(
        self, out: Outcome, batch: list[Message | Rejection], committed: float, started: float
    ) -> None:
        m = self.metrics
        m.batches.inc()
        m.commit.observe(time.monotonic() - started)
        for outcome in ("stored", "duplicates", "conflicts", "rejected", "expired", "status"):
            n = getattr(out, outcome)
            if n:
                m.messages.labels(outcome.rstrip("s") if outcome != "status" else outcome).inc(n)
        for msg in batch:
            if isinstance(msg, Message) and msg.keyed:
                m.lag.observe(max(0.0, committed - msg.ts))

    def _ack(self, items: list[_Item]) -> None:
        half = len(items) // 2
        with self._ack_lock:
            gen = self._gen
            for n, item in enumerate(items):
                if n == half:
                    self._fault("mid-ack")
                if item.gen == gen and item.qos > 0:
                    self._client.ack(item.mid, item.qos)
                    self.stats.counts["acked"] += 1

    def _prune(self) -> None:
        assert self.cfg.keep_days is not None
        try:
            n = prune(self.ingest.engine, self.cfg.keep_days)
            if n:
                log.info(
                    "retention: removed %d rows older than %g days (roll-ups stay)", n, self.cfg.keep_days
                )
        except SQLAlchemyError as exc:
            log.error("retention failed (will retry): %s", _one_line(exc))

    def _report(self) -> None:
        log.info("%s", self.stats.line())
        self.notifier.status(self.stats.line())
        if self.cfg.stats_out is not None:
            import json

            tmp = self.cfg.stats_out.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.stats.snapshot(), indent=1))
            tmp.replace(self.cfg.stats_out)

    def _fault(self, point: str) -> None:
        left = self._faults.get(point)
        if left is None:
            return
        self._faults[point] = left - 1
        if left <= 1:
            os.kill(os.getpid(), signal.SIGKILL)


def _not_while_connecting(record: logging.LogRecord) -> bool:
    """Drop paho's "Client is not connected" at every loop turn of an outage (our reconnect line says it)."""
    return not record.getMessage().startswith("Client is not connected")


def _faults(spec: str) -> dict[str, int]:
    """``"after-commit:3,mid-batch:1"`` → {point: n}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, n = part.partition(":")
        out[point] = int(n or 1)
    return out


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return " ".join(text.split())[:300]


def _merge(a: Outcome, b: Outcome) -> Outcome:
    out = Outcome()
    for k in ("stored", "duplicates", "conflicts", "rejected", "expired", "status"):
        setattr(out, k, getattr(a, k) + getattr(b, k))
    out.conflict_lines = a.conflict_lines + b.conflict_lines
    return out

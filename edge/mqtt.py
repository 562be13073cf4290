"""MQTT publisher with a Last Will, retained status, a durable outbox and validated inbound commands.

Topics, below ``{prefix}/{site}/{device}/``:

=========================  =====  ========  =================================================
topic                      dir    retained  payload (``edge/schemas/``)
=========================  =====  ========  =================================================
``status``                 out    yes       ``online`` on connect and periodically; ``offline`` on
                                            a clean stop, or as the Last Will (status.json)
``counts``                 out    no        cumulative + interval counts (counts.json)
``events/crossing``        out    no        one per crossing (crossing.json)
``alerts/restock/<k>/<p>`` out    yes       restock alert of kind k, product p (alert.json)
``cmd/<name>``             in     no        ``reset``, ``restocked``, ``reload`` (command.json)
``cmd/result``             out    no        the reply to each command (command_result.json)
``epoch``                  out    no        first message of each start's epoch (epoch.json)
=========================  =====  ========  =================================================

Delivery: :meth:`Publisher.publish` only writes to the :class:`~edge.outbox.Outbox`. A drain thread
sends pending messages oldest first at QoS 1 with at most ``max_inflight`` unacknowledged, and deletes
each row when its PUBACK arrives. Paho keeps the unacknowledged ones and re-sends them, same packet id,
after a reconnect; until those are acknowledged the drain thread sends nothing new, so the order on the
wire stays the ``seq`` order. After a crash the next process sends the outbox again from the oldest
row. Delivery is at-least-once: subscribers de-duplicate by device and ``seq``.

Session: ``clean_session=True``. The outbox, not the broker session, is the source of truth for what
we send. For what we receive, a persistent session would make the broker replay commands queued while
the device was offline, e.g. a ``reset`` executed hours after it was sent; a sender that gets no
``cmd/result`` reply sends again instead.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import sqlite3
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.commands import Answered, Command, Result, command_id, parse_command, result_payload
from edge.config import MqttConfig
from edge.errors import CommandError, LanecountError, PublishError
from edge.outbox import Outbox

__all__ = ["Publisher", "resolve_password"]

log = logging.getLogger(__name__)

_KIND = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def resolve_password(cfg: MqttConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The broker password: ``password_file`` (relative to ``$CREDENTIALS_DIRECTORY``) wins over ``password``.

    Raises:
        PublishError: when ``password_file`` cannot be read.
    """
    env = os.environ if environ is None else environ
    if not cfg.password_file:
        return cfg.password
    path = Path(cfg.password_file)
    if not path.is_absolute() and env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / path
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise PublishError(f"mqtt.password_file: cannot read {path}: {exc.strerror or exc}") from None


class Publisher:
    """Publish through the outbox; receive commands; keep the retained status honest.

    Args:
        cfg: the ``mqtt`` config section.
        site: store id (topic level).
        device: lane/device id (topic level).
        outbox: the durable outbox every outbound message goes through.
        on_command: runs a validated command and returns a one-line result message (the publisher
            replies ``ok``), or :class:`~edge.commands.Answered` when it queued the reply itself;
            raising :class:`~edge.errors.LanecountError` makes the reply ``ok=false``. Called on the
            MQTT network thread, so it must be thread-safe and quick.
        status_payload: extra fields of the ``online`` status (``model_version``, ``fps``...).
        max_inflight: most messages published but not yet acknowledged.
        reconnect_delay: first and largest delay (s) between reconnect attempts (doubling); default
            ``(1, cfg.reconnect_max_s)``.

    Raises:
        PublishError: unreadable password file or TLS files.

    Example:
        >>> pub = Publisher(cfg.mqtt, "s1", "lane3", Outbox("state/outbox.db", 100_000))  # doctest: +SKIP
        >>> pub.start(); seq = pub.publish("counts", {"cumulative": {}})  # doctest: +SKIP
        >>> pub.stop(timeout=5)  # doctest: +SKIP
    """

    def __init__(
        self,
        cfg: MqttConfig,
        site: str,
        device: str,
        outbox: Outbox,
        on_command: Callable[[Command], Result] | None = None,
        status_payload: Callable[[], dict[str, Any]] | None = None,
        *,
        max_inflight: int = 20,
        reconnect_delay: tuple[float, float] | None = None,
    ) -> None:
        self.cfg = cfg
        self.site, self.device = site, device
        self.base = f"{cfg.prefix}/{site}/{device}"
        self.outbox = outbox
        self.max_inflight = max_inflight
        self._on_command = on_command
        self._status_payload = status_payload
        self.client_id = cfg.client_id or f"lanecount-{site}-{device}"
        self.sent = self.acked = self.connects = self.reconnects = 0
        self.commands_ok = self.commands_failed = 0
        self._connected = False
        self._started = time.monotonic()
        self._events: queue.Queue[tuple[str, int]] = queue.Queue()
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None
        self._status_now = threading.Event()
        self._client = self._make_client(reconnect_delay or (1.0, cfg.reconnect_max_s))

    # --- set-up ----------------------------------------------------------------------------------

    def _make_client(self, reconnect_delay: tuple[float, float]) -> paho.Client:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True
        )
        paho_log = log.getChild("paho")
        paho_log.addFilter(_not_while_connecting)
        client.enable_logger(paho_log)
        client.suppress_exceptions = True
        client.max_inflight_messages_set(self.max_inflight)
        client.reconnect_delay_set(*reconnect_delay)  # type: ignore[arg-type]
        lwt = {"state": "offline", "site": self.site, "device": self.device, "reason": "connection lost"}
        client.will_set(self.topic("status"), _dumps(lwt), qos=1, retain=True)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, resolve_password(self.cfg))
        if self.cfg.tls is not None:
            tls = self.cfg.tls
            try:
                client.tls_set(ca_certs=tls.ca_certs, certfile=tls.certfile, keyfile=tls.keyfile)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise PublishError(f"mqtt.tls: {exc}") from None
            client.tls_insecure_set(tls.insecure)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def topic(self, kind: str) -> str:
        """Full topic of ``kind`` (e.g. ``counts`` → ``lanecount/site/device/counts``)."""
        return f"{self.base}/{kind}"

    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start sending the outbox."""
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._drain, name="lanecount-mqtt-drain", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the next disconnect."""
        return self._connected

    def stats(self) -> dict[str, int]:
        """Counters for metrics."""
        return {
            "sent": self.sent,
            "acked": self.acked,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "commands_ok": self.commands_ok,
            "commands_failed": self.commands_failed,
            "outbox_depth": self.outbox.depth(),
            "outbox_dropped": self.outbox.dropped,
        }

    # --- outbound ----------------------------------------------------------------------------------

    def publish(self, kind: str, payload: Mapping[str, Any], retain: bool = False, keep: bool = False) -> int:
        """Queue a message for ``{prefix}/{site}/{device}/{kind}`` in the outbox; return its ``seq``.

        ``site`` and ``device`` are added, and ``timestamp`` (Unix time) unless the payload has one.

        Raises:
            PublishError: for a kind that is not a plain topic path (wildcards, empty levels).
        """
        if not _KIND.match(kind):
            raise PublishError(
                f"invalid topic kind {kind!r}: use letters, digits, _ . - and / between levels"
            )
        body = {"timestamp": time.time(), **payload, "site": self.site, "device": self.device}
        seq = self.outbox.put(self.topic(kind), body, qos=1, retain=retain, keep=keep)
        self.wake()
        return seq

    def wake(self) -> None:
        """Tell the drain thread that the outbox has new messages."""
        self._events.put(("wake", 0))

    def _status(self, state: str, reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"uptime_s": round(time.monotonic() - self._started, 3)}
        if state == "online" and self._status_payload is not None:
            try:
                body.update(self._status_payload())
            except Exception:
                log.exception("status_payload failed; publishing the status without its fields")
        body.update(state=state, site=self.site, device=self.device, timestamp=time.time())
        if reason is not None:
            body["reason"] = reason
        return body

    def request_status(self) -> None:
        """Ask the drain thread to publish the status now (e.g. the source went down)."""
        self._status_now.set()
        self.wake()

    def publish_status(self) -> None:
        """Publish the retained ``online`` status: on connect, every ``status_period_s`` and on request.

        The drain thread is the only caller besides ``_on_connect``, so status has one publisher.
        """
        if self._connected:
            self._client.publish(self.topic("status"), _dumps(self._status("online")), qos=1, retain=True)

    # --- drain thread --------------------------------------------------------------------------------

    def _drain(self) -> None:
        inflight: dict[int, int] = {}  # paho mid -> outbox seq, in send order
        state = {"up": False, "hold": False, "last": 0}
        next_status = time.monotonic() + self.cfg.status_period_s
        while not self._quit.is_set():
            try:
                self._handle_events(inflight, state)
                self._submit(inflight, state)
                if state["up"] and (time.monotonic() >= next_status or self._status_now.is_set()):
                    self._status_now.clear()
                    self.publish_status()
                    next_status = time.monotonic() + self.cfg.status_period_s
            except Exception:
                # A full disk or a closed database must not kill delivery for good; retry shortly.
                log.exception("MQTT drain loop error")
                time.sleep(1.0)

    def _handle_events(self, inflight: dict[int, int], state: dict[str, Any]) -> None:
        try:
            events = [self._events.get(timeout=0.25)]
        except queue.Empty:
            return
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        acked = []
        for name, mid in events:
            if name == "ack" and mid in inflight:
                acked.append(inflight.pop(mid))
            elif name == "up":
                state["up"] = True
            elif name == "down":
                # Paho re-sends what is in flight after the reconnect; new messages wait for those
                # acks, or they could overtake them on the wire.
                state["up"], state["hold"] = False, True
        if acked:
            self.outbox.ack(acked)
            self.acked += len(acked)

    def _submit(self, inflight: dict[int, int], state: dict[str, Any]) -> None:
        if not state["up"] or self._quit.is_set():
            return
        if state["hold"]:
            if inflight:
                return
            state["hold"] = False
        room = self.max_inflight - len(inflight)
        if room <= 0:
            return
        for msg in self.outbox.pending(room, after=state["last"]):
            try:
                info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            except ValueError as exc:
                # Unsendable forever (e.g. too large): drop it rather than block every later message.
                log.error("dropping outbox message %d: %s", msg.seq, exc)
                self.outbox.ack(msg.seq)
                state["last"] = msg.seq
                continue
            if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
                break
            inflight[info.mid] = msg.seq
            state["last"] = msg.seq
            self.sent += 1

    # --- paho callbacks (network thread; never raise) ------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason)
            return
        self.connects += 1
        self.reconnects = self.connects - 1
        self._connected = True
        log.info("MQTT connected to %s:%d as %s", self.cfg.host, self.cfg.port, self.client_id)
        self.publish_status()
        client.subscribe(self.topic("cmd/+"), qos=1)
        self._events.put(("up", 0))

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # Paho calls this inside its ``except OSError`` block: the exception in flight is the cause
        # (refused, unreachable, DNS, TLS handshake), which paho itself only logs at debug level.
        cause = sys.exc_info()[1]
        log.warning(
            "MQTT connect to %s:%d failed: %s; retrying (at most every %g s)",
            self.cfg.host,
            self.cfg.port,
            cause or "unknown cause",
            self.cfg.reconnect_max_s,
        )

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        was = self._connected
        self._connected = False
        self._events.put(("down", 0))
        if was:
            level = logging.INFO if self._quit.is_set() else logging.WARNING  # our own clean stop
            log.log(level, "MQTT disconnected (%s); %d messages in the outbox", reason, self.outbox.depth())

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._events.put(("ack", mid))

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        name = msg.topic.rsplit("/", 1)[-1]
        if name == "result":
            return  # our own replies, matched by cmd/+
        if msg.retain:
            log.warning(
                "ignoring retained command on %s (a stale command must not run at every connect)", msg.topic
            )
            return
        try:
            self._run_command(name[:64], bytes(msg.payload))
        except Exception:
            log.exception("command %r: reply failed", name)

    def _run_command(self, name: str, payload: bytes) -> None:
        limit = self.cfg.max_command_bytes
        cmd_id = command_id(payload, limit)
        result: Result = ""
        try:
            cmd = parse_command(name, payload, limit)
            cmd_id = cmd.id
            result = self._on_command(cmd) if self._on_command is not None else "ignored: no handler"
            ok, message = (result.ok, result.message) if isinstance(result, Answered) else (True, result)
        except CommandError as exc:
            ok, message = False, str(exc)
        except LanecountError as exc:
            ok, message = False, f"command {name!r} failed: {exc}"
        except Exception as exc:
            log.exception("command %r crashed", name)
            ok, message = False, f"command {name!r} failed: internal error: {type(exc).__name__}"
        if ok:
            self.commands_ok += 1
            log.info("command %r: %s", name, message)
        else:
            self.commands_failed += 1
            log.warning("command rejected: %s", message)
        if isinstance(result, Answered):
            self.wake()  # the reply was queued with the command's own transaction
            return
        try:  # a reply is never dropped by the outbox bound (keep)
            self.publish("cmd/result", result_payload(name, ok, str(message), cmd_id), keep=True)
        except sqlite3.Error as exc:  # the state cannot be written: the daemon is stopping (exit 1)
            log.error("command %r: the reply could not be queued: %s", name, exc)

    # --- shutdown ------------------------------------------------------------------------------------

    def stop(self, timeout: float = 5.0, reason: str = "shutdown") -> None:
        """Flush what the broker acknowledges within ``timeout``, publish retained ``offline``, disconnect.

        Messages not acknowledged stay in the outbox for the next start.
        """
        deadline = time.monotonic() + timeout
        while self._connected and self.outbox.depth() > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self._quit.set()
        if self._thread is not None:
            self._thread.join(max(0.5, deadline - time.monotonic()))
        if self._connected:
            info = self._client.publish(
                self.topic("status"), _dumps(self._status("offline", reason)), qos=1, retain=True
            )
            try:
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("offline status not confirmed: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected = False


def _not_while_connecting(record: logging.LogRecord) -> bool:
    """Drop paho's ERROR for every loop turn without a connection: ``_on_connect_fail`` says it once."""
    return not record.getMessage().startswith("Client is not connected")


def _dumps(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)

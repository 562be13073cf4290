"""Commands to devices: recorded in the audit log first, then published; answers come via the collector.

``restocked`` is recorded (who, when, what, a new id) before it is published to
``{prefix}/{site}/{device}/cmd/restocked`` with QoS 1. The device commits the effect and its
``cmd/result`` reply together and answers an id it has seen before from its record without applying it
again (edge/schemas/command_result.json), so sending a command again is always safe. The answer reaches the
database through the collector (``command_results``); the dashboard never claims a command done on its
own (see :func:`backoffice.web.views.commands`).

Devices keep no broker session: a command published while a device is offline never reaches it. So an
unanswered command is published again, same id, while it is younger than ``COMMAND_EXPIRY_S``: when the
broker was unreachable, as soon as it is back; when the device was offline, once it is online again; and
every ``RESEND_AFTER_S`` while the device is online and silent.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, and_, insert, select, update

from backoffice import tables as t
from backoffice.collector import BrokerURL
from backoffice.web import tables as w
from backoffice.web import views

__all__ = ["CommandError", "Commander"]

log = logging.getLogger(__name__)

RESEND_AFTER_S = 60.0
SCAN_EVERY_S = 5.0
PUBACK_TIMEOUT_S = 5.0


class CommandError(Exception):
    """A command the dashboard will not send (``status`` is the HTTP status to answer with)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Commander:
    """The dashboard's MQTT publisher and its resend loop (a no-op without a broker)."""

    def __init__(
        self,
        reader: Engine,
        writer: Engine,
        broker: BrokerURL | None,
        prefix: str = "lanecount",
        password: str | None = None,
        client_id: str | None = None,
    ) -> None:
        """Prepare; :meth:`start` connects."""
        self.reader, self.writer, self.broker, self.prefix = reader, writer, broker, prefix.strip("/")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: paho.Client | None = None
        if broker is not None:
            cid = client_id or f"lanecount-dashboard-{socket.gethostname()}-{secrets.token_hex(3)}"
            c = paho.Client(
                callback_api_version=CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv5
            )
            if broker.username:
                c.username_pw_set(broker.username, password if password is not None else broker.password)
            if broker.tls:
                c.tls_set()
            c.on_connect = lambda *a: log.info("MQTT connected to %s:%d (commands)", broker.host, broker.port)
            c.reconnect_delay_set(1, 30)
            self._client = c

    @property
    def enabled(self) -> bool:
        """Whether ``serve`` was given a broker."""
        return self._client is not None

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up now."""
        return self._client is not None and self._client.is_connected()

    def start(self) -> None:
        """Connect in the background and start the resend loop."""
        if self._client is None or self.broker is None:
            return
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._loop, name="command-resend", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Disconnect and stop the loop."""
        self._stop.set()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._thread is not None:
            self._thread.join(5)

    # --- sending -----------------------------------------------------------------------------------

    def restocked(self, user: str, site: str, device: str, product: str, stock: int | None) -> str:
        """Record and send ``restocked`` for a depletion alert of this lane; return the command id.

        Raises:
            CommandError: no broker (503), or no depletion alert for that product on that lane (404).
        """
        if not self.enabled:
            raise CommandError("this dashboard runs without --broker: it cannot send commands", 503)
        a, d = t.alerts.c, t.devices.c
        with self.reader.connect() as conn:
            found = conn.execute(
                select(a.topic)
                .select_from(t.alerts.join(t.devices, d.id == a.device_id))
                .where(d.site == site, d.device == device, a.kind == "depletion", a.product == product)
            ).first()
        if found is None:
            raise CommandError(f"lane {site}/{device} has no depletion alert for {product!r}", 404)
        cmd_id = secrets.token_hex(16)
        body: dict[str, Any] = {"id": cmd_id, "product": product}
        if stock is not None:
            body["stock"] = stock
        with self.writer.begin() as conn:
            conn.execute(
                insert(w.commands).values(
                    id=cmd_id,
                    site=site,
                    device=device,
                    command="restocked",
                    payload=json.dumps(body),
                    user_name=user,
                    created=time.time(),
                    attempts=0,
                )
            )
        log.info(
            "command %s: restocked %s (stock %s) on %s/%s by %s", cmd_id, product, stock, site, device, user
        )
        self._send(cmd_id, site, device, "restocked", json.dumps(body))
        return cmd_id

    def _send(self, cmd_id: str, site: str, device: str, name: str, payload: str) -> None:
        with self.reader.connect() as conn:
            lane = views.lane(conn, site, device)
        state = lane.state if lane else "unknown"
        sent_at, error = None, None
        if self._client is None or not self._client.is_connected():
            error = "broker unreachable"
        else:
            info = self._client.publish(f"{self.prefix}/{site}/{device}/cmd/{name}", payload, qos=1)
            try:
                info.wait_for_publish(PUBACK_TIMEOUT_S)
            except (RuntimeError, ValueError) as exc:
                error = f"publish failed: {exc}"
            if error is None and info.is_published():
                sent_at = time.time()
            elif error is None:
                error = f"the broker did not acknowledge within {PUBACK_TIMEOUT_S:g} s"
        c = w.commands.c
        values: dict[str, Any] = {"attempts": c.attempts + 1, "last_error": error}
        if sent_at is not None:
            values |= {"sent_at": sent_at, "device_state": state}
        with self.writer.begin() as conn:
            conn.execute(update(w.commands).where(c.id == cmd_id).values(**values))
        if error:
            log.warning("command %s to %s/%s not sent: %s (will retry)", cmd_id, site, device, error)

    # --- resending ---------------------------------------------------------------------------------

    def due(self, now: float | None = None) -> list[tuple[str, str, str, str, str]]:
        """Unanswered, unexpired commands to publish again now: (id, site, device, name, payload)."""
        now = time.time() if now is None else now
        c, r, d = w.commands.c, t.command_results.c, t.devices.c
        answered = (
            select(r.command_id)
            .select_from(t.command_results.join(t.devices, d.id == r.device_id))
            .where(and_(r.command_id == c.id, d.site == c.site, d.device == c.device))
            .exists()
        )
        q = select(c.id, c.site, c.device, c.command, c.payload, c.sent_at, c.device_state).where(
            c.created > now - views.COMMAND_EXPIRY_S, ~answered
        )
        out = []
        with self.reader.connect() as conn:
            for row in conn.execute(q):
                if row.sent_at is None:
                    out.append(row)
                    continue
                lane = views.lane(conn, row.site, row.device, now)
                if lane is None or lane.state != "online":
                    continue
                if row.device_state != "online" or now - row.sent_at >= RESEND_AFTER_S:
                    out.append(row)
        return [(r.id, r.site, r.device, r.command, r.payload) for r in out]

    def _loop(self) -> None:
        while not self._stop.wait(SCAN_EVERY_S):
            if not self.connected:
                continue
            try:
                for item in self.due():
                    log.info("command %s: sending again to %s/%s (no answer yet)", *item[:3])
                    self._send(*item)
            except Exception:  # a database hiccup must not end the loop
                log.exception("command resend loop")

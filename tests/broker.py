"""Test helpers for MQTT: a real Mosquitto on a free port, a collecting subscriber, schema validation."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.demo import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
SCHEMAS = Path(__file__).resolve().parent.parent / "edge" / "schemas"


def mosquitto_binary() -> str | None:
    """Path of the broker binary, or None when it is not installed."""
    if Path(MOSQUITTO).exists():
        return MOSQUITTO
    return shutil.which("mosquitto")


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``cond`` until it is truthy or ``timeout`` passes; return whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


class Broker:
    """A Mosquitto process on 127.0.0.1:port that can be stopped and started again on the same port.

    With ``persistence=True`` the broker saves its sessions on a clean stop, so a subscriber with a
    persistent session keeps its subscription (and queued QoS 1 messages) across a restart.
    """

    def __init__(self, binary: str, persistence: bool = False, extra: list[str] | None = None) -> None:
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="lanecount-mosquitto-"))
        # Started as root, mosquitto drops to the 'mosquitto' user, which must be able to save sessions.
        self._dir.chmod(0o777)
        self.config = self._dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self._dir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            *(extra or []),
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker (on the same port as before) and wait until it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            return
        log = open(self._dir / "broker.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=log)
        log.close()
        if not wait_until(self._accepts, timeout):
            self.stop()
            raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def _accepts(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log()}")
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex((self.host, self.port)) == 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM saves persistent sessions; SIGKILL simulates a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        path = self._dir / "broker.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client that records every message on ``topics``; reconnects and resubscribes by itself.

    ``session=True`` uses a persistent session (clean_session=False) under a fixed client id, so QoS 1
    messages published while it is disconnected are queued for it by the broker.
    """

    def __init__(self, broker: Broker, topics: list[str], client_id: str = "", session: bool = False) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.topics = topics
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{id(self)}",
            clean_session=not session,
        )
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("test subscriber could not subscribe")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, suffix: str) -> list[Received]:
        """Messages whose topic ends with ``suffix``, in arrival order."""
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def validate(kind: str, payload: Any, definition: str | None = None) -> None:
    """Validate ``payload`` against ``edge/schemas/<kind>.json`` (or one of its ``$defs``).

    Raises:
        jsonschema.ValidationError: when it does not conform.
    """
    import jsonschema  # dev extra only: the edge runtime never imports it

    schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    if definition is not None:
        schema = {**schema, "$ref": f"#/$defs/{definition}"}
        schema.pop("anyOf", None)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(payload)

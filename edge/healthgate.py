"""The rollout health gate: does the device's retained status show the new model with frames flowing?

``lanecount-edge model health --version V`` subscribes to the device's own retained ``status`` topic on
the broker its config names (with the same credentials) and waits until a message says
``state: online``, ``model_version: V`` and frames are flowing (``fps > 0``, or ``frames`` growing
between two messages). Ansible's update-model.yml runs it after ``model install``.
"""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path
from typing import Any

from edge.config import EdgeConfig
from edge.errors import PublishError

__all__ = ["is_healthy", "wait_healthy"]


def is_healthy(status: dict[str, Any], version: str, previous: dict[str, Any] | None) -> str | None:
    """Why ``status`` is not (yet) healthy for ``version``; None when it is."""
    if status.get("state") != "online":
        return f"state is {status.get('state')!r} ({status.get('reason', 'no reason given')})"
    if str(status.get("model_version")) != version:
        return f"model_version is {status.get('model_version')!r}, expected {version!r}"
    if float(status.get("fps") or 0) > 0:
        return None
    if previous is not None and int(status.get("frames") or 0) > int(previous.get("frames") or 0):
        return None
    return f"no frames flowing (fps {status.get('fps')}, frames {status.get('frames')})"


def wait_healthy(
    cfg: EdgeConfig, version: str, timeout: float, credentials_dir: Path | None = None
) -> str | None:
    """Wait up to ``timeout`` s for a healthy status; returns the last reason it was not, or None."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.mqtt import resolve_password

    env = {"CREDENTIALS_DIRECTORY": str(credentials_dir)} if credentials_dir else None
    topic = f"{cfg.mqtt.prefix}/{cfg.site}/{cfg.device}/status"
    inbox: queue.Queue[bytes | bytearray] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"lanecount-health-{cfg.site}-{cfg.device}")
    if cfg.mqtt.username:
        client.username_pw_set(cfg.mqtt.username, resolve_password(cfg.mqtt, env))
    if cfg.mqtt.tls is not None:
        client.tls_set(
            ca_certs=cfg.mqtt.tls.ca_certs, certfile=cfg.mqtt.tls.certfile, keyfile=cfg.mqtt.tls.keyfile
        )
        client.tls_insecure_set(cfg.mqtt.tls.insecure)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_message = lambda _c, _u, msg: inbox.put(msg.payload)
    deadline = time.monotonic() + timeout
    try:
        client.connect(cfg.mqtt.host, cfg.mqtt.port, keepalive=cfg.mqtt.keepalive_s)
    except OSError as exc:
        raise PublishError(f"health: cannot reach broker {cfg.mqtt.host}:{cfg.mqtt.port}: {exc}") from None
    client.loop_start()
    reason, previous = f"no status on {topic} within {timeout:g} s", None
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                payload = inbox.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            try:
                status = json.loads(payload)
            except ValueError:
                continue
            why = is_healthy(status, version, previous)
            if why is None:
                return None
            reason = f"{topic}: {why}"
            previous = status if str(status.get("model_version")) == version else None
        return reason
    finally:
        client.loop_stop()
        client.disconnect()

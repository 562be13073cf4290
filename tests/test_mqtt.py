"""Commands, payload schemas and the MQTT publisher against a real Mosquitto broker (tests/broker.py)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from broker import Subscriber, validate, wait_until

from edge.commands import ReloadCommand, ResetCommand, RestockedCommand, parse_command, result_payload
from edge.config import MqttConfig
from edge.counting import Crossing
from edge.errors import CommandError, PublishError
from edge.messages import Clock, crossing_message
from edge.mqtt import Publisher, resolve_password
from edge.outbox import Outbox

NAMES = ["milk", "bread"]
BASE = "lanecount/s1/lane2"


# --- commands (no broker) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "payload", "expected"),
    [
        pytest.param("reset", b"{}", ResetCommand(), id="reset-all"),
        pytest.param(
            "reset", b'{"line": "exit", "id": "r1"}', ResetCommand(line="exit", id="r1"), id="reset-line"
        ),
        pytest.param("restocked", b'{"product": "milk"}', RestockedCommand(product="milk"), id="restocked"),
        pytest.param(
            "restocked",
            b'{"product": "milk", "stock": 12}',
            RestockedCommand(product="milk", stock=12),
            id="stock",
        ),
        pytest.param("reload", b"{}", ReloadCommand(), id="reload"),
    ],
)
def test_parse_valid_commands(name, payload, expected):
    cmd = parse_command(name, payload, max_bytes=256)
    assert cmd == expected and cmd.command == name
    validate("command", json.loads(payload), definition=name)


@pytest.mark.parametrize(
    ("name", "payload", "message"),
    [
        pytest.param("reset", b"", "empty payload; send {} for a command without fields", id="empty"),
        pytest.param("reset", b"{not json", "command 'reset': payload is not JSON", id="malformed"),
        pytest.param("reset", b"\xff\xfe", "payload is not JSON", id="not-utf8"),
        pytest.param("reset", b"[1, 2]", "payload must be a JSON object, got list", id="not-object"),
        pytest.param(
            "reset", b'{"line": "' + b"x" * 300 + b'"}', "exceeds the 256-byte limit", id="oversized"
        ),
        pytest.param(
            "explode",
            b"{}",
            "unknown command 'explode'; expected one of reset, restocked, reload",
            id="unknown",
        ),
        pytest.param("restocked", b"{}", "command 'restocked': product: Field required", id="missing-field"),
        pytest.param(
            "restocked",
            b'{"product": "milk", "stock": "5"}',
            "stock: Input should be a valid integer",
            id="str-int",
        ),
        pytest.param(
            "restocked",
            b'{"product": "milk", "stock": -1}',
            "stock: Input should be greater than",
            id="negative",
        ),
        pytest.param("reload", b'{"force": true}', "force: Extra inputs are not permitted", id="extra-field"),
        pytest.param("reset", b'{"id": 7}', "id: Input should be a valid string", id="id-type"),
        pytest.param(
            "reset", b'{"command": "reload"}', "the name comes from the topic", id="name-in-payload"
        ),
    ],
)
def test_parse_invalid_commands_one_line(name, payload, message):
    with pytest.raises(CommandError) as info:
        parse_command(name, payload, max_bytes=256)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_result_and_crossing_payloads_match_schemas():
    res = result_payload("reset", True, "reset 3 counters", "abc", timestamp=5.0)
    envelope = {"seq": 1, "epoch": "e1", "site": "s", "device": "d"}
    validate("command_result", {**res, **envelope})
    msg = dict(crossing_message(Crossing("exit", 4, 1, "in", 17, 3.5), NAMES, Clock(1e9, 3.5)).payload)
    assert msg["class_name"] == "bread" and msg["frame"] == 17
    assert (msg["timestamp"], msg["media_time_s"]) == (1e9, 3.5)
    validate("crossing", {**msg, **envelope})
    with pytest.raises(Exception, match="'sideways' is not one of"):
        validate("crossing", {**msg, "direction": "sideways", **envelope})


def test_password_file_is_relative_to_credentials_directory(tmp_path):
    (tmp_path / "mqtt-pass").write_text("s3cret\n")
    cfg = MqttConfig(username="u", password="ignored", password_file="mqtt-pass")
    assert resolve_password(cfg, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "s3cret"
    assert resolve_password(MqttConfig(password="p"), {}) == "p"
    with pytest.raises(PublishError, match=r"mqtt.password_file: cannot read .*missing"):
        resolve_password(MqttConfig(password_file="missing"), {"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_publish_rejects_wildcard_kinds(tmp_path):
    pub = Publisher(MqttConfig(), "s", "d", Outbox(tmp_path / "o.db", 10))
    for kind in ("counts/#", "a/+/b", "a//b", ""):
        with pytest.raises(PublishError, match="invalid topic kind"):
            pub.publish(kind, {})
    assert pub.outbox.depth() == 0


# --- against the broker ----------------------------------------------------------------------


def make_publisher(broker, tmp_path, max_command_bytes=4096, **kw) -> Publisher:
    cfg = MqttConfig(
        host=broker.host,
        port=broker.port,
        prefix="lanecount",
        keepalive_s=5,
        status_period_s=60,
        max_command_bytes=max_command_bytes,
    )
    box = kw.pop("outbox", None) or Outbox(tmp_path / "outbox.db", 10_000, epoch="e1")
    kw.setdefault("reconnect_delay", (0.1, 0.5))
    return Publisher(cfg, "s1", "lane2", box, **kw)


def seqs_in_order(messages) -> list[int]:
    """First-arrival order of seqs; QoS 1 is at-least-once, so duplicates are dropped (as a consumer does)."""
    seen: dict[int, bytes] = {}
    for m in messages:
        seq = m.json()["seq"]
        assert seen.setdefault(seq, m.payload) == m.payload, f"seq {seq} re-sent with different bytes"
    return list(seen)


@pytest.mark.broker
def test_status_retained_online_then_offline_on_clean_stop(mosquitto, tmp_path):
    pub = make_publisher(mosquitto, tmp_path, status_payload=lambda: {"model_version": "v7", "fps": 29.5})
    pub.start()
    assert wait_until(lambda: pub.connected)
    late = Subscriber(mosquitto, [f"{BASE}/status"])  # subscribes after: sees the retained message
    assert wait_until(lambda: late.on("/status"))
    status = late.on("/status")[0]
    assert status.retain
    body = status.json()
    assert (body["state"], body["model_version"], body["fps"], body["site"], body["device"]) == (
        "online",
        "v7",
        29.5,
        "s1",
        "lane2",
    )
    validate("status", body)
    pub.stop(timeout=5)
    assert not pub.connected
    assert wait_until(lambda: len(late.on("/status")) == 2)
    offline = late.on("/status")[1].json()
    assert (offline["state"], offline["reason"]) == ("offline", "shutdown")
    validate("status", offline)
    again = Subscriber(mosquitto, [f"{BASE}/status"])
    assert wait_until(lambda: again.on("/status"))
    assert again.on("/status")[0].json()["state"] == "offline"  # retained
    late.close()
    again.close()


@pytest.mark.broker
def test_qos1_messages_arrive_in_order_and_leave_the_outbox(mosquitto, tmp_path):
    sub = Subscriber(mosquitto, [f"{BASE}/events/#", f"{BASE}/alerts/#"])
    pub = make_publisher(mosquitto, tmp_path, max_inflight=3)
    seqs = [
        pub.publish(
            "events/crossing",
            crossing_message(Crossing("exit", i, i % 2, "in", i, 100.0 + i), NAMES, Clock(100.0 + i)).payload,
        )
        for i in range(40)
    ]
    alert_seq = pub.publish(
        "alerts/restock/depletion/milk",
        {
            "kind": "depletion",
            "product": "milk",
            "state": "raised",
            "estimate": 2,
            "stock": 9,
            "threshold": 2,
        },
        retain=True,
    )
    assert pub.outbox.depth() == 41  # nothing is sent before start: the outbox is written first
    pub.start()
    assert wait_until(lambda: pub.outbox.depth() == 0)
    assert wait_until(lambda: len(sub.on("/crossing")) >= 40 and sub.on("/milk"))
    crossings = sub.on("/crossing")
    assert seqs_in_order(crossings) == seqs
    assert [m.json()["timestamp"] for m in crossings] == [100.0 + i for i in range(40)]
    for m in crossings:
        validate("crossing", m.json())
    alert = sub.on("/milk")[0].json()
    assert alert["seq"] == alert_seq
    validate("alert", alert)
    stats = pub.stats()
    assert stats["acked"] == 41 and stats["sent"] == 41 and stats["outbox_depth"] == 0
    pub.stop()
    retained = Subscriber(mosquitto, [f"{BASE}/alerts/#"])
    assert wait_until(lambda: retained.on("/milk"))
    assert retained.on("/milk")[0].retain
    sub.close()
    retained.close()


@pytest.mark.broker
def test_broker_outage_then_everything_arrives_in_order(mosquitto_persistent, tmp_path):
    broker = mosquitto_persistent
    sub = Subscriber(broker, [f"{BASE}/counts"], client_id="durable-consumer", session=True)
    pub = make_publisher(broker, tmp_path, max_inflight=4)
    pub.start()
    assert wait_until(lambda: pub.connected)
    for i in range(10):
        pub.publish("counts", {"i": i})
    assert wait_until(lambda: len(sub.on("/counts")) >= 10)

    for i in range(10, 150):  # the broker goes down while these are being sent
        pub.publish("counts", {"i": i})
    broker.stop()
    assert wait_until(lambda: not pub.connected)
    for i in range(150, 180):
        pub.publish("counts", {"i": i})
    assert pub.outbox.depth() >= 30  # kept while the broker is down
    time.sleep(0.3)
    broker.start()

    assert wait_until(lambda: pub.outbox.depth() == 0, timeout=20), pub.stats()
    assert wait_until(lambda: len(set(seqs_in_order(sub.on("/counts")))) >= 180, timeout=20)
    assert seqs_in_order(sub.on("/counts")) == list(range(1, 181))
    assert pub.stats()["reconnects"] >= 1
    pub.stop()
    sub.close()


CRASHING_PUBLISHER = textwrap.dedent(
    """
    import os, signal, sys, time
    from edge.config import MqttConfig
    from edge.mqtt import Publisher
    from edge.outbox import Outbox

    port, db = int(sys.argv[1]), sys.argv[2]
    cfg = MqttConfig(host="127.0.0.1", port=port, keepalive_s=5)
    pub = Publisher(cfg, "s1", "lane2", Outbox(db, 10_000, epoch="e1"), max_inflight=2)
    for i in range(300):
        pub.publish("counts", {"i": i, "timestamp": 1000.0 + i})
    pub.start()
    while pub.acked < 10:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)  # a crash: no clean disconnect, no offline status
    """
)


@pytest.mark.broker
def test_crash_sends_last_will_and_restart_resends_the_rest(mosquitto, tmp_path):
    db = tmp_path / "outbox.db"
    sub = Subscriber(mosquitto, [f"{BASE}/counts", f"{BASE}/status"])
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_PUBLISHER, str(mosquitto.port), str(db)],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert wait_until(lambda: any(m.json()["state"] == "offline" for m in sub.on("/status")))
    will = [m.json() for m in sub.on("/status")][-1]
    assert (will["state"], will["reason"]) == ("offline", "connection lost")
    validate("status", will)

    left = Outbox(db, 10_000)
    assert 0 < left.depth() < 300  # the crash left messages behind
    pub = make_publisher(mosquitto, tmp_path, outbox=left)
    pub.start()
    assert wait_until(lambda: left.depth() == 0, timeout=20)
    assert wait_until(lambda: len(set(seqs_in_order(sub.on("/counts")))) == 300)
    assert seqs_in_order(sub.on("/counts")) == list(range(1, 301))
    first = {}
    for m in sub.on("/counts"):
        first.setdefault(m.json()["seq"], m.json())
    assert all(first[s]["timestamp"] == 1000.0 + s - 1 for s in first)  # original timestamps
    assert sub.on("/status")[-1].json()["state"] == "online"
    pub.stop()
    sub.close()


@pytest.mark.broker
def test_command_round_trip_and_bad_commands_get_error_replies(mosquitto, tmp_path):
    calls = []

    def on_command(cmd):
        calls.append(cmd)
        if isinstance(cmd, RestockedCommand) and cmd.product == "tea":
            raise CommandError("restocked: no depletion rule for product 'tea'")
        if isinstance(cmd, ReloadCommand):
            raise RuntimeError("boom")
        return f"done {cmd.command}"

    sub = Subscriber(mosquitto, [f"{BASE}/cmd/result"])
    pub = make_publisher(mosquitto, tmp_path, max_command_bytes=128, on_command=on_command)
    pub.start()
    assert wait_until(lambda: pub.connected)
    time.sleep(0.2)  # the subscription to cmd/+ is acknowledged

    sends = [
        ("restocked", b'{"product": "milk", "id": "a1"}'),
        (
            "reset",
            b"{broken",
        ),
        ("reset", b'{"id": "big", "line": "' + b"x" * 200 + b'"}'),
        ("explode", b'{"id": "u1"}'),
        ("restocked", b'{"product": "tea", "id": "t1"}'),
        ("reload", b'{"id": "r1"}'),
        ("reset", b'{"line": "exit", "id": "last"}'),
    ]
    for name, payload in sends:
        sub.publish(f"{BASE}/cmd/{name}", payload)
    assert wait_until(lambda: len(sub.on("/cmd/result")) == len(sends))
    replies = [m.json() for m in sub.on("/cmd/result")]
    for r in replies:
        validate("command_result", r)
    summary = [(r["command"], r["id"], r["ok"]) for r in replies]
    assert summary == [
        ("restocked", "a1", True),
        ("reset", None, False),
        ("reset", None, False),
        ("explode", "u1", False),
        ("restocked", "t1", False),
        ("reload", "r1", False),
        ("reset", "last", True),  # the loop survived every bad command
    ]
    assert replies[0]["message"] == "done restocked"
    assert "not JSON" in replies[1]["message"] and "128-byte limit" in replies[2]["message"]
    assert "no depletion rule" in replies[4]["message"] and "internal error" in replies[5]["message"]
    assert [c.command for c in calls] == ["restocked", "restocked", "reload", "reset"]
    assert pub.commands_ok == 2 and pub.commands_failed == 5

    pub.stop()

    # A retained command is replayed by the broker at every subscribe: it must not run again.
    sub.publish(f"{BASE}/cmd/reset", b'{"id": "stale"}', retain=True)
    pub = make_publisher(mosquitto, tmp_path, on_command=on_command, outbox=pub.outbox)
    pub.start()
    assert wait_until(lambda: pub.connected)
    time.sleep(0.3)
    assert len(calls) == 4 and len(sub.on("/cmd/result")) == len(sends)
    sub.publish(f"{BASE}/cmd/reset", b"", retain=True)  # clears it; an empty payload runs nothing
    assert wait_until(lambda: len(sub.on("/cmd/result")) == len(sends) + 1)
    assert "empty payload" in sub.on("/cmd/result")[-1].json()["message"] and len(calls) == 4
    pub.stop()
    sub.close()


def test_a_failed_connect_is_logged_with_host_port_and_cause(tmp_path, caplog):
    from broker import free_port

    port = free_port()  # nothing listens there
    pub = Publisher(MqttConfig(port=port, reconnect_max_s=2), "s", "d", Outbox(tmp_path / "o.db", 10))
    with caplog.at_level(logging.WARNING, logger="edge.mqtt"):
        pub.start()
        assert wait_until(lambda: "failed" in caplog.text, timeout=10)
        pub.stop(timeout=1)
    assert f"MQTT connect to 127.0.0.1:{port} failed: [Errno 111] Connection refused" in caplog.text
    assert pub._client._reconnect_max_delay == 2  # the cap from mqtt.reconnect_max_s, not paho's 120 s


def test_a_command_waits_for_a_busy_frame_loop_and_runs_once():
    # On Python 3.10 Future.result's timeout is concurrent.futures.TimeoutError, not the builtin one:
    # catching the builtin answered "not executed" after 0.2 s and then ran the command anyway.
    from edge.commands import CommandBridge, ResetCommand

    bridge = CommandBridge(wait_s=5)
    ran: list[object] = []
    timer = threading.Timer(0.7, lambda: bridge.run_pending(lambda c: ran.append(c) or "done"))
    timer.start()
    assert bridge.submit(ResetCommand(id="a")) == "done"
    timer.join()
    assert len(ran) == 1


def test_a_command_the_loop_never_picks_up_is_refused_and_never_runs():
    from edge.commands import CommandBridge, ResetCommand
    from edge.errors import CommandError

    bridge = CommandBridge(wait_s=0.3)
    with pytest.raises(CommandError, match="the frame loop is busy; not executed"):
        bridge.submit(ResetCommand(id="b"))
    ran: list[object] = []
    bridge.run_pending(lambda c: ran.append(c) or "done")
    assert ran == []

"""The daemon at its doors: every start an epoch, restores, a full disk, a second daemon, commands.

Real ONNX Runtime with the demo model, real SQLite, a real Mosquitto (tests/broker.py), real
processes killed for real. The helpers and the session's synthetic video come from test_daemon.py.
"""

# ruff: noqa: F811 - the fixtures imported from test_daemon are found by name, as arguments

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from broker import Subscriber, validate, wait_until
from conftest import ROOT
from test_daemon import (  # noqa: F401 - fixtures are found by name
    BASE,
    StateView,
    daemon_thread,
    payloads,
    retained,
    spawn,
    subscriber,
    video,
    write_config,
)

from edge.counts import Counts
from edge.daemon import Daemon
from edge.state import FrameCommit, StateStore

NO_CAMERA = {
    "type": "usb",
    "device": 99,
    "reconnect_initial_s": 0.5,
    "reconnect_max_s": 1,
    "alert_after_s": 3600,
}


def loop_images(video: Any) -> dict[str, Any]:
    return {"type": "images", "path": str(video.images), "loop": True}


def run_frames(config: Path, frames: int) -> None:
    with daemon_thread(config) as daemon:
        assert wait_until(lambda: daemon.frames >= frames, timeout=60)


def by_epoch_seq(sub: Subscriber) -> dict[tuple[str, int], dict[str, Any]]:
    """What a de-duplicating subscriber keeps; a pair that came back with another payload fails."""
    kept: dict[tuple[str, int], dict[str, Any]] = {}
    for m in sub.messages:
        body = m.json()
        if "seq" not in body:
            continue  # status
        body["_kind"] = m.topic[len(BASE) + 1 :]
        key = (body["epoch"], body["seq"])
        assert kept.get(key, body) == body, f"(epoch, seq) {key} came back with another payload"
        kept[key] = body
    return kept


def check_lineage(messages: list[dict[str, Any]]) -> int:
    """PROTOCOL.md 3-4 along one database: contiguous periods, crossings inside their period, counted."""
    unreported: list[float] = []
    previous = None
    periods = 0
    for body in sorted(messages, key=lambda b: b["seq"]):
        if body["_kind"] == "events/crossing":
            unreported.append(body["timestamp"])
        elif body["_kind"] == "counts":
            validate("counts", {k: v for k, v in body.items() if k != "_kind"})
            assert all(body["period_start"] <= t < body["period_end"] for t in unreported), body
            assert Counts.from_json(body["interval"]).total() == len(unreported), body
            if previous is not None:
                assert body["period_start"] == previous["period_end"], "periods must be contiguous"
                grown = Counts.from_json(previous["counted"]) + Counts.from_json(body["interval"])
                assert Counts.from_json(body["counted"]) == grown
            previous, unreported, periods = body, [], periods + 1
    return periods


@pytest.mark.broker
def test_every_start_is_a_new_epoch_and_a_restored_backup_forks_where_subscribers_see_it(
    video, tmp_path, mosquitto, subscriber
):
    config = write_config(tmp_path, video, mosquitto, source=loop_images(video))
    db = tmp_path / "state" / "state.db"
    run_frames(config, 60)
    shutil.copyfile(db, tmp_path / "backup.db")  # the stopped device's nightly backup
    run_frames(config, 60)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(tmp_path / "backup.db", db)  # ...is restored
    run_frames(config, 60)
    assert wait_until(lambda: len(payloads(subscriber, "/epoch")) >= 3, timeout=10)

    kept = by_epoch_seq(subscriber)  # no (epoch, seq) came back with another payload
    epochs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (epoch, _), body in kept.items():
        epochs[epoch].append(body)
    opening = {e: min(msgs, key=lambda b: b["seq"]) for e, msgs in epochs.items()}
    assert all(b["_kind"] == "epoch" for b in opening.values()), "an epoch began without its epoch message"
    first, second, third = sorted(opening.values(), key=lambda b: b["timestamp"])
    for b in (first, second, third):
        validate("epoch", {k: v for k, v in b.items() if k != "_kind"})
    assert first["state"] == "new" and first["previous"] is None
    assert second["previous"]["epoch"] == first["epoch"] == third["previous"]["epoch"]
    # The fork: the restored database hands out seq numbers the second epoch already used.
    assert (
        third["previous"]["last_seq"]
        == second["previous"]["last_seq"]
        < max(b["seq"] for b in epochs[second["epoch"]])
    )
    for lineage in ((first, second), (first, third)):
        assert check_lineage([b for e in lineage for b in epochs[e["epoch"]]]) >= 2


@pytest.mark.broker
def test_a_zero_byte_state_db_is_announced_in_the_log_the_status_and_the_epoch_message(
    video, tmp_path, mosquitto, subscriber, caplog
):
    config = write_config(tmp_path, video, mosquitto, source=loop_images(video))
    run_frames(config, 20)
    (tmp_path / "state" / "state.db").write_bytes(b"")  # a tool truncated it; a copy that failed
    run_frames(config, 20)
    online = [s for s in payloads(subscriber, "/status") if s["state"] == "online"]
    recovered = online[-1].get("state_recovered", "")
    assert "empty (0 bytes) although the daemon ran here before" in recovered and "\n" not in recovered
    assert recovered in caplog.text
    opening = payloads(subscriber, "/epoch")[-1]
    assert opening["state"] == "recovered" and opening["recovered"] == recovered


def durable_files(folder: Path) -> dict[str, str]:
    """The database and its WAL, by content (the -shm is SQLite's cache of the WAL, rebuilt at open)."""
    files = [folder / "state.db", folder / "state.db-wal", *folder.glob("state.db.damaged-*")]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.exists()}


def test_a_full_disk_at_start_exits_1_touches_nothing_and_the_next_start_continues(video, tmp_path):
    config = write_config(tmp_path, video, source=loop_images(video))
    run_frames(config, 60)
    state = StateView(tmp_path)
    totals = state.totals()
    assert totals
    before = durable_files(state.path.parent)

    def full_disk() -> None:  # no file may grow beyond 1000 bytes: the WAL index cannot be created
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    run = [sys.executable, "-m", "edge.cli", "run", "--config", str(config)]
    proc = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120, preexec_fn=full_disk)
    err = proc.stderr.strip()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and len([ln for ln in err.splitlines() if "ERROR" in ln]) == 1, err
    assert "cannot open" in err and "disk I/O error" in err and "nothing was changed" in err
    after = durable_files(state.path.parent)
    assert after == before, "a healthy database must not be moved aside or changed"
    run_frames(config, 5)  # space is back: the same state, counting on
    assert Counts.from_json(state.totals()).total() >= Counts.from_json(totals).total()


def test_a_second_daemon_on_the_same_state_dir_says_which_pid_holds_it_and_exits_2(video, tmp_path, spawn):
    first = spawn(write_config(tmp_path, video, source=NO_CAMERA))
    assert wait_until(lambda: "running:" in first.stderr(), timeout=60), first.stderr()
    second = spawn(write_config(tmp_path, video, source=loop_images(video), name="other.yaml"))
    assert second.wait(60) == 2, second.stderr()
    err = second.stderr().strip()
    assert len(err.splitlines()) == 1 and f"in use by another lanecount daemon (PID {first.proc.pid})" in err
    assert first.alive()
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.stderr()


def counted(state: StateView) -> int:
    try:
        return Counts.from_json(state.totals()).total()
    except sqlite3.Error:  # not created yet
        return 0


def online_count(sub: Subscriber) -> int:
    return sum(1 for s in payloads(sub, "/status") if s["state"] == "online")


def send(sub: Subscriber, name: str, payload: dict[str, Any], after_online: int) -> dict[str, Any]:
    """Send a command once the daemon's ``after_online``-th online status came (it is subscribed)."""
    assert wait_until(lambda: online_count(sub) >= after_online, timeout=60), "the daemon never came online"
    time.sleep(0.3)  # its subscription to cmd/+ is acknowledged
    n = len(payloads(sub, "/cmd/result"))
    sub.publish(f"{BASE}/cmd/{name}", json.dumps(payload))
    assert wait_until(lambda: len(payloads(sub, "/cmd/result")) > n, timeout=30), "no reply"
    return payloads(sub, "/cmd/result")[n]


@pytest.mark.broker
def test_a_command_id_seen_before_a_crash_is_answered_from_the_record_not_applied_twice(
    video, tmp_path, mosquitto, subscriber, spawn
):
    config = write_config(tmp_path, video, mosquitto, source=loop_images(video))
    state = StateView(tmp_path)
    first = spawn(config)
    assert wait_until(lambda: counted(state), timeout=60), first.stderr()
    reply = send(subscriber, "reset", {"id": "r1"}, after_online=1)
    assert reply["ok"] and "counts reset" in reply["message"]
    assert wait_until(lambda: counted(state), timeout=30)  # counted again since the reset
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    counted_since = Counts.from_json(state.totals()).total()
    online = online_count(subscriber)

    second = spawn(config)  # the sender got no answer it trusts and sends the same command again
    again = send(subscriber, "reset", {"id": "r1"}, after_online=online + 1)
    assert again.get("duplicate") is True and (again["ok"], again["message"]) == (True, reply["message"])
    validate("command_result", again)
    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.stderr()
    assert Counts.from_json(state.totals()).total() >= counted_since > 0  # nothing zeroed twice


@pytest.mark.broker
def test_a_command_whose_commit_fails_ends_the_run_with_exit_1_and_its_retry_clears_the_alert(
    video, tmp_path, mosquitto, subscriber, spawn
):
    rule = {"product": "milk_carton", "stock": 2, "threshold": 1}
    mqtt = {"publish_period_s": 600}
    config = write_config(
        tmp_path, video, mosquitto, source=NO_CAMERA, mqtt=mqtt, alerts={"depletion": [rule]}
    )
    db = tmp_path / "state" / "state.db"
    with StateStore(db) as seeded:  # the alert was raised by sales before this run
        seeded.commit(
            FrameCommit(alert_state={"alert:depletion:milk_carton": {"estimate": 1, "raised": True}})
        )
    daemon = spawn(config)
    assert wait_until(lambda: online_count(subscriber) >= 1, timeout=60), daemon.stderr()
    time.sleep(0.3)  # its subscription to cmd/+ is acknowledged
    wait = min(600 - time.time() % 600, 900 - time.time() % 900)  # to the next period boundary
    if wait < 30:  # the counts period must not end while the database is locked below
        time.sleep(wait + 1)
    # Another process holds the write lock (a writable sqlite3 shell; the same as a failing disk here).
    code = (
        f"import sqlite3, sys\nc = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        subscriber.publish(
            f"{BASE}/cmd/restocked", json.dumps({"id": "k1", "product": "milk_carton", "stock": 9})
        )
        assert daemon.wait(40) == 1, daemon.stderr()
    finally:
        holder.communicate("", timeout=10)
    err = daemon.stderr()
    assert "Traceback" not in err
    assert "command 'restocked': cannot write the state database (database is locked)" in err
    saved = StateView(tmp_path)._rows(
        "SELECT value FROM alert_state WHERE key = 'alert:depletion:milk_carton'"
    )
    assert json.loads(saved[0][0])["raised"] is True  # nothing was applied

    online = online_count(subscriber)
    retry = spawn(config)  # restarted; the sender retries the same command
    reply = send(subscriber, "restocked", {"id": "k1", "product": "milk_carton", "stock": 9}, online + 1)
    assert reply["ok"] is True and "duplicate" not in reply
    topic = f"{BASE}/alerts/restock/depletion/milk_carton"
    assert wait_until(lambda: (retained(mosquitto, topic) or {}).get("state") == "cleared", timeout=15)
    retry.signal(signal.SIGTERM)
    assert retry.wait() == 0, retry.stderr()


def test_a_copied_and_touched_recording_is_recognised_as_already_counted(video, tmp_path, caplog):
    images = {"type": "images", "path": str(video.images)}
    assert Daemon(write_config(tmp_path, video, source=images)).run() == 0
    counted = StateView(tmp_path).totals()
    copy = tmp_path / "mounted-elsewhere" / "frames"
    shutil.copytree(video.images, copy)
    later = time.time() + 3600
    for f in copy.iterdir():
        os.utime(f, (later, later))  # copied and touched
    again = write_config(tmp_path, video, source={"type": "images", "path": str(copy)})
    daemon = Daemon(again)
    assert daemon.run() == 0 and daemon.frames == 0
    assert "already counted" in caplog.text and StateView(tmp_path).totals() == counted

"""The state module: one database, one transaction per frame, the epoch, damage and loss (real SQLite).

The fault tests kill the writer at *every* fdatasync boundary (strace's syscall fault injection:
``-e inject=fdatasync:signal=SIGKILL:when=K``), not only at random moments, and check after each kill
and restart that the invariants hold:

* every counts message's ``cumulative`` equals the crossing events queued before it;
* the stored totals equal every crossing event queued;
* an alert whose state is ``raised`` has its ``raised`` message queued;
* the periods are contiguous, every crossing's timestamp lies in the period that reports it, and
  ``counted`` grows by exactly each period's ``interval`` (PROTOCOL.md 3 and 4);
* every epoch's first message is its ``epoch`` message.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import state_driver
from broker import validate
from conftest import ROOT

from edge.counts import Counts
from edge.outbox import Outbox
from edge.state import FrameCommit, OutMessage, Progress, StateStore

FRAMES = 16
ENVELOPE = {"site": "s", "device": "d"}


def snapshot(path: Path) -> Path:
    """A copy of the database and its WAL: reading the original would checkpoint and remove its WAL."""
    copy = path.parent / f"snap-{path.name}"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{copy}{suffix}").unlink(missing_ok=True)
        if Path(f"{path}{suffix}").exists():
            shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
    return copy


def messages(path: Path) -> list[tuple[int, str, dict]]:
    with Outbox(snapshot(path), 10**6) as box:
        return [(m.seq, m.topic, json.loads(m.payload)) for m in box.pending(10**6)]


def check_invariants(path: Path) -> int:
    """Assert the invariants on (a copy of) the state at ``path``; return the number of crossing events."""
    events: Counter[tuple[str, str, str]] = Counter()
    last_alert: dict[str, str] = {}
    first_of_epoch: dict[str, str] = {}
    unreported: list[float] = []  # timestamps of the crossings since the last counts message
    previous: dict | None = None
    for _seq, topic, body in messages(path):
        first_of_epoch.setdefault(body["epoch"], topic.rsplit("/", 1)[-1])
        if topic.endswith("/events/crossing"):
            events[(body["line"], body["direction"], body["class_name"])] += 1
            unreported.append(body["timestamp"])
        elif topic.endswith("/counts"):
            check_counts(body, previous, events, unreported)
            previous, unreported = body, []
        elif "/alerts/" in topic:
            last_alert[topic] = body["state"]
    assert set(first_of_epoch.values()) <= {"epoch"}, (
        f"an epoch began without its epoch message: {first_of_epoch}"
    )
    with StateStore(snapshot(path)) as state:
        assert state.totals() == Counts(dict(events))
        for key, value in state.alert_state().items():
            product = key.rsplit(":", 1)[-1]
            topic = f"lc/s/d/alerts/restock/depletion/{product}"
            if value.get("raised"):
                assert last_alert.get(topic) == "raised", f"{key} raised without its message"
    return sum(events.values())


def check_counts(body: dict, previous: dict | None, events: Counter, unreported: list[float]) -> None:
    seq = body["seq"]
    assert Counts.from_json(body["cumulative"]) == Counts(dict(events)), f"counts seq {seq}"
    assert body["counted"] == body["cumulative"], f"counts seq {seq}"  # the driver never resets
    assert Counts.from_json(body["interval"]).total() == len(unreported), f"counts seq {seq}"
    assert all(body["period_start"] <= t < body["period_end"] for t in unreported), f"counts seq {seq}"
    if previous is not None:
        assert body["period_start"] == previous["period_end"], f"counts seq {seq}: a gap or an overlap"
        grown = Counts.from_json(previous["counted"]) + Counts.from_json(body["interval"])
        assert Counts.from_json(body["counted"]) == grown, f"counts seq {seq}"


def drive(path: Path, frames: int = FRAMES, strace_k: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / "tests" / "state_driver.py"), str(path), str(frames)]
    if strace_k is not None:
        cmd = [
            "strace",
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            f"-einject=fdatasync:signal=SIGKILL:when={strace_k}",
            *cmd,
        ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)


def fdatasync_calls(tmp_path: Path) -> int:
    out = tmp_path / "count.txt"
    path = tmp_path / "count.db"
    cmd = ["strace", "-f", "-c", "-e", "trace=fdatasync", "-o", str(out)]
    cmd += [sys.executable, str(ROOT / "tests" / "state_driver.py"), str(path), str(FRAMES)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60, cwd=ROOT)
    line = next(ln for ln in out.read_text().splitlines() if ln.rstrip().endswith("fdatasync"))
    return int(line.split()[3])


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (make test installs it)")
def test_a_kill_at_every_fsync_boundary_keeps_counts_events_and_alerts_consistent(tmp_path):
    total = fdatasync_calls(tmp_path)
    assert total >= FRAMES  # at least one per frame that changed something
    expected = Counts.of(
        (c.line, c.direction, state_driver.NAMES[c.class_id])
        for i in range(FRAMES)
        for c in state_driver.frame_crossings(i)
    )
    for k in range(1, total + 1):
        path = tmp_path / f"k{k}" / "state.db"
        killed = drive(path, strace_k=k)
        assert killed.returncode != 0, f"fdatasync #{k} was not reached"
        if path.exists():
            check_invariants(path)
        done = drive(path)  # the restart finishes the work from where the kill left it
        assert done.returncode == 0, done.stderr
        check_invariants(path)
        with StateStore(path) as state:
            assert state.totals() == expected, f"kill at fdatasync #{k}: a count was lost or doubled"


def test_one_transaction_per_frame_and_counts_message_matches_events(tmp_path):
    path = tmp_path / "state.db"
    assert drive(path).returncode == 0
    assert check_invariants(path) == sum(len(state_driver.frame_crossings(i)) for i in range(FRAMES))
    kinds = Counter(topic.rsplit("/", 1)[-1] for _, topic, _ in messages(path))
    assert kinds["counts"] == FRAMES // 5 and kinds["milk_carton"] == 1  # the alert was raised once


def test_every_start_begins_a_new_epoch_whose_first_message_chains_it_to_the_last(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path, now=1000.0, envelope=ENVELOPE) as state:
        first = state.epoch
        assert state.start.state == "new" and state.start.previous is None
        state.commit(FrameCommit(Counts.of([("l", "in", "a")]), messages=[OutMessage("events/x", {"a": 1})]))
    with StateStore(path, envelope=ENVELOPE) as state:  # a clean restart is a new epoch too; seq continues
        second = state.epoch
        assert second != first and state.recovered is None and state.start.state == "continued"
        state.queue(OutMessage("events/x", {"a": 2}))
    got = [(seq, topic.rsplit("/", 1)[-1], body) for seq, topic, body in messages(path)]
    assert [(seq, kind, body["epoch"]) for seq, kind, body in got] == [
        (1, "epoch", first),
        (2, "x", first),
        (3, "epoch", second),
        (4, "x", second),
    ]
    opening = got[2][2]
    validate("epoch", opening)
    assert opening["state"] == "continued" and "recovered" not in opening
    assert opening["previous"] == {"epoch": first, "last_seq": 2}
    assert opening["counted"] == {"l": {"in": {"a": 1}, "out": {}}} and opening["interval_start"] == 1000.0
    assert got[0][2]["state"] == "new" and got[0][2]["previous"] is None


def kill_after(path: Path, code: str) -> None:
    script = (
        "import os, signal\nfrom edge.state import *\nfrom edge.counts import Counts\n"
        f"state = StateStore({str(path)!r})\n{code}\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30, cwd=ROOT)
    assert proc.returncode == -9, proc.stderr


def test_a_crash_with_its_wal_keeps_every_commit_and_continues_in_a_new_epoch(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path) as state:
        epoch = state.epoch
    kill_after(path, "state.commit(FrameCommit(Counts.of([('l', 'in', 'a')])))")
    assert Path(f"{path}-wal").exists()
    with StateStore(path) as state:
        assert state.epoch != epoch and state.recovered is None and state.start.state == "continued"
        assert state.totals().total() == 1


def test_a_deleted_wal_after_a_crash_starts_a_new_epoch_so_seq_reuse_is_harmless(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path) as state:
        epoch = state.epoch
        state.queue(OutMessage("events/x", {"n": 1}))
    code = "\n".join(f"state.queue(OutMessage('events/x', {{'n': {i}}}))" for i in range(2, 6))
    kill_after(path, code)
    delivered = {(b["epoch"], b["seq"]): b for _, _, b in messages(path)}  # what subscribers saw
    Path(f"{path}-wal").unlink()
    Path(f"{path}-shm").unlink(missing_ok=True)
    with StateStore(path) as state:
        assert state.epoch != epoch and state.start.state == "recovered"
        assert state.recovered and "write-ahead log is missing" in state.recovered
        state.queue(OutMessage("events/x", {"n": 99}))
    for _, _, body in messages(path):
        key = (body["epoch"], body["seq"])
        assert key not in delivered or delivered[key] == body  # no (epoch, seq) reused for other data


def test_damaged_state_is_moved_aside_at_start_and_counting_goes_on(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path) as state:
        state.commit(FrameCommit(Counts.of([("l", "in", "a")] * 3)))
        epoch = state.epoch
    data = bytearray(path.read_bytes())
    for page in range(1, len(data) // 4096):  # scribble over every b-tree page header but the first
        data[page * 4096 : page * 4096 + 12] = b"\x0d\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    with StateStore(path) as state:
        assert state.recovered and "damaged state database" in state.recovered
        assert state.epoch != epoch and state.totals().total() == 0
        assert state.start.previous == {"epoch": epoch, "last_seq": None}  # from the marker
        state.commit(FrameCommit(Counts.of([("l", "in", "a")])))
        assert state.totals().total() == 1
    assert list(tmp_path.glob("state.db.damaged-*")), "the damaged file is kept for inspection"


def test_not_a_database_is_moved_aside_too(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with StateStore(path) as state:
        assert state.recovered and "moved to state.db.damaged-" in state.recovered


def test_outbox_bound_drops_counts_and_events_but_never_alerts(tmp_path, caplog):
    with StateStore(tmp_path / "state.db", max_messages=5) as state:  # its epoch message is kept too
        state.queue(OutMessage("alerts/restock/depletion/milk", {"state": "raised"}, retain=True, keep=True))
        for i in range(50):
            state.commit(FrameCommit(messages=[OutMessage("events/crossing", {"i": i})]))
        state.queue(OutMessage("alerts/restock/depletion/milk", {"state": "cleared"}, retain=True, keep=True))
        kept = [json.loads(m.payload) for m in state.outbox.pending(100)]
        assert state.outbox.depth() == 5 == len(kept)
        assert [b["state"] for b in kept if "state" in b] == ["new", "raised", "cleared"]
        assert [b["i"] for b in kept if "i" in b] == [48, 49]
        assert state.outbox.dropped == 48
    warnings = [r for r in caplog.records if "outbox full" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one line, not one per dropped message


def test_outbox_depth_is_tracked_without_counting_rows(tmp_path):
    with StateStore(tmp_path / "state.db") as state:
        seqs = [state.queue(OutMessage("x", {})) for _ in range(10)]
        state.outbox.ack(seqs[:4], 12345)
        assert state.outbox.depth() == 7  # and the epoch message
        ((n,),) = state.db.query("SELECT COUNT(*) FROM outbox")
        assert n == 7


def test_a_failed_commit_writes_nothing(tmp_path):
    with StateStore(tmp_path / "state.db", publish=False) as state:
        bad = FrameCommit(Counts.of([("l", "in", "a")]), messages=[OutMessage("x", {"not json": object()})])
        with pytest.raises(TypeError):
            state.commit(bad)
        assert state.totals().total() == 0 and state.outbox.depth() == 0


def test_a_full_disk_is_an_error_the_caller_sees(tmp_path):
    with StateStore(tmp_path / "state.db") as state:
        state.db.conn.execute("PRAGMA max_page_count = 1")  # no room for one more page: "disk full"
        with pytest.raises(sqlite3.Error):
            for i in range(200):
                state.commit(
                    FrameCommit(messages=[OutMessage("events/crossing", {"pad": "x" * 2000, "i": i})])
                )


def test_progress_and_forget(tmp_path):
    with StateStore(tmp_path / "state.db") as state:
        assert state.progress("rec") is None
        state.commit(FrameCommit(progress=Progress("rec", 42)))
        state.commit(FrameCommit(progress=Progress("rec", 50, finished=True)))
        assert state.progress("rec") == Progress("rec", 50, True)
        state.forget_progress("rec")
        assert state.progress("rec") is None


def test_roll_takes_the_interval_atomically_on_aligned_contiguous_periods(tmp_path):
    with StateStore(tmp_path / "state.db", now=100.0, envelope=ENVELOPE) as state:
        assert state.roll(101.0, 10.0) == 110.0  # nothing due yet: the boundary
        state.commit(FrameCommit(Counts.of([("a", "in", "milk")])))
        assert state.roll(110.0, 10.0, lines=["a", "b"]) == 120.0
        state.commit(FrameCommit(Counts.of([("a", "out", "eggs")] * 2)))
        state.reset("a")  # zeroes cumulative; neither the interval nor counted
        assert state.roll(125.0, 10.0) == 130.0
        state.commit(FrameCommit(Counts.of([("a", "in", "milk")])))
        assert state.roll(1234.5, 10.0) == 1240.0  # a pause: the held period, then one empty catch-up
        bodies = [json.loads(m.payload) for m in state.outbox.pending(10)][1:]  # after the epoch message
    for body in bodies:
        validate("counts", body)
    spans = [(b["period_start"], b["period_end"]) for b in bodies]
    assert spans == [(100.0, 110.0), (110.0, 120.0), (120.0, 130.0), (130.0, 1230.0)]
    assert bodies[0]["interval"] == {"a": {"in": {"milk": 1}, "out": {}}, "b": {"in": {}, "out": {}}}
    assert bodies[1]["interval"] == {"a": {"in": {}, "out": {"eggs": 2}}}
    assert bodies[1]["cumulative"] == {} and bodies[1]["counted"] == {
        "a": {"in": {"milk": 1}, "out": {"eggs": 2}}
    }
    assert bodies[2]["interval"] == {"a": {"in": {"milk": 1}, "out": {}}} and bodies[3]["interval"] == {}
    assert bodies[3]["counted"] == {"a": {"in": {"milk": 2}, "out": {"eggs": 2}}}


def test_with_mqtt_off_the_periods_still_roll_and_counted_shows_the_gap(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path, now=100.0, publish=False) as state:
        state.commit(FrameCommit(Counts.of([("a", "in", "milk")] * 3)))
        state.roll(115.0, 10.0)  # MQTT off: taken, nothing queued
        assert state.outbox.depth() == 0 and state.interval().total() == 0
        state.commit(FrameCommit(Counts.of([("a", "in", "milk")])))
    with StateStore(path) as state:  # MQTT switched on
        state.roll(121.0, 10.0)
        (opening, counts) = [json.loads(m.payload) for m in state.outbox.pending(10)]
    assert opening["interval_start"] == 110.0 == counts["period_start"] and counts["period_end"] == 120.0
    assert counts["interval"] == {"a": {"in": {"milk": 1}, "out": {}}}
    assert counts["counted"] == {"a": {"in": {"milk": 4}, "out": {}}}  # 3 were never reported


def test_reset_one_line_or_all(tmp_path):
    with StateStore(tmp_path / "state.db") as state:
        state.commit(FrameCommit(Counts.of([("a", "in", "x"), ("b", "in", "x"), ("b", "out", "y")])))
        assert state.reset("b") == 2
        assert state.totals() == Counts.of([("a", "in", "x")])
        assert state.reset() == 1 and state.totals().total() == 0


def test_the_two_databases_of_lanecount_0_1_are_imported_once(tmp_path):
    old = sqlite3.connect(tmp_path / "counts.db")
    old.executescript(
        "CREATE TABLE counts (line TEXT, class_name TEXT, direction TEXT, n INTEGER);"
        "CREATE TABLE interval (line TEXT, class_name TEXT, direction TEXT, n INTEGER);"
        "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO counts VALUES ('lane', 'apple', 'in', 7), ('lane', 'milk', 'out', 2);"
        "INSERT INTO interval VALUES ('lane', 'apple', 'in', 1);"
        "INSERT INTO state VALUES ('alert:depletion:milk', '{\"estimate\": 3, \"raised\": true}');"
        "INSERT INTO state VALUES ('interval_start', '123.0');"
    )
    old.commit()
    old.close()
    box = sqlite3.connect(tmp_path / "outbox.db")
    box.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT, payload TEXT, qos INTEGER,"
        " retain INTEGER, created REAL);"
        "INSERT INTO outbox VALUES (40, 'lc/s/d/counts', '{\"seq\":40}', 1, 0, 1.0);"
        "INSERT INTO outbox VALUES (41, 'lc/s/d/alerts/restock/depletion/milk', '{\"seq\":41}', 1, 1, 1.0);"
        "UPDATE sqlite_sequence SET seq = 45 WHERE name = 'outbox';"
    )
    box.commit()
    box.close()
    with StateStore(tmp_path / "state.db") as state:
        assert state.totals() == Counts({("lane", "in", "apple"): 7, ("lane", "out", "milk"): 2})
        assert state.counted() == state.totals()
        assert state.interval() == Counts({("lane", "in", "apple"): 1})
        assert state.alert_state() == {"alert:depletion:milk": {"estimate": 3, "raised": True}}
        assert [m.seq for m in state.outbox.pending(10)] == [40, 41, 46]  # 46: the epoch message
        assert state.queue(OutMessage("events/x", {})) == 47  # numbering continues, never reused
        assert state.outbox.depth() == 4
    assert (tmp_path / "counts.db.migrated").exists() and not (tmp_path / "counts.db").exists()
    with StateStore(tmp_path / "state.db") as state:  # imported once, not again at the next start
        assert state.totals().total() == 9

"""Commands on the state: effect, record and reply in one transaction (real SQLite, real kills).

A ``reset`` whose reply was queued later, in another transaction, could be applied with no record
(a crash in between) and then applied again by the sender's retry, zeroing what was counted
meanwhile. Here the effect, the record and the reply commit together, a repeated ``id`` is answered
from the record, and a failed commit changes nothing, on disk or in memory.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import command_driver
import pytest
from broker import validate
from conftest import ROOT

from edge.alerts import AlertEngine
from edge.commands import ResetCommand, RestockedCommand
from edge.config import AlertsConfig
from edge.counts import Counts
from edge.executor import execute
from edge.state import FrameCommit, OutMessage, StateStore

ENVELOPE = {"site": "s", "device": "d"}
MILK = AlertsConfig(depletion=[{"product": "milk", "stock": 4, "threshold": 1}])


def replies(state: StateStore) -> list[dict]:
    bodies = [json.loads(m.payload) for m in state.outbox.pending(1000)]
    return [b for b in bodies if "command" in b]


def test_a_command_and_its_reply_commit_together_and_a_repeated_id_is_answered_from_the_record(tmp_path):
    with StateStore(tmp_path / "state.db", envelope=ENVELOPE, max_messages=3) as state:
        alerts = AlertEngine(AlertsConfig(), [])
        state.commit(FrameCommit(Counts.of([("lane", "in", "apple")] * 4)))
        first = execute(ResetCommand(id="r1"), state, alerts, {"lane"})
        assert first.answered.ok and first.reset is not None
        state.commit(FrameCommit(Counts.of([("lane", "in", "apple")] * 2)))
        again = execute(ResetCommand(id="r1"), state, alerts, {"lane"})  # the sender retried
        assert again.answered == first.answered and again.reset is None  # not applied twice
        assert state.totals().total() == 2 and state.counted().total() == 6
        bad = execute(ResetCommand(id="r2", line="nope"), state, alerts, {"lane"})
        assert not bad.answered.ok and state.command_record("r2") is not None  # answered: recorded
        for i in range(5):  # the outbox bound (3) drops crossing events, never a reply
            state.queue(OutMessage("events/crossing", {"i": i}))
        got = replies(state)
    assert [(r["id"], r["ok"], r.get("duplicate", False)) for r in got] == [
        ("r1", True, False),
        ("r1", True, True),
        ("r2", False, False),
    ]
    assert got[0]["message"] == got[1]["message"] == "counts reset (all lines, 1 counters)"
    for r in got:
        validate("command_result", r)


def test_a_failed_command_commit_changes_nothing_in_the_state_or_in_memory(tmp_path):
    with StateStore(tmp_path / "state.db", envelope=ENVELOPE) as state:
        alerts = AlertEngine(MILK, ["milk"])
        alerts.on_crossings([])
        alerts.load({"alert:depletion:milk": {"estimate": 1, "raised": True}})
        state.commit(FrameCommit(alert_state={"alert:depletion:milk": {"estimate": 1, "raised": True}}))
        depth = state.outbox.depth()
        state.db.conn.execute("PRAGMA query_only = 1")  # every write fails, as on a full or failing disk
        with pytest.raises(sqlite3.Error):
            execute(RestockedCommand(id="k1", product="milk", stock=9), state, alerts, set())
        assert alerts.active() == [("depletion", "milk")] and alerts.depletion_estimate("milk") == 1
        state.db.conn.execute("PRAGMA query_only = 0")
        assert state.outbox.depth() == depth and state.command_record("k1") is None
        assert state.alert_state()["alert:depletion:milk"]["raised"] is True
        done = execute(RestockedCommand(id="k1", product="milk", stock=9), state, alerts, set())  # the retry
        alerts.load(done.alert_state)
        assert done.answered.ok and [a.state for a in done.alerts] == ["cleared"]
        assert alerts.active() == [] and state.alert_state()["alert:depletion:milk"]["raised"] is False
        kinds = [json.loads(m.payload).get("state") for m in state.outbox.pending(100)][-2:]
        assert kinds == ["cleared", None]  # the cleared alert, then the reply, in one transaction


def drive(path: Path, strace_k: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(ROOT / "tests" / "command_driver.py"), str(path)]
    if strace_k is not None:
        inject = f"-einject=fdatasync:signal=SIGKILL:when={strace_k}"
        cmd = ["strace", "-f", "-qq", "-o", "/dev/null", inject, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)


def check_commands(path: Path) -> None:
    with StateStore(path) as state:
        got = replies(state)
        record = state.command_record("r1")
        totals, counted = state.totals().total(), state.counted().total()
    applied = [r for r in got if not r.get("duplicate")]
    assert len(applied) == (record is not None), f"record {record} vs replies {got}"  # together or not at all
    assert all(r["message"] == applied[0]["message"] for r in got)
    if record is not None:  # applied exactly once, to the 5 counted before it
        assert record.message == "counts reset (all lines, 1 counters)"
        assert totals == counted - 5


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (make test installs it)")
def test_a_kill_at_every_fsync_never_separates_a_command_from_its_reply_or_applies_it_twice(tmp_path):
    out = tmp_path / "count.txt"
    cmd = ["strace", "-f", "-c", "-e", "trace=fdatasync", "-o", str(out)]
    cmd += [sys.executable, str(ROOT / "tests" / "command_driver.py"), str(tmp_path / "count.db")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60, cwd=ROOT)
    total = int(
        next(ln for ln in out.read_text().splitlines() if ln.rstrip().endswith("fdatasync")).split()[3]
    )
    assert total >= len(command_driver.STEPS)
    for k in range(1, total + 1):
        path = tmp_path / f"k{k}" / "state.db"
        assert drive(path, strace_k=k).returncode != 0, f"fdatasync #{k} was not reached"
        if path.exists():
            check_commands(path)
        done = drive(path)
        assert done.returncode == 0, done.stderr
        check_commands(path)
        with StateStore(path) as state:
            assert state.totals().total() == 3 and state.counted().total() == 8, f"kill at fdatasync #{k}"

"""Counts store: totals, intervals, reset, and persistence across reopen and SIGKILL (real SQLite)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge.counting import Crossing, Direction
from edge.store import CountStore

NAMES = ["milk", "bread", "eggs"]


def cross(line: str, track_id: int, class_id: int, direction: Direction) -> Crossing:
    return Crossing(line, track_id, class_id, direction, 0, 0.0)


def test_totals_by_line_direction_class(tmp_path):
    store = CountStore(tmp_path / "s.db", now=100.0)
    n = store.add(
        [
            cross("entry", 1, 0, "in"),
            cross("entry", 2, 0, "in"),
            cross("entry", 3, 1, "out"),
            cross("exit", 4, 7, "in"),  # id beyond the names
        ],
        NAMES,
    )
    assert n == 4
    assert store.totals() == {
        "entry": {"in": {"milk": 2}, "out": {"bread": 1}},
        "exit": {"in": {"class_7": 1}, "out": {}},
    }
    assert store.totals("exit") == {"exit": {"in": {"class_7": 1}, "out": {}}}


def test_interval_is_taken_and_restarts(tmp_path):
    store = CountStore(tmp_path / "s.db", now=100.0)
    store.add([cross("a", 1, 0, "in")], NAMES)
    first = store.take_interval(now=110.0)
    assert (first.start, first.end) == (100.0, 110.0)
    assert first.counts == {"a": {"in": {"milk": 1}, "out": {}}}
    store.add([cross("a", 2, 2, "out"), cross("a", 3, 2, "out")], NAMES)
    second = store.take_interval(now=120.0)
    assert (second.start, second.end) == (110.0, 120.0)
    assert second.counts == {"a": {"in": {}, "out": {"eggs": 2}}}
    assert store.take_interval(now=130.0).counts == {}
    assert store.totals() == {"a": {"in": {"milk": 1}, "out": {"eggs": 2}}}


def test_counts_message_shape(tmp_path):
    store = CountStore(tmp_path / "s.db", now=5.0)
    store.add([cross("a", 1, 1, "in")], NAMES)
    msg = store.counts_message(now=15.0)
    assert msg == {
        "timestamp": 15.0,
        "period_start": 5.0,
        "period_end": 15.0,
        "cumulative": {"a": {"in": {"bread": 1}, "out": {}}},
        "interval": {"a": {"in": {"bread": 1}, "out": {}}},
    }


def test_reset_one_line_or_all(tmp_path):
    store = CountStore(tmp_path / "s.db")
    store.add([cross("a", 1, 0, "in"), cross("b", 2, 1, "out"), cross("b", 3, 0, "out")], NAMES)
    assert store.reset("b") == 2
    assert store.totals() == {"a": {"in": {"milk": 1}, "out": {}}}
    assert store.interval() == {"a": {"in": {"milk": 1}, "out": {}}}
    assert store.reset() == 1
    assert store.totals() == {} and store.interval() == {}


def test_counts_and_state_survive_reopen(tmp_path):
    path = tmp_path / "s.db"
    with CountStore(path, now=1.0) as store:
        store.add([cross("a", 1, 0, "in")], NAMES)
        store.set_state("alert:x", {"raised": True, "estimate": 3})
    with CountStore(path, now=999.0) as store:
        store.add([cross("a", 2, 0, "in")], NAMES)
        assert store.totals() == {"a": {"in": {"milk": 2}, "out": {}}}
        assert store.get_state("alert:x") == {"raised": True, "estimate": 3}
        assert store.get_state("missing") is None
        assert store.take_interval(now=50.0).start == 1.0  # the interval spans the restart


def test_batch_committed_before_sigkill(tmp_path):
    path = tmp_path / "s.db"
    code = (
        "import os, signal\n"
        "from edge.store import CountStore\n"
        f"s = CountStore({str(path)!r})\n"
        "s.add_counts([('a', 'milk', 'in')] * 3)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert proc.returncode == -9, proc.stderr.decode()
    with CountStore(path) as store:
        assert store.totals() == {"a": {"in": {"milk": 3}, "out": {}}}


def test_failed_batch_leaves_nothing(tmp_path):
    store = CountStore(tmp_path / "s.db")

    class Bad:
        line, track_id, class_id, direction, timestamp = "a", 1, "not-an-int", "in", 0.0

    with pytest.raises(ValueError):
        store.add([cross("a", 1, 0, "in"), Bad()], NAMES)
    assert store.totals() == {}

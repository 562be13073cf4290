"""The durable outbox: order, ack, bound and drop counter, sequence continuity across reopen (SQLite)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from edge.outbox import Outbox


def test_pending_is_oldest_first_and_ack_removes(tmp_path):
    box = Outbox(tmp_path / "o.db", max_messages=100)
    seqs = [box.put(f"t/{i}", {"i": i}) for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert [m.topic for m in box.pending(10)] == [f"t/{i}" for i in range(5)]
    box.ack(seqs[1], seqs[3])
    assert [m.seq for m in box.pending(10)] == [seqs[0], seqs[2], seqs[4]]
    assert box.depth() == 3
    assert [m.seq for m in box.pending(10, after=seqs[2])] == [seqs[4]]
    assert [m.seq for m in box.pending(1)] == [seqs[0]]
    box.ack(12345)  # unknown: ignored
    assert box.depth() == 3


def test_payload_carries_its_seq_and_is_stored_verbatim(tmp_path):
    box = Outbox(tmp_path / "o.db", max_messages=10)
    seq = box.put("a/b", {"timestamp": 12.5, "x": [1, 2]}, qos=1, retain=True)
    (msg,) = box.pending(5)
    assert json.loads(msg.payload) == {"timestamp": 12.5, "x": [1, 2], "seq": seq}
    assert msg.retain is True and msg.qos == 1
    again = box.pending(5)[0]
    assert again.payload == msg.payload  # a resend is byte-identical


def test_bound_drops_oldest_logs_and_counts(tmp_path, caplog):
    drops: list[int] = []
    box = Outbox(tmp_path / "o.db", max_messages=3, on_drop=drops.append)
    with caplog.at_level(logging.WARNING, logger="edge.outbox"):
        seqs = [box.put("t", {"i": i}) for i in range(5)]
    assert box.depth() == 3
    assert [m.seq for m in box.pending(10)] == seqs[2:]
    assert box.dropped == 2 and drops == [1, 1]
    assert "1 dropped since the last warning" in caplog.text


def test_drop_warnings_report_the_running_total_and_sum_up_when_dropping_stops(tmp_path, caplog):
    # The fault suite's case: a broker down for a while with a small bound. The warnings are rate
    # limited (one a minute), so the first one could say "1 since start" and nothing more ever did.
    box = Outbox(tmp_path / "o.db", max_messages=50)
    with caplog.at_level(logging.WARNING, logger="edge.outbox"):
        seqs = [box.put("t", {"i": i}) for i in range(143)]  # 93 dropped, one warning (rate limit)
        box.ack(seqs[-50:])  # the broker is back and acknowledges everything
        box.put("t", {"i": 143})  # the next message fits: dropping has stopped
        box.put("t", {"i": 144})
        for i in range(50):  # a second episode (2 dropped), summed up at close
            box.put("t", {"i": 145 + i})
        box.close()
    lines = [r.getMessage() for r in caplog.records]
    assert box.dropped == 93 + 2
    assert len(lines) == 3, lines
    assert "1 since start" in lines[0]  # the first drop warns at once...
    assert "dropping stopped; 93 messages were dropped" in lines[1]  # ...and the summary has them all
    assert "2 messages were dropped since dropping started (95 since start)" in lines[2]


def test_sequence_continues_after_reopen_even_when_empty(tmp_path):
    path = tmp_path / "o.db"
    with Outbox(path, max_messages=10) as box:
        last = [box.put("t", {}) for _ in range(4)][-1]
        box.ack(*range(1, last + 1))
        assert box.depth() == 0
    with Outbox(path, max_messages=10) as box:
        assert box.last_seq() == last
        assert box.put("t", {}) == last + 1


def test_messages_survive_sigkill(tmp_path):
    path = tmp_path / "o.db"
    code = (
        "import os, signal, sys\n"
        "from edge.outbox import Outbox\n"
        f"box = Outbox({str(path)!r}, max_messages=100)\n"
        "for i in range(7): box.put('t', {'i': i})\n"
        "box.ack(1)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert proc.returncode == -9, proc.stderr.decode()
    with Outbox(path, max_messages=100) as box:
        assert [json.loads(m.payload)["i"] for m in box.pending(100)] == [1, 2, 3, 4, 5, 6]
        assert box.put("t", {}) == 8

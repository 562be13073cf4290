"""Devices still on protocol 1 (lanecount before the epoch message): accepted, and never guessed.

A protocol-1 device (edge/state.py before commit a8b236b) differs on the wire in its counts messages:
no ``counted``, periods that end whenever the loop queued them (not on a boundary, so one may span an
hour), one epoch per state database and no ``epoch`` message. :class:`V1Lane` below writes its messages
exactly as that code did (``json.dumps(sort_keys=True, separators=(",", ":"))`` of the payload, the
envelope, ``seq`` and ``epoch``); no broker here (the write path is the collector's own).
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("jsonschema_rs")

from bo_util import HOUR, T0, count_rows, feed, hourly, inexact_hours

from backoffice import tables as t
from backoffice.db import make_engine, migrate
from backoffice.ingest import Ingest
from backoffice.protocol import Message, Rejection, parse
from backoffice.simdevice import Outgoing

# A counts message as a protocol-1 daemon published it (captured shape; no `counted`).
V1_COUNTS = (
    b'{"cumulative":{"lane":{"in":{"apple":12,"bread":3},"out":{}}},"device":"lane-1","epoch":"3f9a1c0b7d2e4a61",'
    b'"interval":{"lane":{"in":{"apple":2},"out":{}}},"period_end":1765001412.731,'
    b'"period_start":1765001402.684,"seq":41,"site":"store-7","timestamp":1765001412.733}'
)


class V1Lane:
    """One protocol-1 lane: crossings, and a counts message every ``period`` seconds from its start."""

    def __init__(self, site: str, device: str, epoch: str, start: float) -> None:
        self.site, self.device, self.epoch = site, device, epoch
        self.seq = 0
        self.interval_start = start
        self.cumulative: Counter = Counter()
        self.interval: Counter = Counter()
        self.truth: list[tuple[float, str, str, str]] = []
        self.sent: list[Outgoing] = []

    def _queue(self, kind: str, payload: dict) -> None:
        self.seq += 1
        body = {**payload, "site": self.site, "device": self.device, "seq": self.seq, "epoch": self.epoch}
        text = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        self.sent.append(Outgoing(self.seq, f"lanecount/{self.site}/{self.device}/{kind}", text))

    def cross(self, ts: float, cls: str, direction: str) -> None:
        self.cumulative[("lane", direction, cls)] += 1
        self.interval[("lane", direction, cls)] += 1
        self.truth.append((ts, "lane", direction, cls))
        self._queue(
            "events/crossing",
            {
                "timestamp": ts,
                "line": "lane",
                "track_id": len(self.truth),
                "class_id": 0,
                "class_name": cls,
                "direction": direction,
                "frame": len(self.truth) * 7,
            },
        )

    def counts(self, now: float) -> None:
        self._queue(
            "counts",
            {
                "timestamp": now,
                "period_start": self.interval_start,
                "period_end": now,
                "cumulative": _nest(self.cumulative),
                "interval": _nest(self.interval),
            },
        )
        self.interval_start = now
        self.interval.clear()

    def truth_hourly(self) -> Counter:
        return Counter((int(ts // HOUR) * HOUR, ln, d, c) for ts, ln, d, c in self.truth)


def _nest(c: Counter) -> dict:
    out: dict = {"lane": {"in": {}, "out": {}}}
    for (line, d, cls), n in sorted(c.items()):
        out.setdefault(line, {"in": {}, "out": {}})[d][cls] = n
    return out


def _spans_the_hour(m: Outgoing) -> bool:
    b = json.loads(m.payload)
    return int(b["period_start"] // HOUR) != int(b["period_end"] // HOUR)


def _life(lane: V1Lane, seconds: float, rng: random.Random) -> None:
    """Crossings about every 4 s; counts every ~10 s at unaligned times (periods span the hour)."""
    start = lane.interval_start
    next_counts = start + 10.0
    ts = start
    while ts < start + seconds:
        ts += rng.expovariate(0.25)
        while next_counts <= ts:
            lane.counts(next_counts)
            next_counts += 10.0 + rng.uniform(0.0, 0.2)
        lane.cross(ts, rng.choice(["apple", "bread", "milk"]), rng.choice(["in", "in", "out"]))
    lane.counts(next_counts)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    url = str(tmp_path / "bo.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    eng = make_engine(url, writer=True)
    migrate(eng)
    yield eng
    eng.dispose()


def test_a_protocol_1_counts_message_is_accepted_and_a_bad_one_still_rejected():
    m = parse("lanecount/store-7/lane-1/counts", V1_COUNTS, 0.0, "lanecount")
    assert isinstance(m, Message), m
    assert m.kind == "counts" and "counted" not in m.body and m.seq == 41
    body = json.loads(V1_COUNTS)
    del body["interval"]
    bad = parse("lanecount/store-7/lane-1/counts", json.dumps(body).encode(), 0.0, "lanecount")
    assert isinstance(bad, Rejection) and "interval" in bad.reason


def test_protocol_1_lane_counts_hold_and_lost_messages_are_marked_unprovable(engine):
    rng = random.Random(11)
    lane = V1Lane("store-7", "lane-1", "3f9a1c0b7d2e4a61", T0 + HOUR - 1234.5)
    _life(lane, 2400.0, rng)  # 20 minutes before the hour to 20 after: one period spans it
    across = [m for m in lane.sent if m.kind == "counts" and _spans_the_hour(m)]
    assert len(across) == 1
    ingest = Ingest(engine)
    out = feed(ingest, lane.sent)
    assert out.stored == len(lane.sent) and out.rejected == 0 and out.conflicts == 0
    got, spans = hourly(engine, "store-7", "lane-1")
    # Every message arrived: the period across the hour is split by its crossing events, exactly.
    assert spans == [] and got == lane.truth_hourly()

    # A second lane loses counts messages in the middle of an hour (no `counted`: their totals are
    # unknowable): that stretch is a span of kind 'unknown'; the other hour stays exact, none is over.
    lane2 = V1Lane("store-7", "lane-2", "77aa01c2d3e4f5a6", T0 + HOUR - 1234.5)
    _life(lane2, 2400.0, random.Random(12))
    counts = [m for m in lane2.sent if m.kind == "counts"]
    lost = {m.seq for m in counts[150:156]}  # about 5 minutes past the hour
    feed(ingest, [m for m in lane2.sent if m.seq not in lost])
    got2, spans2 = hourly(engine, "store-7", "lane-2")
    assert [s.kind for s in spans2] == ["unknown"], spans2
    assert "cannot be known" in spans2[0].reason
    truth = lane2.truth_hourly()
    loose = inexact_hours(spans2)
    assert loose == {T0 + HOUR}
    for key in set(got2) | set(truth):
        assert got2[key] <= truth[key]
        if key[0] not in loose:
            assert got2[key] == truth[key], key
    assert sum(got2.values()) < sum(truth.values())

    # The lost messages arrive late after all: exact again, and nothing was counted twice.
    feed(ingest, [m for m in lane2.sent if m.seq in lost])
    got3, spans3 = hourly(engine, "store-7", "lane-2")
    assert spans3 == [] and got3 == truth
    assert count_rows(engine, t.rejected) == 0

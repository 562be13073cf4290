"""Figures that hold: simulated devices (device protocol 2) → ingest → hourly counts vs the ground truth.

No broker here (tests/test_backoffice_collector.py has the real Mosquitto): the messages a device
publishes are fed straight into the write path, on real SQLite and on a private PostgreSQL, in order,
out of order, twice, with the outbox bound dropping some, across resets, restarts, a restored backup and
a lost database.
"""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("jsonschema_rs")

from bo_util import HOUR, T0, assert_figures_hold, count_rows, feed, hourly, ledger

from backoffice import tables as t
from backoffice.db import make_engine, migrate
from backoffice.ingest import Ingest
from backoffice.simdevice import SimDevice, next_boundary

CLASSES = ["apple", "milk_carton", "bread"]


def _engine(request, tmp_path, kind):
    url = str(tmp_path / "bo.db") if kind == "sqlite" else request.getfixturevalue("pg_url")
    eng = make_engine(url, writer=True)
    migrate(eng)
    return eng


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    """The main cases run on both databases (one schema, one write path, two dialects)."""
    eng = _engine(request, tmp_path, request.param)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(request, tmp_path):
    """The rest on SQLite only: the figures logic is dialect-free, and the suite must stay short."""
    eng = _engine(request, tmp_path, "sqlite")
    yield eng
    eng.dispose()


def busy(dev: SimDevice, start: float, seconds: float, rng: random.Random, rate: float = 0.5) -> float:
    """Crossings at random times for ``seconds``, then the period holding the last one is reported.

    Returns the time reached (that period's end).
    """
    ts = start
    while True:
        ts += rng.expovariate(rate)
        if ts >= start + seconds:
            end = next_boundary(start + seconds, dev.period)
            dev.tick(end)
            return end
        dev.cross(ts, rng.choice(CLASSES), rng.choice(["in", "in", "out"]))


def test_in_order_stream_equals_the_truth_every_hour(engine):
    rng = random.Random(1)
    dev = SimDevice("s1", "lane-1", period=10.0)
    dev.start(T0 + 5)
    busy(dev, T0 + 5, 2.5 * HOUR, rng, rate=0.2)
    sent = dev.take()
    out = feed(Ingest(engine), sent)
    assert out.stored == len(sent) and out.conflicts == 0
    got, spans = hourly(engine, "s1", "lane-1")
    assert spans == []
    assert got == dev.truth_hourly() and sum(got.values()) == len(dev.truth)


def test_redelivery_and_any_arrival_order_give_the_same_figures(engine):
    """Duplicates and permutations (what two collectors and broker redelivery produce) change nothing."""
    rng = random.Random(2)
    dev = SimDevice("s1", "lane-2", period=10.0, max_messages=300)
    dev.start(T0)
    t1 = busy(dev, T0, 1.2 * HOUR, rng, rate=0.3)  # the bound drops the oldest messages meanwhile
    dev.stop()
    dev.start(t1 + 100)
    busy(dev, t1 + 100, 0.8 * HOUR, rng, rate=0.3)
    sent = dev.take()
    shuffled = sent + rng.sample(sent, len(sent) // 3)
    rng.shuffle(shuffled)
    ingest = Ingest(engine)
    feed(ingest, shuffled, batch=37)
    got, spans = assert_figures_hold(engine, dev)
    # The same messages in order into a second database settle to the same figures and spans.
    other = make_engine(
        f"sqlite:///{engine.url.database}.inorder"
        if engine.dialect.name == "sqlite"
        else str(engine.url.render_as_string(hide_password=False)) + "",
        writer=True,
    )
    if engine.dialect.name == "sqlite":
        migrate(other)
        feed(Ingest(other), sent)
        got2, spans2 = hourly(other, "s1", "lane-2")
        assert got2 == got
        assert [(s.kind, s.start, s.end, s.counts) for s in spans2] == [
            (s.kind, s.start, s.end, s.counts) for s in spans
        ]
    assert count_rows(engine, t.messages) == len(sent)
    assert count_rows(engine, t.conflicts) == 0


def test_outbox_drops_inside_an_hour_are_exact(sqlite_engine):
    """Lost counts messages within one hour: their total (from `counted`) goes to that hour."""
    engine = sqlite_engine
    rng = random.Random(3)
    dev = SimDevice("s1", "lane-3", period=10.0)
    dev.start(T0 + 60)
    busy(dev, T0 + 60, 0.7 * HOUR, rng)
    sent = dev.take()
    kept = [m for i, m in enumerate(sent) if not (m.kind == "counts" and i % 3 == 0)]
    assert len(kept) < len(sent)
    feed(Ingest(engine), kept)
    got, spans = hourly(engine, "s1", "lane-3")
    assert spans == [] and got == dev.truth_hourly()


def test_drops_across_hours_are_exact_from_events_or_reported_unattributed(engine):
    rng = random.Random(4)
    dev = SimDevice("s1", "lane-4", period=60.0)
    dev.start(T0 + HOUR - 600)
    busy(dev, T0 + HOUR - 600, 1500, rng)  # 10 minutes before the hour to 15 after
    sent = dev.take()
    counts = [m for m in sent if m.kind == "counts"]
    # Lose every counts message from 5 minutes before the hour to 5 after (a stretch across the hour).
    lost = {m.seq for m in counts if T0 + HOUR - 300 < float(_body(m)["period_end"]) <= T0 + HOUR + 300}
    assert len(lost) >= 8
    ingest = Ingest(engine)
    feed(ingest, [m for m in sent if m.seq not in lost])
    got, spans = hourly(engine, "s1", "lane-4")
    assert spans == [] and got == dev.truth_hourly(), "the events in the stretch place every count"

    # Same loss, and the crossing events of the stretch lost too: the total is known, its hour is not.
    dev2 = SimDevice("s1", "lane-5", period=60.0)
    dev2.start(T0 + HOUR - 600)
    busy(dev2, T0 + HOUR - 600, 1500, random.Random(4))
    sent2 = dev2.take()
    window = (T0 + HOUR - 300, T0 + HOUR + 300)
    dropped = {
        m.seq
        for m in sent2
        if (m.kind == "counts" and window[0] < float(_body(m)["period_end"]) <= window[1])
        or (m.kind == "events/crossing" and window[0] <= float(_body(m)["timestamp"]) < window[1])
    }
    feed(ingest, [m for m in sent2 if m.seq not in dropped])
    got2, spans2 = assert_figures_hold(engine, dev2)
    assert [s.kind for s in spans2] == ["unattributed"]
    truth = dev2.truth_hourly()
    # Nothing is lost: exact hours + the unattributed total = everything counted.
    assert sum(got2.values()) + sum(spans2[0].counts.values()) == sum(truth.values())
    assert spans2[0].start == pytest.approx(window[0], abs=60) and spans2[0].end == pytest.approx(
        window[1], abs=60
    )

    # The missing events arrive late after all: the stretch becomes exact.
    feed(ingest, [m for m in sent2 if m.seq in dropped and m.kind == "events/crossing"])
    got3, spans3 = hourly(engine, "s1", "lane-5")
    assert spans3 == [] and got3 == truth


def test_late_counts_message_closes_the_stretch_and_the_seq_gap(sqlite_engine):
    engine = sqlite_engine
    rng = random.Random(5)
    dev = SimDevice("s1", "lane-6", period=30.0)
    dev.start(T0 + HOUR - 400)
    busy(dev, T0 + HOUR - 400, 900, rng, rate=0.05)
    sent = dev.take()
    late = [m for m in sent if m.kind == "counts"][5:14]
    ingest = Ingest(engine)
    feed(ingest, [m for m in sent if m not in late])
    with engine.connect() as conn:
        from backoffice import queries

        assert queries.gaps(conn, site="s1")
    feed(ingest, late)
    got, spans = hourly(engine, "s1", "lane-6")
    assert spans == [] and got == dev.truth_hourly()
    with engine.connect() as conn:
        assert queries.gaps(conn, site="s1") == []


def test_reset_and_restarts_keep_the_figures(sqlite_engine):
    """A reset restarts `cumulative` only; a restart carries the held interval into the new epoch."""
    engine = sqlite_engine
    rng = random.Random(6)
    dev = SimDevice("s1", "lane-7", period=10.0)
    dev.start(T0)
    t1 = busy(dev, T0, 1000, rng)
    dev.reset(t1)
    t2 = busy(dev, t1, 1000, rng)
    dev.cross(t2 + 1, "apple")  # held in the interval when the daemon stops
    dev.stop()
    dev.start(t2 + 3700)  # an hour later: the held period, then one empty catch-up period
    busy(dev, t2 + 3700, 800, rng)
    feed(Ingest(engine), dev.take())
    got, spans = hourly(engine, "s1", "lane-7")
    assert spans == [] and got == dev.truth_hourly()


def test_restored_backup_is_a_fork_whose_replay_is_not_counted_twice(engine):
    rng = random.Random(7)
    dev = SimDevice("s1", "lane-8", period=10.0)
    dev.start(T0)
    t1 = busy(dev, T0, 1200, rng)
    backup = dev.snapshot()
    t2 = busy(dev, t1, 900, rng)
    published = dev.take()  # published, then the SD card is restored from the backup
    dev.stop()
    dev.restore(backup)
    dev.start(t2 + 600)
    busy(dev, t2 + 600, 1500, rng)
    feed(Ingest(engine), published + dev.take())
    got, spans = assert_figures_hold(engine, dev)
    assert [s.kind for s in spans] == ["transition"]
    assert "restored" in spans[0].reason
    assert spans[0].start <= t2 <= spans[0].end <= t2 + 600 + 10
    # Outside the transition every crossing is counted exactly once.
    outside = sum(
        n for k, n in dev.truth_hourly().items() if not (spans[0].start // HOUR * HOUR <= k[0] < spans[0].end)
    )
    assert (
        sum(n for k, n in got.items() if not (spans[0].start // HOUR * HOUR <= k[0] < spans[0].end))
        == outside
    )


def test_lost_database_is_marked_unprovable_with_a_lower_bound(sqlite_engine):
    engine = sqlite_engine
    rng = random.Random(8)
    dev = SimDevice("s1", "lane-9", period=10.0, max_messages=50)
    dev.start(T0)
    t1 = busy(dev, T0, 600, rng)
    feed(ingest := Ingest(engine), dev.take())  # online until here
    t2 = busy(dev, t1, 600, rng)  # offline: the bound keeps the last 50 messages (events at the end)
    dev.lose_database()  # ... and then the database is lost with its outbox
    dev.db.outbox.clear()
    dev.start(t2 + 30)
    busy(dev, t2 + 30, 600, rng)
    feed(ingest, dev.take())
    _, spans = assert_figures_hold(engine, dev)
    assert [s.kind for s in spans] == ["transition"] and "recovered" in spans[0].reason
    assert spans[0].start <= t1 + 10 and spans[0].end >= t2


def test_epoch_message_arriving_last_resettles_the_start(sqlite_engine):
    engine = sqlite_engine
    rng = random.Random(9)
    dev = SimDevice("s1", "lane-10", period=10.0)
    dev.start(T0)
    t1 = busy(dev, T0, 600, rng)
    backup = dev.snapshot()
    t2 = busy(dev, t1, 300, rng)
    published = dev.take()
    dev.stop()
    dev.restore(backup)
    dev.start(t2 + 120)
    busy(dev, t2 + 120, 300, rng)
    sent = published + dev.take()
    epoch_msgs = [m for m in sent if m.kind == "epoch"]
    ingest = Ingest(engine)
    feed(ingest, [m for m in sent if m.kind != "epoch"])
    feed(ingest, epoch_msgs)
    got, _ = assert_figures_hold(engine, dev)
    fresh = (
        make_engine(f"sqlite:///{engine.url.database}.fresh", writer=True)
        if engine.dialect.name == "sqlite"
        else None
    )
    if fresh is not None:
        migrate(fresh)
        feed(Ingest(fresh), sent)
        assert hourly(fresh, "s1", "lane-10")[0] == got


def test_conflict_is_kept_aside_and_never_overwrites(engine):
    dev = SimDevice("s1", "lane-11")
    dev.start(T0)
    dev.cross(T0 + 1, "apple")
    dev.tick(T0 + 20)
    sent = dev.take()
    ingest = Ingest(engine)
    feed(ingest, sent)
    before = ledger(engine)
    (event,) = [m for m in sent if m.kind == "events/crossing"]
    forged = [type(event)(event.seq, event.topic, event.payload.replace(b'"apple"', b'"pear"'))]
    out = feed(ingest, forged)
    assert out.conflicts == 1 and out.stored == 0
    assert ledger(engine) == before
    assert count_rows(engine, t.conflicts) == 1
    out = feed(ingest, forged)
    assert out.conflicts == 0, "the same conflicting payload again is one conflict, not two"
    assert hourly(engine, "s1", "lane-11")[0] == dev.truth_hourly()


def test_many_devices_in_one_batch(engine):
    rng = random.Random(10)
    devs = [SimDevice(f"s{i % 3}", f"lane-{i}", period=10.0) for i in range(12)]
    msgs = []
    for d in devs:
        d.start(T0)
        busy(d, T0, 400, rng, rate=0.5)
        msgs += d.take()
    rng.shuffle(msgs)
    feed(Ingest(engine), msgs, batch=500)
    for d in devs:
        got, spans = hourly(engine, d.site, d.device)
        assert got == d.truth_hourly() and spans == []
    from backoffice import queries

    with engine.connect() as conn:
        res = queries.counts(conn, site="s0", since=T0, until=T0 + 2 * HOUR)
    assert sum(r.n for r in res.rows) == sum(len(d.truth) for d in devs if d.site == "s0")
    assert Counter(r.exact for r in res.rows) == Counter({True: len(res.rows)})


def _body(m):
    import json

    return json.loads(m.payload)


def _life(seed: int) -> tuple[SimDevice, list]:
    """A random day of one lane: traffic, outages with a small outbox, restarts, a reset, a restored
    backup or a lost database, all published (what a real lane does in a bad week, in 4 hours)."""
    rng = random.Random(seed)
    dev = SimDevice(
        "s9",
        f"lane-{seed}",
        period=rng.choice([10.0, 30.0, 60.0]),
        max_messages=rng.choice([40, 120, 10_000]),
    )
    now = T0 + rng.uniform(0, 900)
    dev.start(now)
    sent: list = []
    backup = None
    for _ in range(rng.randint(3, 6)):
        now = busy(dev, now, rng.uniform(300, 1800), rng, rate=rng.choice([0.05, 0.3]))
        event = rng.random()
        if event < 0.3:
            sent += dev.take()  # online
        elif event < 0.45:
            dev.reset(now)
        elif event < 0.6:
            backup = dev.snapshot()
        elif event < 0.75 and backup is not None:
            sent += dev.take()
            dev.stop()
            dev.restore(backup)
            now += rng.uniform(30, 900)
            dev.start(now)
        elif event < 0.85:
            sent += dev.take()
            dev.stop()
            dev.lose_database()
            now += rng.uniform(5, 600)
            dev.start(now)
        else:
            dev.stop()  # a restart holding its interval (and an outbox that may overflow meanwhile)
            now += rng.uniform(5, 2000)
            dev.start(now)
    now = busy(dev, now, 300, rng)
    sent += dev.take()
    return dev, sent


# BO_LIVES=100 runs more lives (30 pass in about 40 s; the suite runs 6).
@pytest.mark.parametrize("seed", range(int(os.environ.get("BO_LIVES", "6"))))
def test_random_lives_hold_in_any_order(seed, tmp_path):
    """A random bad week of a lane, its messages in any order and some twice: the figures equal the truth
    where they claim to, never exceed it, and do not depend on the order."""
    dev, sent = _life(seed)
    a = make_engine(str(tmp_path / "a.db"), writer=True)
    b = make_engine(str(tmp_path / "b.db"), writer=True)
    migrate(a)
    migrate(b)
    feed(Ingest(a), sent)
    rng = random.Random(seed)
    shuffled = sent + rng.sample(sent, len(sent) // 4)
    rng.shuffle(shuffled)
    feed(Ingest(b), shuffled, batch=rng.choice([7, 60]))
    got_a, spans_a = assert_figures_hold(a, dev)
    got_b, spans_b = assert_figures_hold(b, dev)
    assert got_a == got_b
    assert [(s.kind, s.start, s.end, s.counts) for s in spans_a] == [
        (s.kind, s.start, s.end, s.counts) for s in spans_b
    ]

"""The collector as it runs: a real Mosquitto (MQTT 5, shared subscription), real SQLite and PostgreSQL,
``lanecount-backoffice collect`` as a child process, simulated devices that follow the device protocol 2.

What must hold after any of these: the ledger equals exactly what the devices published (nothing lost,
nothing twice, no conflict) and the hourly figures equal the ground truth.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import threading
import time

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("jsonschema_rs")

from bo_util import (
    BROKER_EXTRA,
    T0,
    CollectorProc,
    count_rows,
    hourly,
    ledger,
    published_keys,
    wait_for_rows,
)
from broker import Broker, mosquitto_binary, validate

from backoffice import queries
from backoffice import tables as t
from backoffice.db import make_engine
from backoffice.simdevice import Fleet, SimDevice, next_boundary

pytestmark = pytest.mark.broker
CLASSES = ["apple", "milk_carton", "bread"]


@pytest.fixture
def broker():
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (make system-deps installs it)")
    b = Broker(binary, persistence=True, extra=BROKER_EXTRA)
    b.start()
    yield b
    b.close()


def lanes(n: int, period: float = 10.0) -> list[SimDevice]:
    return [SimDevice(f"store-{i % 2}", f"lane-{i}", period=period) for i in range(n)]


def play(devs: list[SimDevice], seconds: float, rng: random.Random, start: float = T0) -> list:
    """Traffic on every lane for ``seconds`` of simulated time; returns the messages in publish order."""
    for d in devs:
        if not d.running:
            d.start(start)
    out = []
    for d in devs:
        ts = start
        while ts < start + seconds:
            ts += rng.expovariate(0.4)
            if ts < start + seconds:
                d.cross(ts, rng.choice(CLASSES), rng.choice(["in", "out"]))
        d.tick(next_boundary(start + seconds, d.period))
        out += d.take()
    return out


def check_exactly_once(db: str, sent: list, devs: list[SimDevice]) -> None:
    engine = make_engine(db)
    stored = {(s, d, e, q): p.encode() for s, d, e, q, p in ledger(engine)}
    assert stored == published_keys(sent), "the ledger differs from what was published"
    assert count_rows(engine, t.conflicts) == 0
    for dev in devs:
        got, spans = hourly(engine, dev.site, dev.device)
        assert spans == [] and got == dev.truth_hourly(), dev.device
    engine.dispose()


class Publisher(threading.Thread):
    """Publishes message chunks in the background at a steady pace (devices that keep talking)."""

    def __init__(self, fleet: Fleet, messages: list, chunk: int = 50, pause: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.fleet, self.messages, self.chunk, self.pause = fleet, messages, chunk, pause
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(0, len(self.messages), self.chunk):
                self.fleet.publish(self.messages[i : i + self.chunk], timeout=60)
                time.sleep(self.pause)
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def test_end_to_end_status_alerts_commands_and_schemas(broker, tmp_path):
    db = str(tmp_path / "bo.db")
    col = CollectorProc(broker, db, tmp_path / "collector.log").start().ready()
    fleet = Fleet(broker.host, broker.port)
    try:
        rng = random.Random(1)
        devs = lanes(3)
        sent = play(devs, 600, rng)
        devs[0].alert(T0 + 300, "milk_carton", "raised", estimate=2)
        devs[1].reset(T0 + 650)
        extra = devs[0].take() + devs[1].take()
        sent += extra
        fleet.publish(sent)
        for d in devs:
            fleet.raw(f"lanecount/{d.site}/{d.device}/status", d.status(T0 + 700), retain=True)
        fleet.raw(
            f"lanecount/{devs[2].site}/{devs[2].device}/status",
            devs[2].status(T0 + 800, "offline"),
            retain=True,
        )
        engine = make_engine(db)
        assert wait_for_rows(engine, len(sent)) == len(sent), col.text()[-2000:]
        time.sleep(0.5)
        assert col.term() == 0
        check_exactly_once(db, sent, devs)
        with engine.connect() as conn:
            fleet_rows = {(r.site, r.device): r for r in queries.devices(conn)}
            raised = queries.alerts(conn)
            results = queries.command_results(conn)
        assert fleet_rows[("store-0", "lane-0")].status == "online"
        assert fleet_rows[("store-0", "lane-2")].status == "offline"
        assert fleet_rows[("store-0", "lane-0")].model_version == "sim-1"
        assert [(a.device, a.product, a.state, a.since) for a in raised] == [
            ("lane-0", "milk_carton", "raised", T0 + 300)
        ]
        assert [(r.device, r.command, r.ok) for r in results] == [("lane-1", "reset", True)]
        # Everything stored validates against edge/schemas with python-jsonschema (an independent validator).
        kinds = {
            "counts": "counts",
            "crossing": "crossing",
            "cmd_result": "command_result",
            "alert": "alert",
            "epoch": "epoch",
        }
        with engine.connect() as conn:
            for kind, payload in conn.execute(
                t.messages.select().with_only_columns(t.messages.c.kind, t.messages.c.payload)
            ):
                if kind in kinds:
                    validate(kinds[kind], json.loads(payload))
    finally:
        fleet.close()
        col.kill()


def test_kill_9_at_random_points_and_at_every_commit_step(broker, tmp_path):
    """SIGKILL at ≥ 20 random instants and at each step of a commit; the stored rows equal the published."""
    db = str(tmp_path / "bo.db")
    col = CollectorProc(broker, db, tmp_path / "collector.log", "bo-kill", "--batch-size", "40")
    fleet = Fleet(broker.host, broker.port)
    rng = random.Random(2)
    devs = lanes(6)
    sent = play(devs, 2400, rng)
    col.start().ready()  # the session exists from here on: the broker queues for it while it is down
    col.kill()
    pub = Publisher(fleet, sent, chunk=40, pause=0.06)
    pub.start()
    engine = make_engine(db)
    kills = 0
    try:
        # Each step of the commit, twice: before the transaction, inside it, after it before the ack, mid-ack.
        for point in ["before-begin", "mid-batch", "after-commit", "mid-ack"] * 2:
            col.start(env={"LANECOUNT_BACKOFFICE_FAULT": f"{point}:{rng.randint(1, 3)}"})
            col.proc.wait(60)
            assert col.proc.returncode == -9, f"{point}: {col.text()[-1500:]}"
            kills += 1
        for _ in range(20):
            col.start()
            time.sleep(rng.uniform(0.3, 1.2))
            col.kill()
            kills += 1
        pub.join(120)
        assert pub.error is None
        col.start().ready()
        assert wait_for_rows(engine, len(sent), 90) == len(sent), col.text()[-2000:]
        assert col.term() == 0
    finally:
        fleet.close()
        col.kill()
    assert kills >= 28
    check_exactly_once(db, sent, devs)


def test_two_collectors_one_killed_again_and_again(broker, tmp_path, request):
    """Two collectors share the subscription; one is SIGKILLed and restarted while the other goes on."""
    db = str(tmp_path / "bo.db")
    steady = CollectorProc(broker, db, tmp_path / "a.log", "bo-a").start().ready()
    flaky = CollectorProc(broker, db, tmp_path / "b.log", "bo-b").start().ready()
    fleet = Fleet(broker.host, broker.port)
    rng = random.Random(3)
    devs = lanes(6)
    sent = play(devs, 900, rng)
    pub = Publisher(fleet, sent, chunk=30, pause=0.05)
    pub.start()
    engine = make_engine(db)
    try:
        for _ in range(6):
            time.sleep(rng.uniform(0.4, 1.0))
            flaky.kill()
            time.sleep(rng.uniform(0.0, 0.5))
            flaky.start()
        pub.join(120)
        assert pub.error is None
        assert wait_for_rows(engine, len(sent), 90) == len(sent), steady.text()[-1500:] + flaky.text()[-1500:]
        assert steady.term() == 0 and flaky.term() == 0
        assert "stored" in steady.text() and "stored" in flaky.text()
    finally:
        fleet.close()
        steady.kill()
        flaky.kill()
    check_exactly_once(db, sent, devs)


@pytest.mark.parametrize("group", ["lanecount-backoffice", ""])
def test_broker_restart_mid_stream(broker, tmp_path, group):
    """A clean broker restart: the collector's session comes back (shared subscription or plain)."""
    db = str(tmp_path / "bo.db")
    col = CollectorProc(broker, db, tmp_path / "c.log", "bo-br", "--group", group).start().ready()
    # Plain subscriptions survive a Mosquitto restart whoever reconnects first: these devices are fast.
    fleet = Fleet(broker.host, broker.port, reconnect_s=1.0 if group else 0.05)
    rng = random.Random(4)
    devs = lanes(4)
    first = play(devs, 900, rng)
    second = play(devs, 900, rng, start=next_boundary(T0 + 900, 10.0))
    engine = make_engine(db)
    try:
        fleet.publish(first)
        time.sleep(0.3)
        broker.stop()  # clean stop: Mosquitto saves the collector's session and its queued messages
        broker.start()
        fleet.publish(second, timeout=60)  # the devices reconnect and send on
        assert wait_for_rows(engine, len(first) + len(second), 60) == len(first) + len(second), col.text()[
            -2000:
        ]
        assert col.term() == 0
    finally:
        fleet.close()
        col.kill()
    check_exactly_once(db, first + second, devs)


def test_postgresql_restart_mid_stream(broker, tmp_path, pg_cluster, pg_url):
    """The collector waits while PostgreSQL is down, acknowledges nothing meanwhile, and loses nothing."""
    col = CollectorProc(broker, pg_url, tmp_path / "c.log", "bo-pg").start().ready()
    fleet = Fleet(broker.host, broker.port)
    rng = random.Random(5)
    devs = lanes(4)
    sent = play(devs, 900, rng)
    engine = make_engine(pg_url)
    try:
        half = len(sent) // 2
        fleet.publish(sent[:half])
        assert wait_for_rows(engine, half, 60) == half, col.text()[-2000:]
        engine.dispose()
        pg_cluster.stop("immediate")  # a crash: in-flight transactions are lost, committed ones stay
        fleet.publish(sent[half:])
        time.sleep(2.0)
        assert col.running(), col.text()[-2000:]
        pg_cluster.start()
        assert wait_for_rows(engine, len(sent), 90) == len(sent), col.text()[-2000:]
        assert col.term() == 0
        assert "database unavailable" in col.text() and "database back" in col.text()
    finally:
        fleet.close()
        col.kill()
        if not _pg_up(pg_cluster):
            pg_cluster.start()
    check_exactly_once(pg_url, sent, devs)


def _pg_up(cluster) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", cluster.port)) == 0


def test_disk_full_for_sqlite(broker, tmp_path):
    """On a full disk the collector says so in one line, acknowledges nothing it did not store, and
    goes on when space is back."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True
        ).returncode
    ):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        db = str(mnt / "bo.db")
        col = CollectorProc(broker, db, tmp_path / "c.log", "bo-full").start().ready()
        fleet = Fleet(broker.host, broker.port)
        rng = random.Random(6)
        devs = lanes(4)
        sent = play(devs, 1500, rng)
        engine = make_engine(db)
        try:
            fleet.publish(sent[:200])
            assert wait_for_rows(engine, 200, 60) == 200, col.text()[-2000:]
            filler = mnt / "filler"
            subprocess.run(
                ["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=1000"], capture_output=True
            )
            fleet.publish(sent[200:])
            deadline = time.monotonic() + 30
            while "full" not in col.text() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert "database or disk is full" in col.text(), col.text()[-2000:]
            assert col.running()
            stored_while_full = count_rows(engine, t.messages)
            filler.unlink()
            assert wait_for_rows(engine, len(sent), 60) == len(sent), col.text()[-2000:]
            assert stored_while_full < len(sent)
            assert col.term() == 0
        finally:
            fleet.close()
            col.kill()
            engine.dispose()
        check_exactly_once(db, sent, devs)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


FUZZ = [
    b"",
    b"not json",
    b"\xff\xfe\x00garbage",
    b"[]",
    b"42",
    b'"a string"',
    b"{}",
    b'{"seq": 1}',
    b"{" * 5000,
    b'{"seq": 1, "epoch": "e", "site": "store-0", "device": "lane-0", "timestamp": NaN}',
    b'{"seq": 1, "epoch": "e", "site": "store-0", "device": "lane-0", "timestamp": Infinity}',
    b"x" * 70_000,
]


def fuzz_messages(dev: SimDevice, rng: random.Random) -> list[tuple[str, bytes]]:
    """At least 30 malformed messages: bad bytes, bad JSON, schema failures, lies about the sender."""
    base = f"lanecount/{dev.site}/{dev.device}"
    good = {
        "seq": 10_000,
        "epoch": "f" * 16,
        "site": dev.site,
        "device": dev.device,
        "timestamp": T0 + 5,
        "line": "lane",
        "track_id": 1,
        "class_id": 0,
        "class_name": "apple",
        "direction": "in",
    }
    out = [(f"{base}/events/crossing", raw) for raw in FUZZ]
    mutations = [
        {"seq": 0},
        {"seq": -5},
        {"seq": "7"},
        {"seq": 2**60},
        {"track_id": 10**20},  # beyond 64 bits: orjson reads it as a float
        {"seq": 1.5},
        {"direction": "up"},
        {"class_id": -1},
        {"timestamp": "yesterday"},
        {"timestamp": -1.0},
        {"timestamp": 1e300},
        {"line": ""},
        {"site": "other-store"},
        {"device": "other-lane"},
        {"class_name": "a\u0000b"},
        {"class_name": "\ud800"},
        {"line": "x" * 500},
        {"extra": 1},
        {"epoch": ""},
        {"epoch": "e" * 100},
        {"track_id": None},
    ]
    for i, change in enumerate(mutations):
        body = {**good, "seq": 10_000 + i, **change}
        out.append((f"{base}/events/crossing", json.dumps(body).encode()))
    out += [
        (f"{base}/alerts/unknown/kind", json.dumps(good).encode()),
        (f"{base}/counts", json.dumps(good).encode()),  # a crossing on the counts topic
        (f"{base}/alerts/restock/depletion", json.dumps(good).encode()),  # a level short
        (
            f"{base}/counts",
            json.dumps(
                {**good, "period_start": 5.0, "period_end": 4.0, "cumulative": {}, "interval": {}}
            ).encode(),
        ),
        (f"{base}/epoch", json.dumps({**good, "state": "sideways"}).encode()),
        (f"{base}/status", b'{"state": "online"}'),
    ]
    rng.shuffle(out)
    return out


def test_fuzz_is_rejected_and_the_good_messages_around_it_are_stored(broker, tmp_path):
    db = str(tmp_path / "bo.db")
    col = CollectorProc(broker, db, tmp_path / "c.log", "bo-fuzz").start().ready()
    fleet = Fleet(broker.host, broker.port)
    rng = random.Random(7)
    devs = lanes(2)
    sent = play(devs, 600, rng)
    bad = fuzz_messages(devs[0], rng)
    assert len(bad) >= 30
    try:
        for i, (topic, raw) in enumerate(bad):  # interleaved with good messages
            fleet.raw(topic, raw)
            fleet.publish(sent[i * len(sent) // len(bad) : (i + 1) * len(sent) // len(bad)])
        fleet.publish(sent[len(bad) * len(sent) // len(bad) :])
        engine = make_engine(db)
        assert wait_for_rows(engine, len(bad), 60, t.rejected) == len(bad), col.text()[-3000:]
        assert wait_for_rows(engine, len(sent), 60) == len(sent)
        assert col.running()
        with engine.connect() as conn:
            reasons = [r.reason for r in queries.rejected(conn, limit=1000)]
        assert len(reasons) == len(bad) and all(reasons)
        assert "Traceback" not in col.text()
        assert col.term() == 0
        res = subprocess.run(
            [*col.cmd[:3], "rejected", "--db", db, "--limit", "100"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0 and "not JSON" in res.stdout
    finally:
        fleet.close()
        col.kill()
    check_exactly_once(db, sent, devs)


def test_sigterm_commits_the_batch_in_hand(broker, tmp_path):
    db = str(tmp_path / "bo.db")
    col = (
        CollectorProc(broker, db, tmp_path / "c.log", "bo-term", "--batch-ms", "3000", "--batch-size", "5000")
        .start()
        .ready()
    )
    fleet = Fleet(broker.host, broker.port)
    rng = random.Random(8)
    devs = lanes(2)
    sent = play(devs, 300, rng)
    engine = make_engine(db)
    try:
        fleet.publish(sent)
        time.sleep(0.5)  # in the collector's hands, waiting for the batch to fill (3 s)
        assert count_rows(engine, t.messages) == 0
        assert col.term() == 0
        assert count_rows(engine, t.messages) == len(sent), col.text()[-2000:]
    finally:
        fleet.close()
        col.kill()
    check_exactly_once(db, sent, devs)


def test_a_conflict_is_kept_aside_logged_and_counted(broker, tmp_path):
    """A key seen again with another payload: the first stays, the second is in `conflicts`, one log line,
    and the Prometheus counter says so."""
    import urllib.request

    from edge.demo import free_port

    port = free_port()
    db = str(tmp_path / "bo.db")
    col = (
        CollectorProc(broker, db, tmp_path / "c.log", "bo-conf", "--metrics-port", str(port)).start().ready()
    )
    fleet = Fleet(broker.host, broker.port)
    devs = lanes(1)
    sent = play(devs, 120, random.Random(9))
    event = next(m for m in sent if m.kind == "events/crossing")
    forged = type(event)(event.seq, event.topic, event.payload.replace(b'"track_id":', b'"track_id":9'))
    assert forged.payload != event.payload
    try:
        fleet.publish(sent)
        fleet.publish([forged])
        engine = make_engine(db)
        assert wait_for_rows(engine, 1, 30, t.conflicts) == 1, col.text()[-2000:]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'lanecount_backoffice_messages_total{outcome="conflict"} 1.0' in metrics
        assert f'lanecount_backoffice_messages_total{{outcome="stored"}} {float(len(sent))}' in metrics
        assert col.text().count("conflict: store-0/lane-0") == 1
        assert col.term() == 0
    finally:
        fleet.close()
        col.kill()
    stored = {(s, d, e, q): p.encode() for s, d, e, q, p in ledger(make_engine(db))}
    assert stored == published_keys(sent), "the first payload stays"

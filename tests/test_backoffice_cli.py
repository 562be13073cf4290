"""The back office's doors: ``migrate``, the query commands and their formats, bad options and URLs,
retention, the systemd unit (verified, scored, and its syscall filter checked against a real run)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("jsonschema_rs")

from bo_util import BROKER_EXTRA, HOUR, T0, CollectorProc, count_rows, feed, hourly, wait_for_rows
from broker import Broker, mosquitto_binary

from backoffice import tables as t
from backoffice.db import make_engine, migrate, prune
from backoffice.ingest import Ingest
from backoffice.simdevice import Fleet, SimDevice, next_boundary

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "backoffice" / "systemd" / "lanecount-backoffice.service"
CLI = [sys.executable, "-m", "backoffice"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (a Python start per call would cost a second and a half)."""
    from typer.testing import CliRunner

    from backoffice.cli import app

    res = CliRunner().invoke(app, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return subprocess.CompletedProcess(list(args), res.exit_code, res.stdout, res.stderr)


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A database with two lanes' day: a drop across an hour (unattributed), an alert, a gap."""
    db = tmp_path_factory.mktemp("cli") / "bo.db"
    engine = make_engine(str(db), writer=True)
    migrate(engine)
    rng = random.Random(1)
    lanes = []
    for i in range(2):
        dev = SimDevice("store-1", f"lane-{i}", period=60.0)
        dev.start(T0)
        ts = T0
        while ts < T0 + 3 * HOUR:
            ts += rng.expovariate(0.05)
            dev.cross(ts, rng.choice(["apple", "bread"]))
        dev.tick(next_boundary(T0 + 3 * HOUR, 60.0))
        lanes.append(dev)
    lanes[0].alert(T0 + 100, "bread", "raised", estimate=1)
    sent0 = lanes[0].take()
    window = (T0 + HOUR - 600, T0 + HOUR + 600)
    lost = [
        m
        for m in sent0
        if m.kind in ("counts", "events/crossing")
        and window[0] < json.loads(m.payload)["timestamp"] < window[1]
    ]
    feed(Ingest(engine), [m for m in sent0 if m not in lost] + lanes[1].take())
    return db, lanes


def test_counts_table_csv_json_agree(filled):
    db, lanes = filled
    common = ["--db", str(db), "--site", "store-1", "--since", str(T0), "--until", str(T0 + 4 * HOUR)]
    table = cli("counts", *common)
    assert table.returncode == 0, table.stderr
    assert "NO" in table.stdout and "unattributed" in table.stdout  # the lost stretch is marked, not guessed
    as_json = json.loads(cli("counts", *common, "--format", "json").stdout)
    as_csv = list(csv.DictReader(io.StringIO(cli("counts", *common, "--format", "csv").stdout)))
    assert len(as_csv) == len(as_json["rows"]) > 0
    assert sum(int(r["n"]) for r in as_csv) == sum(r["n"] for r in as_json["rows"])
    assert [s["kind"] for s in as_json["spans"]] == ["unattributed"]
    # Exact buckets + unattributed totals = everything the lanes counted.
    unattributed = sum(
        n for by_dir in as_json["spans"][0]["counts"].values() for d in by_dir.values() for n in d.values()
    )
    assert sum(r["n"] for r in as_json["rows"]) + unattributed == sum(len(d.truth) for d in lanes)
    by_day = json.loads(
        cli("counts", *common, "--by", "day", "--tz", "Europe/Paris", "--format", "json").stdout
    )
    assert sum(r["n"] for r in by_day["rows"]) == sum(r["n"] for r in as_json["rows"])
    per_lane = json.loads(cli("counts", *common, "--per-device", "--format", "json").stdout)
    assert {r["device"] for r in per_lane["rows"]} == {"lane-0", "lane-1"}
    exact_lane1 = [r for r in per_lane["rows"] if r["device"] == "lane-1"]
    assert all(r["exact"] for r in exact_lane1)  # the other lane lost nothing


def test_devices_gaps_alerts_epochs_rejected(filled):
    db, _ = filled
    devices = json.loads(cli("devices", "--db", str(db), "--format", "json").stdout)
    assert [d["device"] for d in devices] == ["lane-0", "lane-1"]
    assert devices[0]["open_alerts"] == 1 and devices[0]["missing_messages"] > 0
    gaps = cli("gaps", "--db", str(db), "--format", "csv")
    assert gaps.returncode == 0 and "lane-0" in gaps.stdout and "lane-1" not in gaps.stdout
    alerts = cli("alerts", "--db", str(db))
    assert "bread" in alerts.stdout and "raised" in alerts.stdout
    assert cli("epochs", "--db", str(db), "--site", "store-1").stdout.count("new") == 2
    assert cli("rejected", "--db", str(db)).stdout.strip() == "(none)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["counts", "--since", "yesterday-ish"], "--since"),
        (["counts", "--since", "now", "--until", "-1d"], "must be after"),
        (["counts", "--since", "-500d"], "longer than 400 days"),
        (["counts", "--tz", "Mars/Olympus"], "unknown time zone"),
        (["counts", "--device", "lane-1"], "--device needs --site"),
        (["counts", "--format", "xml"], "--format"),
        (["devices", "--db", "mysql://x/y"], "not supported"),
        (["devices", "--db", "/nonexistent/dir/bo.db"], "does not exist"),
        (["collect", "--broker", "http://x"], "mqtt://"),
        (["collect", "--broker", "mqtt://h:1", "--log-level", "LOUD"], "--log-level"),
    ],
)
def test_bad_input_is_one_line_not_a_traceback(filled, args, message):
    db, _ = filled
    if "--db" not in args:
        args = [*args, "--db", str(db)]
    res = cli(*args)
    assert res.returncode == 2, res
    said = " ".join(re.sub(r"[│╭╮╰╯─]", " ", res.stderr).split())  # typer draws its usage errors in a box
    assert message in said and "Traceback" not in res.stderr, res.stderr


def test_queries_on_a_missing_or_unmigrated_database_say_what_to_do(tmp_path):
    res = cli("devices", "--db", str(tmp_path / "none.db"))
    assert res.returncode == 2 and "no database" in res.stderr
    (tmp_path / "empty.db").write_bytes(b"")  # a 0-byte file is left as it is, never replaced
    res = cli("devices", "--db", str(tmp_path / "empty.db"))
    assert res.returncode == 2 and "lanecount-backoffice migrate" in res.stderr
    assert (tmp_path / "empty.db").read_bytes() == b""
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    res = cli("devices", "--db", str(tmp_path / "junk.db"))
    assert res.returncode == 2 and "cannot open" in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "junk.db").read_bytes() == b"this is not a database" * 100


def test_migrate_is_idempotent_and_the_schema_matches_the_tables(tmp_path, pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    for url in (str(tmp_path / "m.db"), pg_url):
        first = cli("migrate", "--db", url)
        assert first.returncode == 0 and "none -> 0001" in first.stdout, first.stderr
        again = cli("migrate", "--db", url)
        assert again.returncode == 0 and "up to date" in again.stdout
        engine = make_engine(url)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
        engine.dispose()
        assert diff == [], f"{url}: migrations and backoffice/tables.py differ: {diff}"


def test_retention_removes_raw_messages_keeps_figures_and_refuses_old_copies(tmp_path):
    engine = make_engine(str(tmp_path / "r.db"), writer=True)
    migrate(engine)
    dev = SimDevice("s1", "lane-1", period=60.0)
    old = time.time() - 10 * 86400
    dev.start(old)
    for i in range(50):
        dev.cross(old + 30 * i, "apple")
    dev.tick(next_boundary(old + 1600, 60.0))
    sent = dev.take()
    ingest = Ingest(engine)
    feed(ingest, sent)
    before, _ = hourly(engine, "s1", "lane-1")
    assert prune(engine, keep_days=5) > 0
    assert count_rows(engine, t.messages) == 0 and count_rows(engine, t.crossings) == 0
    after, _ = hourly(engine, "s1", "lane-1")
    assert after == before == dev.truth_hourly()
    out = feed(ingest, sent)  # a device or broker sends the old messages again
    assert out.stored == 0 and out.expired == len(sent)
    assert hourly(engine, "s1", "lane-1")[0] == before


# --- the systemd unit -----------------------------------------------------------------------------


def _unit_copy(tmp_path: Path) -> Path:
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text().replace("/opt/lanecount-backoffice/venv/bin/lanecount-backoffice", sys.executable)
    )
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies_and_its_exposure_is_low(tmp_path):
    text = UNIT.read_text()
    for key in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "CapabilityBoundingSet=\n",
        "PrivateDevices=yes",
    ):
        assert key in text, key
    unit = _unit_copy(tmp_path)
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and UNIT.name not in res.stderr, res.stderr
    res = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True
    )
    if "--offline" in res.stderr:
        pytest.skip(f"this systemd-analyze cannot score a unit offline: {res.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert match and float(match.group(1)) <= 2.0, res.stdout


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or shutil.which("strace") is None or mosquitto_binary() is None,
    reason="needs systemd-analyze, strace and mosquitto",
)
def test_the_collector_stays_within_the_units_syscall_filter(tmp_path, pg_url):
    """systemd is not PID 1 here: every syscall of a real run (SQLite and PostgreSQL) must be allowed."""
    from test_config import _syscalls

    broker = Broker(mosquitto_binary(), extra=BROKER_EXTRA)
    broker.start()
    try:
        used: set[str] = set()
        for db in (str(tmp_path / "s.db"), pg_url):
            counts = tmp_path / f"sys-{len(used)}.txt"
            col = CollectorProc(broker, db, tmp_path / "c.log", "bo-sys", "--keep-days", "3650")
            col.cmd = ["strace", "-f", "-qq", "-c", "-o", str(counts), *col.cmd]
            col.start().ready()
            fleet = Fleet(broker.host, broker.port)
            dev = SimDevice("s", "d")
            dev.start(T0)
            dev.cross(T0 + 1, "apple")
            dev.tick(T0 + 20)
            sent = dev.take()
            fleet.publish(sent)
            fleet.close()
            assert wait_for_rows(make_engine(db), len(sent)) == len(sent)
            tracee = int(Path(f"/proc/{col.proc.pid}/task/{col.proc.pid}/children").read_text().split()[0])
            os.kill(tracee, signal.SIGTERM)  # the collector, not strace
            assert col.proc.wait(30) == 0, col.text()[-1500:]
            rows = [line.split() for line in counts.read_text().splitlines()]
            used |= {
                r[-1] for r in rows if len(r) >= 5 and r[-1] not in ("syscall", "total") and r[0][0].isdigit()
            }
    finally:
        broker.close()
    assert {"openat", "connect", "fdatasync"} <= used
    if os.geteuid() == 0:
        used.discard("fchown")  # SQLite's robust_fchown as root only (the unit runs as its own user)
    assert used - _syscalls(UNIT.read_text()) == set()

"""The doors of the state: start-up, restore, snapshot, lost WAL, upgrade, lock (real SQLite, real processes).

test_state.py covers the hallway (a kill at every fdatasync of the frame path). These cover what a
device meets at start: a backup or snapshot restored under it, a write-ahead log that lost its tail
or was replaced by an empty one, a 0-byte or deleted database, a disk that is full or failing, a
second daemon, a kill during the upgrade from 0.1. Subscribers de-duplicate by (epoch, seq), so the
check that matters is the subscriber's: no pair ever comes back with another payload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from broker import validate
from conftest import ROOT
from test_state import kill_after, messages, snapshot

from edge.counts import Counts
from edge.state import FrameCommit, OutMessage, StateStore

ENVELOPE = {"site": "s", "device": "d"}


class Subscriber:
    """What a de-duplicating subscriber keeps: one payload per (epoch, seq); a conflict is a lost event."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], dict] = {}

    def receive(self, path: Path) -> None:
        for _, _, body in messages(path):
            key = (body["epoch"], body["seq"])
            assert self.seen.get(key, body) == body, f"(epoch, seq) {key} came back with another payload"
            self.seen[key] = body

    def epoch_messages(self) -> list[dict]:
        return [b for _, b in sorted(self.seen.items(), key=lambda kv: kv[0][1]) if "previous" in b]


def work(path: Path, run: int, n: int = 3) -> None:
    """One run of the device: n messages whose payloads say which run queued them, then a clean stop."""
    with StateStore(path, envelope=ENVELOPE) as state:
        for i in range(n):
            state.commit(
                FrameCommit(Counts.of([("l", "in", "a")]), messages=[OutMessage("x", {"run": run, "i": i})])
            )


def copy_files(src: Path, dst: Path) -> None:
    """Copy a database with its side files, as a backup or a disk snapshot does (absent ones removed)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")


# --- restore, snapshot and WAL losses never reuse (epoch, seq) ---------------------------------------


def test_a_restored_copy_of_a_cleanly_stopped_database_never_reuses_epoch_seq(tmp_path):
    path, backup, sub = tmp_path / "state.db", tmp_path / "backup.db", Subscriber()
    work(path, run=1)
    sub.receive(path)
    copy_files(path, backup)  # a nightly backup of the stopped device
    work(path, run=2)
    sub.receive(path)
    copy_files(backup, path)  # the backup is restored
    work(path, run=3)
    sub.receive(path)  # raises on a reused (epoch, seq)
    chain = [b["previous"] for b in sub.epoch_messages()]
    run2_last = max(seq for (_, seq), b in sub.seen.items() if b.get("run") == 2)
    # The restored database continues from the backup's epoch and seq: a fork the subscriber can see.
    assert chain[-1]["epoch"] == chain[1]["epoch"] and chain[-1]["last_seq"] < run2_last


def test_a_snapshot_of_a_running_database_with_its_wal_never_reuses_epoch_seq(tmp_path):
    path, snap, sub = tmp_path / "state.db", tmp_path / "snap.db", Subscriber()
    work(path, run=1)
    # A VM/SD-card snapshot of a running device: the database and its WAL as they are mid-run.
    kill_after(
        path,
        f"[state.queue(OutMessage('x', {{'run': 2, 'i': i}})) for i in range(3)]\n{copy_code(path, snap)}",
    )
    sub.receive(path)
    work(path, run=3)
    sub.receive(path)
    copy_files(snap, path)  # the snapshot is rolled back
    work(path, run=4)
    sub.receive(path)


def copy_code(src: Path, dst: Path) -> str:
    return (
        "import shutil, os\n"
        f"for s in ('', '-wal', '-shm'):\n"
        f"    if os.path.exists({str(src)!r} + s): shutil.copyfile({str(src)!r} + s, {str(dst)!r} + s)"
    )


def test_a_wal_that_lost_its_tail_never_reuses_epoch_seq(tmp_path):
    path, sub = tmp_path / "state.db", Subscriber()
    work(path, run=1)
    kill_after(path, "\n".join(f"state.queue(OutMessage('x', {{'run': 2, 'i': {i}}}))" for i in range(8)))
    sub.receive(path)
    before = max(seq for _, seq in sub.seen)
    wal = Path(f"{path}-wal")
    with wal.open("r+b") as f:  # a copy or a disk that kept only the first part of the log
        f.truncate(wal.stat().st_size // 3)
    with sqlite3.connect(f"file:{snapshot(path)}?mode=ro", uri=True) as conn:
        (after,) = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    assert after < before, "the truncation must lose committed messages for this test to mean anything"
    work(path, run=3)
    sub.receive(path)


def test_an_empty_wal_after_an_unclean_stop_never_reuses_epoch_seq(tmp_path):
    path, sub = tmp_path / "state.db", Subscriber()
    work(path, run=1)
    kill_after(path, "\n".join(f"state.queue(OutMessage('x', {{'run': 2, 'i': {i}}}))" for i in range(4)))
    sub.receive(path)
    Path(f"{path}-wal").unlink()
    Path(f"{path}-shm").unlink(missing_ok=True)
    # Any reader, even read-only as the README advises, leaves an empty -wal behind.
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
    assert Path(f"{path}-wal").exists() and Path(f"{path}-wal").stat().st_size == 0
    work(path, run=3)
    sub.receive(path)


# --- a database that is gone is announced, never silent ---------------------------------------------


@pytest.mark.parametrize("how", ["truncated to 0 bytes", "deleted", "0 bytes, moved aside by 0.2"])
def test_a_lost_database_where_the_daemon_ran_before_is_announced_like_damage(tmp_path, how, caplog):
    path = tmp_path / "state.db"
    with StateStore(path, envelope=ENVELOPE) as state:
        state.commit(FrameCommit(Counts.of([("l", "in", "a")] * 33)))
        for i in range(38):
            state.queue(OutMessage("x", {"i": i}))
        epoch = state.epoch
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"")
    if how.endswith("by 0.2"):  # 0.2 left no marker, only the healthy file it had moved aside
        (tmp_path / "state.epoch").unlink(missing_ok=True)
        (tmp_path / "state.db.damaged-20250101T000000").write_bytes(b"SQLite format 3\x00")
    with caplog.at_level(logging.ERROR), StateStore(path, envelope=ENVELOPE) as state:
        recovered = state.recovered
        assert recovered and "ran here before" in recovered and "\n" not in recovered
        opening = json.loads(state.outbox.pending(1)[0].payload)
    assert recovered in caplog.text  # logged, and published in the status and the epoch message
    validate("epoch", opening)
    assert opening["state"] == "recovered" and opening["recovered"] == recovered
    if how.endswith("by 0.2"):
        assert opening["previous"] is None and "was moved aside" in recovered
    else:
        assert opening["previous"] == {"epoch": epoch, "last_seq": None}


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (make test installs it)")
@pytest.mark.parametrize("start", ["first start", "second start"])
def test_a_start_killed_while_writing_the_marker_never_announces_a_loss(tmp_path, start):
    # The marker's folder fsync is the last step of a start (os.fsync; SQLite itself uses fdatasync).
    path = tmp_path / "state.db"
    if start == "second start":
        work(path, run=1)
    code = f"from edge.state import StateStore\nStateStore({str(path)!r})"
    inject = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=fsync",
        "-e",
        "inject=fsync:signal=SIGKILL",
    ]
    killed = subprocess.run([*inject, sys.executable, "-c", code], capture_output=True, timeout=60, cwd=ROOT)
    assert killed.returncode != 0, "the marker's fsync was not reached"
    with StateStore(path) as state:
        assert state.recovered is None and state.start.state == "continued"


def test_a_first_start_is_new_and_says_nothing(tmp_path, caplog):
    with caplog.at_level(logging.ERROR), StateStore(tmp_path / "state.db", envelope=ENVELOPE) as state:
        assert state.recovered is None and state.start.state == "new"
    assert not caplog.records


# --- errors that are not damage touch nothing -------------------------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_in_child(
    path: Path, wrap: list[str] | None = None, limit: int | None = None
) -> subprocess.CompletedProcess:
    code = (
        "import sys\nfrom edge.state import StateStore\n"
        f"try:\n    StateStore({str(path)!r})\nexcept Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n    sys.exit(1)\n"
    )

    def rlimit() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [*(wrap or []), sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, preexec_fn=rlimit)


def state_files(folder: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in folder.iterdir() if p.name.startswith("state.db")}


@pytest.mark.parametrize("fault", ["disk full", "I/O error", "locked by another process"])
def test_an_error_opening_a_healthy_database_is_not_damage_and_touches_nothing(tmp_path, fault):
    path = tmp_path / "state.db"
    with StateStore(path) as state:
        state.commit(FrameCommit(Counts.of([("l", "in", "a")] * 5)))
    holder = None
    if fault == "locked by another process":  # a writable sqlite3 shell, a backup tool...
        # In its own process: POSIX locks are per process, and reading the files here would drop them.
        code = (
            f"import sqlite3, sys\nc = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "c.execute('PRAGMA locking_mode=EXCLUSIVE')\n"  # held from its first write until it closes
            "c.execute('BEGIN IMMEDIATE'); c.execute(\"UPDATE meta SET value = value WHERE key = 'clean'\")\n"
            "c.execute('COMMIT'); print('locked', flush=True); sys.stdin.read()\n"
        )
        holder = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    before = state_files(tmp_path)
    if fault == "disk full":  # the process may not grow any file: the -shm cannot be created
        result = open_in_child(path, limit=1000)
    elif fault == "I/O error":  # every read of state.db fails (strace fault injection)
        if shutil.which("strace") is None:
            pytest.skip("needs strace (make test installs it)")
        inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(path), "-e", "trace=pread64"]
        result = open_in_child(path, wrap=[*inject, "-e", "inject=pread64:error=EIO"])
    else:
        result = open_in_child(path)
    after = state_files(tmp_path)
    if holder is not None:
        holder.communicate("", timeout=10)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Error" in result.stdout and "Traceback" not in result.stderr
    assert after == before, f"{fault}: the files changed: {sorted(after)} (before {sorted(before)})"
    with StateStore(path) as state:  # once the fault is gone, everything is there
        assert state.totals().total() == 5 and state.recovered is None


# --- damage: one line, and never over an earlier file --------------------------------------------------


def corrupt_a_leaf_page(path: Path) -> None:
    """Scribble over the cell pointers of one leaf of a big table: quick_check reports many lines."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE filler (x TEXT)")
        conn.executemany("INSERT INTO filler VALUES (?)", [(f"{i:04d}" * 10,) for i in range(400)])
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'filler'").fetchone()
    conn.close()  # the last close checkpoints the WAL into the file
    data = bytearray(path.read_bytes())
    interior = (root - 1) * 4096
    assert data[interior] == 0x05, "filler's root should be an interior page"
    cell = int.from_bytes(data[interior + 12 : interior + 14], "big")
    leaf = int.from_bytes(data[interior + cell : interior + cell + 4], "big") - 1  # its first child
    data[leaf * 4096 + 8 : leaf * 4096 + 40] = b"\xff" * 32
    path.write_bytes(bytes(data))


def test_a_damage_message_is_one_line_in_the_log_and_in_the_epoch_message(tmp_path, caplog):
    path = tmp_path / "state.db"
    with StateStore(path) as state:
        state.commit(FrameCommit(Counts.of([("l", "in", "a")] * 3)))
    corrupt_a_leaf_page(path)
    with caplog.at_level(logging.ERROR), StateStore(path, envelope=ENVELOPE) as state:
        recovered = state.recovered
        assert recovered and "quick_check" in recovered and "\n" not in recovered
        opening = json.loads(state.outbox.pending(1)[0].payload)
    damage = [r.getMessage() for r in caplog.records if "damaged state database" in r.getMessage()]
    assert damage and all("\n" not in line for line in damage)
    assert "\n" not in opening["recovered"] and opening["state"] == "recovered"


def test_a_moved_aside_file_never_overwrites_an_earlier_one(tmp_path):
    path = tmp_path / "state.db"
    # Earlier damaged files named for this very second and the next few (two starts in one second,
    # or a clock stepped back).
    now = time.time()
    earlier = {}
    for dt in range(-1, 6):
        name = f"state.db.damaged-{time.strftime('%Y%m%dT%H%M%S', time.localtime(now + dt))}"
        (tmp_path / name).write_bytes(f"earlier {dt}".encode())
        earlier[name] = f"earlier {dt}".encode()
    path.write_bytes(b"not a database" * 100)
    with StateStore(path) as state:
        assert state.recovered
    for name, content in earlier.items():
        assert (tmp_path / name).read_bytes() == content, f"{name} was overwritten"
    assert len(list(tmp_path.glob("state.db.damaged-*"))) == len(earlier) + 1


# --- one daemon per state directory ------------------------------------------------------------------


def test_a_second_store_on_the_same_directory_is_refused_and_names_the_holder(tmp_path):
    path = tmp_path / "state.db"
    code = (
        "import time\nfrom edge.state import StateStore\n"
        f"s = StateStore({str(path)!r})\nprint('open', flush=True)\ntime.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(Exception, match=rf"in use by another lanecount daemon \(PID {holder.pid}\)"):
            StateStore(path)
    finally:
        holder.kill()
        holder.wait(10)
    with StateStore(path) as state:  # the kernel released the lock with the process
        assert state.start.state == "continued"


# --- the upgrade from 0.1 is retried until it is done ---------------------------------------------------


def write_v1(folder: Path) -> None:
    """lanecount 0.1's two databases: counts 7+2, an alert raised, two unsent messages (seq 40, 41)."""
    old = sqlite3.connect(folder / "counts.db")
    old.executescript(
        "CREATE TABLE counts (line TEXT, class_name TEXT, direction TEXT, n INTEGER);"
        "CREATE TABLE interval (line TEXT, class_name TEXT, direction TEXT, n INTEGER);"
        "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO counts VALUES ('lane', 'apple', 'in', 7), ('lane', 'milk', 'out', 2);"
        "INSERT INTO interval VALUES ('lane', 'apple', 'in', 1);"
        "INSERT INTO state VALUES ('alert:depletion:milk', '{\"estimate\": 3, \"raised\": true}');"
    )
    old.commit()
    old.close()
    box = sqlite3.connect(folder / "outbox.db")
    box.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT, payload TEXT, qos INTEGER,"
        " retain INTEGER, created REAL);"
        "INSERT INTO outbox VALUES (40, 'lc/s/d/counts', '{\"seq\":40}', 1, 0, 1.0);"
        "INSERT INTO outbox VALUES (41, 'lc/s/d/alerts/restock/depletion/milk', '{\"seq\":41}', 1, 1, 1.0);"
        "UPDATE sqlite_sequence SET seq = 45 WHERE name = 'outbox';"
    )
    box.commit()
    box.close()


def fdatasyncs_of_a_first_start(tmp_path: Path) -> int:
    folder = tmp_path / "count"
    folder.mkdir()
    write_v1(folder)
    out = tmp_path / "strace.txt"
    code = f"from edge.state import StateStore\nStateStore({str(folder / 'state.db')!r})"
    cmd = ["strace", "-f", "-c", "-e", "trace=fdatasync", "-o", str(out), sys.executable, "-c", code]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60, cwd=ROOT)
    line = next(ln for ln in out.read_text().splitlines() if ln.rstrip().endswith("fdatasync"))
    return int(line.split()[3])


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (make test installs it)")
def test_the_upgrade_from_0_1_killed_at_every_fsync_is_retried_until_done_and_imported_once(tmp_path):
    total = fdatasyncs_of_a_first_start(tmp_path)
    for k in range(1, total + 1):
        folder = tmp_path / f"k{k}"
        folder.mkdir()
        write_v1(folder)
        code = f"from edge.state import StateStore\nStateStore({str(folder / 'state.db')!r})"
        inject = ["strace", "-f", "-qq", "-o", "/dev/null", f"-einject=fdatasync:signal=SIGKILL:when={k}"]
        killed = subprocess.run(
            [*inject, sys.executable, "-c", code], capture_output=True, timeout=60, cwd=ROOT
        )
        assert killed.returncode != 0, f"fdatasync #{k} was not reached"
        with StateStore(folder / "state.db") as state:  # the next start finishes the upgrade
            assert state.totals() == Counts({("lane", "in", "apple"): 7, ("lane", "out", "milk"): 2}), k
            assert state.alert_state() == {"alert:depletion:milk": {"estimate": 3, "raised": True}}, k
            bodies = [json.loads(m.payload) for m in state.outbox.pending(100)]
        imported = [b for b in bodies if b["seq"] in (40, 41)]
        assert [b["seq"] for b in imported] == [40, 41], f"kill at fdatasync #{k}: imported {imported}"
        assert all(b.get("epoch") for b in bodies), f"kill at fdatasync #{k}: a message without an epoch"
        assert not (folder / "counts.db").exists() and (folder / "counts.db.migrated").exists()

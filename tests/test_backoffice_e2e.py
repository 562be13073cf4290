"""End to end with real devices: two ``lanecount-edge run`` daemons count synthetic recordings and publish
into a real Mosquitto; a real collector stores it all; the per-hour figures equal both videos' truth."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("jsonschema_rs")
pytest.importorskip("train.synth_video", reason="renders the recordings (the train extra)")

import yaml
from bo_util import BROKER_EXTRA, CollectorProc, wait_for_rows
from broker import Broker, mosquitto_binary, validate
from conftest import DEMO_ONNX, ROOT

from backoffice import queries
from backoffice import tables as t
from backoffice.db import make_engine

pytestmark = pytest.mark.broker
SCHEMA = {
    "counts": "counts",
    "crossing": "crossing",
    "epoch": "epoch",
    "alert": "alert",
    "cmd_result": "command_result",
}


def _config(tmp: Path, name: str, device: str, source: Path, line: dict, port: int) -> Path:
    cfg = {
        "site": "store-e2e",
        "device": device,
        "state_dir": str(tmp / f"state-{device}"),
        "source": {"type": "file", "path": str(source), "loop": False},
        "model": {"path": str(DEMO_ONNX)},
        "counting": {"lines": [line]},
        "alerts": {
            "depletion": [
                {"product": "banana", "stock": 3, "threshold": 1, "line": "lane", "direction": "in"}
            ]
        },
        "mqtt": {"host": "127.0.0.1", "port": port, "publish_period_s": 1.0, "status_period_s": 2.0},
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_all(configs: list[Path]) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "run", "--config", str(c)], cwd=ROOT, stderr=subprocess.PIPE
        )
        for c in configs
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode(errors="replace")[-2000:]


def test_two_real_daemons_figures_equal_the_videos_truth(tmp_path):
    from train.synth_video import render_video

    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (make system-deps installs it)")
    videos = {}
    for device, seed in (("lane-a", 10), ("lane-b", 12)):
        out = tmp_path / device
        videos[device] = (out / "video.mp4", render_video(out, 10, seed))
    truth = {
        dev: Counter(
            {
                (ln, d, c): n
                for ln, by in v[1]["lines"].items()
                for d, per in by.items()
                for c, n in per.items()
            }
        )
        for dev, v in videos.items()
    }
    assert all(sum(c.values()) for c in truth.values())
    broker = Broker(binary, persistence=True, extra=BROKER_EXTRA)
    broker.start()
    db = str(tmp_path / "bo.db")
    col = CollectorProc(broker, db, tmp_path / "collector.log", "bo-e2e").start().ready()
    try:
        lines = {dev: v[1]["line"] for dev, v in videos.items()}
        _run_all([_config(tmp_path, f"{d}.yaml", d, videos[d][0], lines[d], broker.port) for d in videos])
        # One run each: a clean stop (the end of the recording) reports the open counts period.
        engine = make_engine(db)
        events = sum(sum(c.values()) for c in truth.values())
        assert wait_for_rows(engine, events, 60, t.crossings) == events, col.text()[-2000:]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                stored = sum(r.n for r in queries.counts(conn, site="store-e2e", since=0, until=4e9).rows)
            if stored >= events:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # the last status and alert messages
        assert col.term() == 0
    finally:
        col.kill()
        broker.close()
    with engine.connect() as conn:
        for dev in videos:
            res = queries.counts(conn, site="store-e2e", device=dev, since=0, until=4e9)
            assert res.spans == [] and all(r.exact for r in res.rows)
            per_hour = Counter({(int(r.start), r.line, r.direction, r.class_name): r.n for r in res.rows})
            crossed = queries.crossings(conn, site="store-e2e", device=dev, limit=10_000)
            # Every hour's figure equals the device's own crossing events in that hour ...
            assert per_hour == Counter(
                (int(e.ts // 3600) * 3600, e.line, e.direction, e.class_name) for e in crossed
            )
            # ... and, over the run, the video's ground truth, class by class.
            totals: Counter = Counter()
            for (_, ln, d, c), n in per_hour.items():
                totals[(ln, d, c)] += n
            assert totals == truth[dev], dev
        assert [e.state for e in queries.epochs(conn, site="store-e2e")] == ["new", "new"]
        assert all(d.status == "offline" and d.model_version for d in queries.devices(conn, site="store-e2e"))
        assert queries.gaps(conn) == []
        assert conn.execute(t.conflicts.select()).first() is None
        assert conn.execute(t.rejected.select()).first() is None
        for kind, payload in conn.execute(
            t.messages.select().with_only_columns(t.messages.c.kind, t.messages.c.payload)
        ):
            validate(SCHEMA[kind], json.loads(payload))  # python-jsonschema: a second, independent validator

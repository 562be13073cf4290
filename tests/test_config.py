"""Config validation: typed models, unknown keys rejected, errors that name the field and its line."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge.config import EdgeConfig, load_config, parse_config, require_for_run
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "edge" / "config.example.yaml"
UNIT = ROOT / "edge" / "systemd" / "lanecount-edge.service"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "edge.yaml")
    return err.value.problems


def test_example_is_valid_and_runnable() -> None:
    cfg = load_config(EXAMPLE)
    require_for_run(cfg, str(EXAMPLE))
    assert cfg.counting.lines[0].name == "lane"


def _fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, info in model.model_fields.items():
        out.add(name)
        ann = info.annotation
        for sub in (*getattr(ann, "__args__", ()), ann):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                out |= _fields(sub)
            for inner in getattr(sub, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    out |= _fields(inner)
    return out


def test_example_documents_every_option() -> None:
    text = EXAMPLE.read_text()
    missing = sorted(f for f in _fields(EdgeConfig) if f"{f}:" not in text)
    assert not missing, f"options missing from config.example.yaml: {missing}"


def test_unknown_key_is_rejected_with_its_line() -> None:
    problems = _problems("site: s1\ncounting:\n  lines: []\n  hysteresis: 4\n")
    assert problems == ["edge.yaml:4: counting.hysteresis: Extra inputs are not permitted"]


def test_wrong_type_names_field_and_line() -> None:
    problems = _problems("tracking:\n  hit_counter_max: many\n")
    assert len(problems) == 1 and problems[0].startswith("edge.yaml:2: tracking.hit_counter_max:")


def test_nested_list_error_points_at_the_line_entry() -> None:
    text = "counting:\n  lines:\n    - name: a\n      start: [0, 0]\n      end: [0, 0]\n"
    (problem,) = _problems(text)
    assert problem.startswith("edge.yaml:") and "start and end are the same point" in problem


def test_every_problem_is_reported_not_only_the_first() -> None:
    problems = _problems("site: 'bad site'\nbackend:\n  conf: 2\n")
    assert len(problems) == 2
    assert any(p.startswith("edge.yaml:1: site:") for p in problems)
    assert any(p.startswith("edge.yaml:3: backend.conf:") for p in problems)


def test_broken_yaml_gives_a_line() -> None:
    (problem,) = _problems("site: [unclosed\n")
    assert problem.startswith("edge.yaml:") and "not valid YAML" in problem


def test_a_key_given_twice_is_an_error_at_both_lines() -> None:
    # Plain YAML keeps the last one: a second state_dir silently moved the state.
    problems = _problems("state_dir: /var/lib/a\nsite: s\nstate_dir: /tmp/b\nmqtt:\n  host: a\n  host: b\n")
    assert problems == [
        "edge.yaml:3: state_dir: duplicate key (first at line 1); YAML would silently keep only the last one",
        "edge.yaml:6: mqtt.host: duplicate key (first at line 5); YAML would silently keep only the last one",
    ]


def test_a_key_given_twice_inside_a_list_entry_names_the_entry() -> None:
    text = "counting:\n  lines:\n    - name: a\n      start: [0, 0]\n      end: [1, 1]\n      name: b\n"
    (problem,) = _problems(text)
    assert problem.startswith("edge.yaml:6: counting.lines.0.name: duplicate key (first at line 3)")


def test_duplicate_keys_and_type_errors_are_reported_together() -> None:
    problems = _problems("site: a\nsite: b\nbackend:\n  conf: 2\n")
    assert [p.split(": ")[:2] for p in problems] == [["edge.yaml:2", "site"], ["edge.yaml:4", "backend.conf"]]


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("lanecount/#", "wildcard '#'"),
        ("shop/+/lanecount", "wildcard '+'"),
        ("/lanecount", "starts or ends with '/'"),
        ("lanecount/", "starts or ends with '/'"),
        ("lane//count", "empty level"),
        ("''", "empty level"),
        ("$SYS/lanecount", "starts with '$'"),
    ],
)
def test_a_prefix_that_cannot_be_published_to(prefix: str, why: str) -> None:
    (problem,) = _problems(f"mqtt:\n  host: b\n  prefix: {prefix}\n")
    assert problem.startswith("edge.yaml:3: mqtt.prefix: topic prefix ") and why in problem


def test_a_prefix_with_levels_is_fine() -> None:
    assert parse_config("mqtt: {prefix: chain/lanecount}").mqtt.prefix == "chain/lanecount"


def test_replay_needs_only_counting() -> None:
    cfg = parse_config("counting: {lines: [{name: lane, start: [320, 0], end: [320, 480]}]}")
    assert cfg.tracking.distance == "iou" and cfg.model is None
    with pytest.raises(ConfigError, match="model: required for run"):
        require_for_run(cfg, "edge.yaml")


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: 0\n")
    run = [sys.executable, "-m", "edge.cli", "check-config"]
    res = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {bad}:2: mqtt.port: Input should be greater than or equal to 1"
    ]
    assert "Traceback" not in res.stderr
    # The example is a template: its model and lines are good, its recording is for the user to supply.
    example = subprocess.run([*run, str(EXAMPLE)], capture_output=True, text=True)
    assert example.returncode == 2
    assert example.stderr.strip().splitlines() == [
        f"error: {EXAMPLE}:12: source.path: {EXAMPLE.parent / 'recordings' / 'lane-03.mp4'} is not a file"
    ]
    ok = subprocess.run([*run, "--replay", str(EXAMPLE)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run([*run, str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert missing.returncode == 2 and "cannot read config" in missing.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=", "User=lanecount"):
        assert key in text
    # verify checks that ExecStart exists: point it at this interpreter for the check only.
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/lanecount/venv/bin/lanecount-edge", sys.executable))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "lanecount-edge.service" not in res.stderr, res.stderr


def _unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this interpreter (systemd-analyze checks that it exists)."""
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/lanecount/venv/bin/lanecount-edge", sys.executable))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_exposure_is_low(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for key in (
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "DevicePolicy=closed",
        "DeviceAllow=char-video4linux rw",
        "DeviceAllow=/dev/nvmap rw",
        "ProtectKernelLogs=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
    ):
        assert key in text, key
    res = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(_unit_copy(tmp_path))],
        capture_output=True,
        text=True,
    )
    if "--offline" in res.stderr:
        pytest.skip(f"this systemd-analyze cannot score a unit file offline: {res.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert match, res.stdout + res.stderr
    # 5.9 MEDIUM before the capability, syscall, device and /proc restrictions; 1.6 OK with them.
    assert float(match.group(1)) <= 2.0, res.stdout


def _syscalls(unit_text: str) -> set[str]:
    """The syscalls the unit's SystemCallFilter= lines allow, expanded by systemd-analyze itself."""

    def expand(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True)
        names = (line.split()[0] for line in out.stdout.splitlines()[1:] if line.split())
        return set().union(*(expand(n) for n in names if not n.startswith("#")))

    allowed: set[str] = set()
    for value in re.findall(r"^SystemCallFilter=(.*)$", unit_text, flags=re.M):
        deny = value.startswith("~")
        names = set().union(*(expand(n) for n in value.removeprefix("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or shutil.which("strace") is None,
    reason="needs systemd-analyze and strace",
)
def test_the_daemon_stays_within_the_units_syscall_filter(tmp_path: Path, mosquitto) -> None:
    # systemd is not PID 1 here, so the filter is checked the other way round: every syscall a real run
    # makes (ONNX Runtime, OpenCV, SQLite, MQTT, the metrics server) must be one the unit allows.
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (640, 480))
    for i in range(15):
        writer.write(np.full((480, 640, 3), i * 10, np.uint8))
    writer.release()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    config = tmp_path / "edge.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nsource: {{type: file, path: v.avi}}\n"
        f"model: {{path: {ROOT / 'edge' / 'models' / 'demo.onnx'}}}\nmetrics_port: {metrics_port}\n"
        f"mqtt: {{host: {mosquitto.host}, port: {mosquitto.port}}}\n"
        "counting: {lines: [{name: lane, start: [320, 480], end: [320, 0]}]}\n"
    )
    counts = tmp_path / "syscalls.txt"
    run = [sys.executable, "-m", "edge.cli", "run", "--config", str(config)]
    res = subprocess.run(
        ["strace", "-f", "-qq", "-c", "-o", str(counts), *run], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in counts.read_text().splitlines()]
    used = {r[-1] for r in rows if len(r) >= 5 and r[-1] not in ("syscall", "total") and r[0][0].isdigit()}
    assert {"openat", "ioctl", "connect", "fdatasync"} <= used  # the table was read
    if os.geteuid() == 0:
        # SQLite hands its -wal/-shm files to the database's owner only when it runs as root
        # (robust_fchown); the unit runs as User=lanecount, and SQLite ignores a failure anyway.
        used.discard("fchown")
    assert used - _syscalls(UNIT.read_text()) == set()

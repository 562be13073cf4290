"""``lanecount-edge`` as a user runs it (``python -m edge.cli``): exit codes, one-line errors, no tracebacks.

The daemon itself (``run``) is exercised end to end in tests/test_daemon.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from edge import __version__


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_version():
    res = cli("version")
    assert (res.returncode, res.stdout.strip()) == (0, __version__)


def test_check_config_accepts_the_example():
    # --replay: the example's recording is the user's to supply (tests/test_config.py checks the run checks).
    res = cli("check-config", "--replay", "edge/config.example.yaml")
    assert res.returncode == 0, res.stderr
    assert "ok (site store-042, device lane-03, lines: lane)" in res.stdout


def test_check_config_reports_every_problem_with_its_line(tmp_path):
    bad = tmp_path / "lane.yaml"
    bad.write_text('site: "a b"\nbackend:\n  type: trt\n')
    res = cli("check-config", str(bad))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2, res.stderr
    assert lines[0].startswith(f"error: {bad}:1: site:")
    assert lines[1].startswith(f"error: {bad}:3: backend.type:")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param((), "Usage", id="no-arguments"),
        pytest.param(("run",), "Missing option '--config'", id="missing-option"),
        pytest.param(("run", "--config", "x.yaml", "--bogus"), "No such option", id="unknown-option"),
        pytest.param(("frobnicate",), "No such command", id="unknown-command"),
    ],
)
def test_usage_errors_exit_2_without_a_traceback(args, expected):
    res = cli(*args)
    assert res.returncode == 2
    assert expected in res.stdout + res.stderr
    assert "Traceback" not in res.stderr


def test_bad_log_level_is_one_line(tmp_path):
    res = cli("run", "--config", str(tmp_path / "missing.yaml"), "--log-level", "verbose")
    assert res.returncode == 2
    assert res.stderr.strip() == "error: --log-level: 'verbose' is not one of DEBUG, INFO, WARNING, ERROR"


def test_missing_config_file_is_one_line(tmp_path):
    res = cli("run", "--config", str(tmp_path / "missing.yaml"), "--log-level", "debug")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing.yaml'}: cannot read config: No such file or directory"
    ]


def test_stats_of_a_missing_tracks_file_is_one_line(tmp_path):
    res = cli("stats", str(tmp_path / "nothing.txt"))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: "), res.stderr

"""stats reads fps and class names from the run's tracks.json; synth-video's edge.yaml runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    # one 45-frame track of class 1 and one 10-frame track of class 0
    rows = [f"{f},1,0,0,5,5,1.0,1,-1,-1\n" for f in range(1, 46)]
    rows += [f"{f},2,9,9,5,5,1.0,0,-1,-1\n" for f in range(1, 11)]
    (tmp_path / "tracks.txt").write_text("".join(rows))
    return tmp_path


def test_stats_reads_fps_and_names_from_the_sidecar(run_dir: Path) -> None:
    (run_dir / "tracks.json").write_text(json.dumps({"fps": 15.0, "names": ["apple", "milk"], "source": "x"}))
    res = _edge("stats", str(run_dir))
    assert res.returncode == 0, res.stderr
    sidecar = run_dir / "tracks.json"
    assert res.stdout.splitlines()[0] == f"fps: 15 ({sidecar}); class names: {sidecar}"
    assert "45 frames ( 3.0 s)" in res.stdout  # 45 frames at 15 fps, not at 30
    assert "milk" in res.stdout and "apple" in res.stdout
    assert "long (> 3 s):       0" in res.stdout and "short (< 1 s):      1" in res.stdout


def test_command_line_overrides_the_sidecar(run_dir: Path) -> None:
    (run_dir / "tracks.json").write_text(json.dumps({"fps": 15.0, "names": ["apple", "milk"]}))
    res = _edge("stats", str(run_dir / "tracks.txt"), "--fps", "45", "--names", "a,b")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "fps: 45 (--fps); class names: --names"
    assert "45 frames ( 1.0 s)" in res.stdout and " b " in res.stdout and "milk" not in res.stdout


def test_without_metadata_it_says_what_it_assumed(run_dir: Path) -> None:
    res = _edge("stats", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert (
        res.stdout.splitlines()[0] == "fps: 30 (default, no run metadata); class names: none: class ids shown"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "tracks.json:1: not valid JSON"),
        ('{"fps": 0}', "tracks.json: fps: expected a positive number, got 0"),
        ('{"fps": 10, "names": "apple"}', "tracks.json: names: expected a list of class names"),
    ],
)
def test_a_broken_sidecar_is_one_line(run_dir: Path, text: str, message: str) -> None:
    (run_dir / "tracks.json").write_text(text)
    res = _edge("stats", str(run_dir))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr


def test_synth_video_edge_yaml_runs_as_it_is(tmp_path: Path) -> None:
    pytest.importorskip("tqdm", reason="the video renderer needs the demo or train extra")
    video = tmp_path / "video"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "train.cli",
            "synth-video",
            "--out",
            str(video),
            "--seconds",
            "8",
            "--seed",
            "3",
        ],
        check=True,
        capture_output=True,
    )
    config = video / "edge.yaml"
    res = _edge("check-config", str(config))
    assert res.returncode == 0, res.stderr
    assert "lines: lane" in res.stdout
    run = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # a folder unrelated to the video: every path in edge.yaml must hold anyway
    )
    assert run.returncode == 0, run.stderr
    tracks = (video / "run" / "tracks.txt").read_text().splitlines()
    assert tracks  # the demo model found and tracked the products on the belt

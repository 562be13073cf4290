"""The one validation pass of ``run`` (edge/validate.py): every check, with the line of the field it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DEMO_ONNX, ROOT

from edge.config import load_config
from edge.errors import ConfigError
from edge.model import load_model_info
from edge.validate import probe_frame_size, run_problems, validate_for_run

EXAMPLE = ROOT / "edge" / "config.example.yaml"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _video(path: Path, size: tuple[int, int] = (640, 480), frames: int = 3) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, size)
    for _ in range(frames):
        writer.write(np.zeros((size[1], size[0], 3), np.uint8))
    writer.release()
    return path


@pytest.fixture
def lane(tmp_path: Path) -> Path:
    """A runnable config on a real 640x480 video and the demo model; tests append or replace lines."""
    _video(tmp_path / "lane.avi")
    return tmp_path


def _config(folder: Path, body: str = "", *, lines: str | None = None) -> Path:
    counting = lines or "    - {name: lane, start: [320, 480], end: [320, 0]}\n"
    text = (
        f"state_dir: {folder / 'state'}\n"
        "source: {type: file, path: lane.avi}\n"
        f"model: {{path: {DEMO_ONNX}}}\n"
        "mqtt: {enabled: false}\n"
        "counting:\n"
        "  lines:\n"
        f"{counting}"
        f"{body}"
    )
    path = folder / "edge.yaml"
    path.write_text(text)
    return path


def _problems(path: Path, **kwargs: object) -> list[str]:
    problems, _ = run_problems(load_config(path), path, **kwargs)  # type: ignore[arg-type]
    return problems


def test_a_good_config_passes_and_yields_the_model(lane: Path) -> None:
    path = _config(lane)
    info = validate_for_run(load_config(path), path)
    assert info.names[:2] == ("apple", "orange")
    assert _problems(path) == []


def test_a_line_class_the_model_lacks(lane: Path) -> None:
    path = _config(
        lane,
        lines="    - name: lane\n      start: [320, 480]\n      end: [320, 0]\n"
        "      classes: [apple, appel]\n",
    )
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:10: counting.lines.0.classes: 'appel' is not a class of the model")
    assert "apple, orange, banana" in problem


def test_a_misspelt_depletion_product_and_an_unknown_occupancy_product(lane: Path) -> None:
    body = (
        "alerts:\n"
        "  depletion:\n"
        "    - {product: milk_cartn, stock: 10, threshold: 2}\n"
        "  occupancy:\n"
        "    - {product: bread, zone: [[0, 0], [100, 0], [100, 100]], min_count: 1}\n"
    )
    problems = _problems(_config(lane, body))
    fields = [p.split(": ", 2)[1] for p in problems]
    assert fields == ["alerts.depletion.0.product", "alerts.occupancy.0.product"]
    assert problems[0].startswith(f"{lane / 'edge.yaml'}:10:") and "'milk_cartn' is not a" in problems[0]
    assert problems[1].startswith(f"{lane / 'edge.yaml'}:12:") and "'bread'" in problems[1]


def test_a_backend_class_id_beyond_the_model(lane: Path) -> None:
    (problem,) = _problems(_config(lane, "backend: {classes: [0, 6]}\n"))
    assert ":8: backend.classes: class id 6 is not in the model (ids 0..5)" in problem


def test_a_product_with_two_rules_of_one_kind(lane: Path) -> None:
    body = (
        "alerts:\n"
        "  depletion:\n"
        "    - {product: apple, stock: 10, threshold: 2}\n"
        "    - {product: banana, stock: 10, threshold: 2}\n"
        "    - {product: apple, stock: 5, threshold: 1, line: lane}\n"
    )
    (problem,) = _problems(_config(lane, body))
    assert problem.startswith(f"{lane / 'edge.yaml'}:12: alerts.depletion.2.product: a second depletion rule")
    assert "alerts.depletion.0" in problem


def test_a_line_outside_the_video_frame(lane: Path) -> None:
    lines = (
        "    - {name: inside, start: [320, 480], end: [320, 0]}\n"
        "    - {name: across, start: [-100, 240], end: [2000, 240]}\n"  # reaches past both edges: fine
        "    - {name: beyond, start: [1500, 0], end: [1500, 1080]}\n"  # drawn for a 1920x1080 camera
    )
    (problem,) = _problems(_config(lane, lines=lines))
    assert problem.startswith(f"{lane / 'edge.yaml'}:9: counting.lines.2.start: line 'beyond'")
    assert "outside the 640x480 frame" in problem


def test_frame_size_given_by_the_caller_wins(lane: Path) -> None:
    path = _config(lane, lines="    - {name: lane, start: [1500, 0], end: [1500, 1080]}\n")
    assert _problems(path, frame_size=(1920, 1080)) == []
    assert len(_problems(path)) == 1


def test_a_zone_outside_the_frame(lane: Path) -> None:
    body = (
        "alerts:\n"
        "  occupancy:\n"
        "    - {product: apple, zone: [[700, 0], [900, 0], [900, 100]], min_count: 1}\n"
        "    - {product: banana, zone: [[600, 0], [900, 0], [900, 100]], min_count: 1}\n"
    )
    (problem,) = _problems(_config(lane, body))
    assert ": alerts.occupancy.0.zone: the zone of 'apple' lies outside the 640x480 frame" in problem


def test_frame_size_of_each_source_kind(tmp_path: Path) -> None:
    from edge.config import SourceConfig

    _video(tmp_path / "v.avi", size=(320, 240))
    assert probe_frame_size(SourceConfig(type="file", path="v.avi"), tmp_path) == (320, 240)
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "b.png"), np.zeros((10, 20, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((30, 40, 3), np.uint8))
    assert probe_frame_size(SourceConfig(type="images", path=str(tmp_path / "imgs"))) == (40, 30)
    assert probe_frame_size(SourceConfig(type="csi", width=1920, height=1080)) == (1920, 1080)
    assert probe_frame_size(SourceConfig(type="rtsp", url="rtsp://cam/1")) is None
    assert probe_frame_size(SourceConfig(type="file", path=str(tmp_path / "missing.mp4"))) is None


def test_a_usb_camera_line_is_checked_against_its_requested_size(lane: Path) -> None:
    path = _config(lane, lines="    - {name: lane, start: [700, 0], end: [700, 480]}\n")
    text = path.read_text().replace("{type: file, path: lane.avi}", "{type: usb, width: 640, height: 480}")
    path.write_text(text)
    (problem,) = _problems(path)
    assert "counting.lines.0.start: line 'lane'" in problem


def test_a_missing_source_file(lane: Path) -> None:
    path = _config(lane)
    path.write_text(path.read_text().replace("lane.avi", "lane-03.mp4"))
    (problem,) = _problems(path)
    assert problem == f"{path}:2: source.path: {lane / 'lane-03.mp4'} is not a file"


def test_a_missing_tls_file_is_named(lane: Path) -> None:
    (lane / "ca.pem").write_text("not checked here, only that it is there\n")
    body = f"  tls: {{ca_certs: {lane / 'ca.pem'}, certfile: {lane / 'client.pem'}}}\n"
    path = _config(lane)
    path.write_text(path.read_text().replace("mqtt: {enabled: false}\n", "") + "mqtt:\n  host: b\n" + body)
    (problem,) = _problems(path)
    assert problem == f"{path}:9: mqtt.tls.certfile: TLS file {lane / 'client.pem'} does not exist"


@pytest.mark.parametrize("secret", ["password: s3cret", "password_file: mqtt-password"])
def test_a_password_without_a_username(lane: Path, secret: str) -> None:
    path = _config(lane)
    path.write_text(path.read_text().replace("mqtt: {enabled: false}", f"mqtt:\n  host: b\n  {secret}"))
    (problem,) = _problems(path)
    key = secret.split(":")[0]
    assert problem == f"{path}:6: mqtt.{key}: mqtt.{key} is set but mqtt.username is not: set the username"
    path.write_text(path.read_text().replace("host: b", "username: u"))
    assert _problems(path) == []


@pytest.mark.parametrize(
    ("section", "loc"),
    [
        ("output: {video: '{bad}/out.mp4'}\n", "output.video"),
        ("output: {frames_dir: '{bad}/frames'}\n", "output.frames_dir"),
        ("output: {tracks: '{bad}/deeper/tracks.txt'}\n", "output.tracks"),
    ],
)
def test_an_output_that_cannot_be_written(lane: Path, section: str, loc: str) -> None:
    bad = lane / "a-file"
    bad.write_text("")
    (problem,) = _problems(_config(lane, section.replace("{bad}", str(bad))))
    assert problem.startswith(f"{lane / 'edge.yaml'}:8: {loc}: cannot write {bad}/")
    assert f"{bad} is a file, not a directory" in problem


def test_a_state_dir_that_is_a_file(lane: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    path = _config(lane)
    (lane / "state").write_text("")
    (problem,) = _problems(path)
    assert problem == f"{path}:1: state_dir: cannot write {lane / 'state'}: it is not a directory"


@pytest.mark.skipif(IS_ROOT, reason="root may write anywhere; the file-under-a-file cases run everywhere")
def test_an_output_folder_without_permission(lane: Path) -> None:
    locked = lane / "locked"
    locked.mkdir(mode=0o500)
    (problem,) = _problems(_config(lane, f"output: {{video: {locked / 'out.mp4'}}}\n"))
    assert problem.endswith(f"permission denied to create it in {locked}")


def test_a_missing_model_and_its_metadata(lane: Path) -> None:
    path = _config(lane)
    path.write_text(path.read_text().replace(str(DEMO_ONNX), "models/nope.onnx"))
    (problem,) = _problems(path)
    assert problem == f"{path}:3: model.path: {lane / 'models' / 'nope.onnx'}: model file not found"
    (lane / "bare.onnx").write_bytes(DEMO_ONNX.read_bytes())
    (lane / "bare.json").write_text('{"imgsz": 320}')  # metadata without names
    path.write_text(path.read_text().replace("models/nope.onnx", "bare.onnx"))
    (problem,) = _problems(path)
    assert ": model.path: " in problem and "no class names" in problem


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their mode")
def test_an_unreadable_model(lane: Path) -> None:
    model = lane / "m.onnx"
    model.write_bytes(DEMO_ONNX.read_bytes())
    (lane / "m.json").write_text(DEMO_ONNX.with_suffix(".json").read_text())
    model.chmod(0)
    path = _config(lane)
    path.write_text(path.read_text().replace(str(DEMO_ONNX), "m.onnx"))
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:3: model.path: cannot read") and "ermission denied" in problem


def test_an_os_error_while_reading_the_model_is_a_problem_not_a_crash(
    lane: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root (these tests' user here) reads any file, so the daemon user's EACCES is raised by a stand-in.
    def unreadable(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/opt/models/m.onnx")

    monkeypatch.setattr("edge.validate.load_model_info", unreadable)
    path = _config(lane)
    (problem,) = _problems(path)
    assert problem == f"{path}:3: model.path: cannot read /opt/models/m.onnx: Permission denied"


def test_a_loaded_model_is_reused_and_every_problem_is_reported_at_once(lane: Path) -> None:
    info = load_model_info(load_config(_config(lane)).model)  # type: ignore[arg-type]
    (lane / "f").write_text("")
    body = "alerts:\n  depletion:\n    - {product: kiwi, stock: 1, threshold: 0}\n"
    body += f"output: {{tracks: {lane}/f/t}}\n"
    path = _config(lane, body)
    path.write_text(path.read_text().replace(str(DEMO_ONNX), "not-read-when-given.onnx"))
    with pytest.raises(ConfigError) as err:
        validate_for_run(load_config(path), path, model=info)
    assert [p.split(": ")[1] for p in err.value.problems] == ["alerts.depletion.0.product", "output.tracks"]


def test_run_needs_model_and_source(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("counting: {lines: []}\n")
    with pytest.raises(ConfigError) as err:
        validate_for_run(load_config(path), path)
    assert err.value.problems == [f"{path}: model: required for run", f"{path}: source: required for run"]


def test_check_config_runs_the_same_checks(lane: Path) -> None:
    body = "alerts:\n  depletion:\n    - {product: milk_cartn, stock: 10, threshold: 2}\n"
    bad = _config(lane, body)
    cmd = [sys.executable, "-m", "edge.cli", "check-config"]
    res = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, cwd=lane)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"error: {bad}:10: alerts.depletion.0.product: 'milk_cartn' is not a class")
    assert "Traceback" not in res.stderr
    good = _config(lane)
    res = subprocess.run([*cmd, str(good)], capture_output=True, text=True, cwd=lane)
    assert res.returncode == 0, res.stderr
    version = json.loads(DEMO_ONNX.with_suffix(".json").read_text())["version"]  # the committed model's
    assert res.stdout.strip() == f"{good}: ok (site site, device device, lines: lane, model {version})"
    # --replay checks only what replay needs: the missing recording does not matter there.
    res = subprocess.run([*cmd, "--replay", str(EXAMPLE)], capture_output=True, text=True, cwd=lane)
    assert res.returncode == 0, res.stderr

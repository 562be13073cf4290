"""lanecount-export onnx: a real Ultralytics export whose JSON the edge runtime loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.backends import create_detector
from edge.config import BackendConfig, ModelConfig
from edge.model import load_model_info
from export.cli import ExportError, export_onnx


def test_missing_weights_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"nope\.pt: weights file not found"):
        export_onnx(tmp_path / "nope.pt", tmp_path / "m.onnx", 64)
    cmd = [sys.executable, "-m", "export.cli", "onnx", str(tmp_path / "nope.pt")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "weights file not found" in res.stderr


def test_usage_error_is_a_message_not_a_traceback() -> None:
    res = subprocess.run([sys.executable, "-m", "export.cli", "onnx"], capture_output=True, text=True)
    assert res.returncode == 2 and "Missing argument" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_exported_model_loads_in_the_edge_runtime(tmp_path: Path) -> None:
    from ultralytics import YOLO

    weights = tmp_path / "tiny.pt"
    YOLO("yolov8n.yaml").save(str(weights))  # untrained: only shapes and metadata matter here
    out = export_onnx(weights, tmp_path / "out" / "tiny.onnx", imgsz=64, version="1.2.3")
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["imgsz"] == 64 and meta["version"] == "1.2.3" and len(meta["names"]) == 80
    info = load_model_info(ModelConfig(path=str(out)))
    assert info.names == tuple(meta["names"]) and info.version == "1.2.3" and info.sha256 == meta["sha256"]
    det = create_detector(BackendConfig(device="cpu", conf=0.99), info)
    assert len(det.detect(np.zeros((48, 64, 3), np.uint8))) == 0  # runs end to end

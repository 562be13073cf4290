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


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A yolov8n trained for one epoch on 16 synthetic images at 64 px (the checkpoint records its data)."""
    from train.fit import FitOptions, fit
    from train.synth import write_dataset

    tmp = tmp_path_factory.mktemp("tiny")
    data = write_dataset(tmp / "data", 16, seed=5)
    opts = FitOptions(
        model="yolov8n.yaml",
        epochs=1,
        imgsz=64,
        batch=4,
        device="cpu",
        workers=0,
        project=str(tmp),
        plots=False,
    )
    return fit(data, opts).best


@pytest.mark.slow
def test_onnx_export_checks_parity_with_the_pytorch_model(tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    cmd = [sys.executable, "-m", "export.cli", "onnx", str(tiny_weights), "--imgsz", "64", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "parity on 3 image(s)" in res.stdout and "same detections" in res.stdout  # the 3 val images
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["parity"]["max_abs_diff"] < 1e-2 and meta["weights_sha256"] and meta["imgsz"] == 64
    import onnx as onnx_lib

    model = onnx_lib.load(str(out))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]


@pytest.mark.slow
def test_parity_catches_an_onnx_model_that_differs(tiny_weights: Path, tmp_path: Path) -> None:
    import onnx as onnx_lib
    from onnx import numpy_helper
    from ultralytics import YOLO

    from export.parity import check_parity, sample_images

    out = export_onnx(tiny_weights, tmp_path / "tiny.onnx", imgsz=64, opset=17)
    model = onnx_lib.load(str(out))
    # Push every class logit up: the ONNX model now "sees" products everywhere.
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    bias_names = {convs[name].input[2] for name in convs if "/cv3." in name and name.endswith(".2/Conv")}
    for init in model.graph.initializer:
        if init.name in bias_names:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 20, init.name))
    onnx_lib.save(model, str(out))
    torch_model = YOLO(str(tiny_weights)).model
    parity = check_parity(
        torch_model, out, 64, sample_images(None, tiny_weights.parents[2] / "data" / "data.yaml")
    )
    assert parity.max_abs_diff > 0.5 and parity.mismatches

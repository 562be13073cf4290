"""lanecount-export int8: real ONNX Runtime quantization of the demo model, calibrated and gated on a real
synthetic dataset (``lanecount-train synth``), then run by the real daemon from a signed bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import test_bundle as shared

from edge.detections import Detections
from export.bundle import SigningError, bundle_models
from export.dataset import Sample, balanced_by_class, load_split
from export.metrics import _match, _summarize

keys = shared.keys  # the signing key pair and the conveyor video, as in the bundle tests
conveyor = shared.conveyor


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """150 synthetic images (seed 3: not the demo model's training seed 7): 30 in val."""
    from train.synth import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data"), 150, 3)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory, dataset: Path, demo_model: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("int8") / "demo.int8.onnx"
    cmd = [sys.executable, "-m", "export.cli", "int8", str(demo_model), "--data", str(dataset)]
    res = subprocess.run(
        [*cmd, "--out", str(out), "--calib", "32"], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return out, res.stdout


def test_int8_of_the_demo_model_passes_the_gate_with_a_per_class_table(
    int8_model: tuple[Path, str], dataset: Path
) -> None:
    out, stdout = int8_model
    names = json.loads((Path(__file__).parent.parent / "edge/models/demo.json").read_text())["names"]
    rows = {line.split()[0]: line.split() for line in stdout.splitlines() if line.split()}
    assert set(names) <= set(rows) and "all" in rows and "PASS" in stdout
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["gate"]["passed"] and side["gate"]["drop"] <= 1.0
    assert side["metrics"]["split"] == "val" and side["metrics_fp32"]["map50_95"] > 0.9
    assert float(rows["all"][3]) == pytest.approx(side["metrics"]["map50_95"], abs=1e-4)
    calib = side["calibration"]
    assert calib["images"] == len(calib["files"]) == 32 and all(
        f.startswith("train_") for f in calib["files"]
    )
    # What stays FP32: the seven head output convolutions, the DFL and the decode.
    kept = side["kept_fp32"]
    assert {f"/model.22/cv{b}.{i}/cv{b}.{i}.2/Conv" for b in (2, 3) for i in range(3)} <= set(kept)
    assert "/model.22/dfl/conv/Conv" in kept and not any(".0/" in k and "cv2.0.0" in k for k in kept)
    graph = onnx.load(str(out))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 13
    dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"]
    per_channel = [n for n in dq if any(a.name == "axis" for a in n.attribute)]
    assert len(per_channel) >= 50, "weights must be quantized per output channel"


def test_a_gate_that_must_fail_does_and_bundle_refuses_the_model(
    tmp_path: Path, dataset: Path, demo_model: Path, keys: tuple[Path, Path]
) -> None:
    out = tmp_path / "head.int8.onnx"
    cmd = [
        sys.executable,
        "-m",
        "export.cli",
        "int8",
        str(demo_model),
        "--data",
        str(dataset),
        "--out",
        str(out),
    ]
    res = subprocess.run(
        [*cmd, "--calib", "16", "--quantize-head"], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAIL" in res.stdout and res.stderr.strip().splitlines()[-1].startswith("INT8 gate failed")
    assert not json.loads(out.with_suffix(".json").read_text())["gate"]["passed"]
    with pytest.raises(SigningError, match="no passed accuracy gate recorded"):
        bundle_models(demo_model, tmp_path / "x.lcb", keys[0], int8=out)


@pytest.mark.slow
def test_the_daemon_runs_the_int8_variant_of_a_bundle_and_counts_the_truth(
    tmp_path: Path, int8_model: tuple[Path, str], demo_model: Path, keys: tuple[Path, Path], conveyor, caplog
) -> None:
    manifest = bundle_models(demo_model, tmp_path / "demo.lcb", keys[0], int8=int8_model[0])
    int8_entry = next(v for v in manifest["variants"] if v["precision"] == "int8")
    assert int8_entry["metrics"]["split"] == "val" and "metrics" in manifest["variants"][0]
    model = {"path": str(tmp_path / "demo.lcb"), "public_key": str(keys[1])}
    with caplog.at_level("INFO", logger="edge.model"):
        counted, daemon = shared._run_daemon(tmp_path / "run", conveyor, model, backend={"precision": "int8"})
    assert "running demo.int8.onnx (INT8 ONNX model on ONNX Runtime" in caplog.text
    assert daemon.model.path.name == "demo.int8.onnx"  # type: ignore[attr-defined]
    assert counted == conveyor[1]["lines"]


def test_calibration_images_are_balanced_by_class(dataset: Path) -> None:
    train = load_split(dataset, "train")
    picked = balanced_by_class(train, 24, seed=0)
    assert len(picked) == len({s.image for s in picked}) == 24
    per_class = Counter(int(c) for s in picked for c in set(s.classes.tolist()))
    assert len(per_class) == 6 and min(per_class.values()) >= 4  # every class in several images
    assert balanced_by_class(train, 24, seed=0) == picked  # recorded and reproducible


def test_map_is_one_for_perfect_boxes_and_drops_at_strict_ious_for_shifted_ones() -> None:
    s = Sample(
        Path("x.jpg"), np.array([0, 1]), np.array([[0.25, 0.25, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]], np.float32)
    )
    exact = Detections(
        np.array([[30, 30, 70, 70], [120, 120, 160, 160]], np.float32), np.array([0.9, 0.8]), np.array([0, 1])
    )
    score = _summarize([_match(exact, s, (200, 200))], [s], ["a", "b"])
    # 0.995, not 1: the trapezoid over 101 recall points ending at (1, 0), exactly as Ultralytics reports.
    assert score.map50 == pytest.approx(0.995) and score.map50_95 == pytest.approx(0.995)
    shifted = Detections(exact.xyxy + np.float32(6), exact.confidence, exact.class_id)  # IoU 0.58
    score = _summarize([_match(shifted, s, (200, 200))], [s], ["a", "b"])
    assert score.map50 == pytest.approx(0.995) and score.map50_95 == pytest.approx(0.199)
    wrong_class = Detections(exact.xyxy, exact.confidence, np.array([1, 0]))
    assert _summarize([_match(wrong_class, s, (200, 200))], [s], ["a", "b"]).map50 == 0.0

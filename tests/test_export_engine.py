"""lanecount-export engine up to the TensorRT boundary.

TensorRT is the one thing that cannot run here (no GPU, no JetPack): the command must say so in one line
with exit 2 and print the equivalent ``trtexec`` command; everything before the builder call (flags,
workspace, timing cache, file naming, metadata, the bundle entry, the check against ONNX Runtime) is
tested with real files and the real ONNX Runtime. The real build is tested where ``tensorrt`` imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import test_bundle as shared

from edge.backends import create_detector
from edge.bundle import DeviceGPU, read_bundle, select_variant
from edge.config import BackendConfig, ModelConfig
from edge.detections import Detections
from edge.model import load_model_info
from export.bundle import bundle_models
from export.engine import (
    EngineError,
    build_settings,
    check_onnx_for,
    compare_detections,
    engine_filename,
    engine_metadata,
    trtexec_command,
    write_metadata,
)

ORIN = DeviceGPU("Orin", "8.7", "10.3.0")
keys = shared.keys  # the bundle tests' signing key pair


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_has_tensorrt(), reason="tensorrt is importable here: the real build is tested instead")
def test_without_tensorrt_engine_says_so_in_one_line_and_prints_trtexec(
    tmp_path: Path, demo_model: Path
) -> None:
    cmd = [sys.executable, "-m", "export.cli", "engine", str(demo_model), "--precision", "fp16"]
    res = subprocess.run(
        [*cmd, "--timing-cache", str(tmp_path / "tc")], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "Python module 'tensorrt' not importable" in res.stderr
    assert res.stdout.split()[:2] == ["trtexec", f"--onnx={demo_model}"]
    assert "--fp16" in res.stdout and f"--timingCacheFile={tmp_path / 'tc'}" in res.stdout


def test_int8_needs_the_qdq_model_and_fp16_the_float_one(tmp_path: Path, demo_model: Path) -> None:
    with pytest.raises(EngineError, match="no Q/DQ nodes"):
        check_onnx_for("int8", demo_model)
    check_onnx_for("fp16", demo_model)
    with pytest.raises(EngineError, match="not fp16 or int8"):
        build_settings("int4", 1024, None)
    cmd = [sys.executable, "-m", "export.cli", "engine", str(demo_model), "--precision", "int8"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no Q/DQ nodes" in res.stderr and res.stderr.count("\n") == 1


def test_builder_settings_and_the_equivalent_trtexec(tmp_path: Path) -> None:
    fp16 = build_settings("fp16", 512, None)
    assert fp16.flags == ("FP16",) and fp16.workspace_bytes == 512 << 20
    int8 = build_settings("int8", 2048, tmp_path / "t.cache")
    assert int8.flags == ("INT8", "FP16")  # the layers the QDQ model keeps in float run in FP16
    cmd = trtexec_command(Path("m.int8.onnx"), Path("out dir/m.engine"), int8)
    assert cmd == (
        "trtexec --onnx=m.int8.onnx '--saveEngine=out dir/m.engine' --int8 --fp16 "
        f"--memPoolSize=workspace:2048M --timingCacheFile={tmp_path / 't.cache'}"
    )


def test_engine_names_and_metadata_carry_gpu_tensorrt_and_precision_into_the_bundle(
    tmp_path: Path,
    demo_model: Path,
    keys: tuple[Path, Path],
) -> None:
    assert engine_filename(demo_model, ORIN, "fp16") == "demo.orin.sm87.trt10.3.0.fp16.engine"
    agx = DeviceGPU("NVIDIA Jetson AGX Orin", "8.7", "10.3.0")
    assert (
        engine_filename(Path("demo.int8.onnx"), agx, "int8")
        == "demo.jetson-agx-orin.sm87.trt10.3.0.int8.engine"
    )
    # A stand-in for a built plan (TensorRT cannot run here); bundle and selection only read its metadata.
    engine = tmp_path / engine_filename(demo_model, ORIN, "fp16")
    engine.write_bytes(b"serialized plan bytes")
    meta_in = json.loads(demo_model.with_suffix(".json").read_text())
    write_metadata(engine, engine_metadata(meta_in, ORIN, "fp16", demo_model, {}))
    meta = json.loads(engine.with_suffix(".json").read_text())
    assert (meta["gpu"], meta["compute_capability"], meta["tensorrt"], meta["precision"]) == (
        "Orin",
        "8.7",
        "10.3.0",
        "fp16",
    )
    assert meta["names"] == meta_in["names"] and meta["imgsz"] == 320 and meta["source_onnx"] == "demo.onnx"
    bundle_models(demo_model, tmp_path / "demo.lcb", keys[0], engines=(engine,))
    b = read_bundle(tmp_path / "demo.lcb", keys[1])
    entry = next(v for v in b.variants if v["kind"] == "engine")
    assert entry == {
        "file": engine.name,
        "kind": "engine",
        "precision": "fp16",
        "gpu": "Orin",
        "compute_capability": "8.7",
        "tensorrt": "10.3.0",
    }
    assert select_variant(b, precision=None, gpu=ORIN)[0] == entry
    assert select_variant(b, precision=None, gpu=DeviceGPU("Orin", "8.7", "10.4.0"))[0]["kind"] == "onnx"


def test_the_check_against_onnx_runtime_finds_moved_boxes(tmp_path: Path, demo_model: Path) -> None:
    from train.synth import write_dataset

    write_dataset(tmp_path / "data", 6, seed=3)
    frames = [(p.name, cv2.imread(str(p))) for p in sorted((tmp_path / "data" / "images").rglob("*.jpg"))]
    info = load_model_info(ModelConfig(path=str(demo_model)))
    cfg = BackendConfig(type="onnxruntime", device="cpu")
    with create_detector(cfg, info) as ref, create_detector(cfg, info) as same:
        agreement = compare_detections(ref, same, frames)
        assert agreement.detections >= 6 and not agreement.unmatched

        class Moved:
            """A TensorRT stand-in whose boxes are 8 px off (what a broken engine would do)."""

            def __init__(self) -> None:
                self.cfg = ref.cfg

            def detect(self, frame: np.ndarray) -> Detections:
                d = ref.detect(frame)
                return Detections(d.xyxy + np.float32(8), d.confidence, d.class_id)

        moved = compare_detections(ref, Moved(), frames)
        assert moved.detections == agreement.detections and len(moved.unmatched) >= 2


@pytest.mark.tensorrt
def test_a_real_fp16_engine_builds_and_matches_onnx_runtime(tmp_path: Path, demo_model: Path) -> None:
    pytest.importorskip("tensorrt", reason="needs JetPack's tensorrt (a Jetson or an NVIDIA GPU)")
    out = tmp_path / "demo.fp16.engine"
    cmd = [
        sys.executable,
        "-m",
        "export.cli",
        "engine",
        str(demo_model),
        "--precision",
        "fp16",
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (
        "detections match" in res.stdout
        and json.loads(out.with_suffix(".json").read_text())["precision"] == "fp16"
    )

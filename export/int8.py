"""Explicit INT8: a QDQ ONNX model (what TensorRT 10 builds INT8 engines from, and ONNX Runtime runs on CPU).

Steps (:func:`quantize_int8`):

1. The FP32 model is converted to opset 17 when older: per-channel weight scales need
   ``DequantizeLinear``'s ``axis`` attribute (opset ≥ 13).
2. Calibration images are picked from the *training* split, balanced by class
   (:func:`export.dataset.balanced_by_class`), letterboxed exactly as the daemon does, and their list is
   recorded in the sidecar JSON.
3. ONNX Runtime's static quantization writes Q/DQ pairs: weights per output channel (symmetric INT8),
   activations per tensor (MinMax over the calibration images).

Quantized: every Conv and the operators between them (SiLU's Sigmoid and Mul, C2f's Split/Concat, the
neck's Add, Resize and MaxPool; :data:`OP_TYPES`), so tensors stay INT8 from one convolution to the next.

What stays in floating point, and why (:func:`head_nodes`): the Detect module after the first two 3×3
convolutions of each branch: the last 1×1 convolutions (``cv2.*.2`` box distances, ``cv3.*.2`` class
logits), the DFL convolution and the decode (softmax, the box arithmetic, the final concat). Their
outputs are not activations but numbers: the box branch emits 4×16 logits whose softmax expectation is a
distance in grid cells, and the class logits go through a sigmoid where the 0.25 confidence threshold
sits on its steep part; the final concat joins pixel coordinates (0-320) with scores (0-1), which one
INT8 scale cannot hold. Quantizing the seven head convolutions cost 1.9 mAP50-95 points on the demo
model; quantizing the decode too destroys it (``--quantize-head`` reproduces that, the gate's failing
case). Keeping them costs 7 of 64 convolutions.

The gate (:func:`gate`) scores FP32 and INT8 on the val split through the edge runtime and fails when
mAP50-95 drops by more than ``max_drop`` points.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.config import ModelConfig
from edge.errors import LanecountError
from edge.model import ModelInfo, file_sha256, load_model_info
from edge.yolo import letterbox
from export.dataset import Sample, balanced_by_class, load_split
from export.metrics import Score, score_model

__all__ = ["GateResult", "gate", "head_nodes", "quantize_int8"]

# The head's output convolutions and the decode after them (see the module docstring): everything in
# the Detect module except the two 3x3 conv blocks of each branch.
_BRANCH_STEM = re.compile(r"/cv[23]\.\d+/cv[23]\.\d+\.[01]/")
# Conv alone leaves every SiLU (Sigmoid·Mul), C2f Split/Concat and the neck's Add/Resize/MaxPool in float
# with a dequantize/quantize pair around each: 1.45-1.5x. Quantizing them too keeps tensors INT8 from
# one convolution to the next (QLinearSigmoid, QLinearMul, QLinearConcat): 1.6-1.7x, same accuracy.
OP_TYPES = ("Conv", "Mul", "Sigmoid", "Add", "Concat", "MaxPool", "Resize", "Split")
MIN_OPSET = 13
TARGET_OPSET = 17


class Int8Error(LanecountError):
    """The model cannot be quantized as asked."""


def to_opset(src: Path, dst: Path, opset: int = TARGET_OPSET) -> Path:
    """Write ``src`` converted to ``opset`` at ``dst`` (a copy when it is that new already)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current < opset:
        model = version_converter.convert_version(model, opset)
    onnx.save(model, str(dst))
    return dst


class _Calibration:
    """ONNX Runtime ``CalibrationDataReader``: the letterboxed calibration images, one at a time."""

    def __init__(self, samples: list[Sample], imgsz: int, input_name: str) -> None:
        self._iter = self._blobs(samples, imgsz, input_name)

    @staticmethod
    def _blobs(samples: list[Sample], imgsz: int, input_name: str) -> Iterator[dict[str, npt.NDArray[Any]]]:
        import cv2

        for s in samples:
            img = cv2.imread(str(s.image))
            if img is None:
                raise Int8Error(f"{s.image}: unreadable calibration image")
            blob, _ = letterbox(np.asarray(img, np.uint8), imgsz)
            yield {input_name: blob}

    def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
        return next(self._iter, None)

    def rewind(self) -> None:  # pragma: no cover - only for multi-pass calibrators
        raise NotImplementedError


def head_nodes(model_path: Path, op_types: tuple[str, ...] = OP_TYPES) -> list[str]:
    """The Detect module's nodes that stay in floating point: all but the branches' first two convs."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    dfl = next((n.name for n in graph.node if "/dfl/" in n.name), None)
    if dfl is None:
        raise Int8Error(f"{model_path}: no DFL node: not a YOLOv8 detection export")
    detect = dfl[: dfl.index("/dfl/") + 1]  # e.g. /model.22/
    return [
        n.name
        for n in graph.node
        if n.op_type in op_types and n.name.startswith(detect) and not _BRANCH_STEM.search(n.name)
    ]


def quantize_int8(
    model: Path,
    data_yaml: Path,
    out: Path,
    *,
    calib: int = 64,
    keep_head_fp32: bool = True,  # False only to show what the gate catches
    op_types: tuple[str, ...] = OP_TYPES,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the QDQ INT8 model ``out``; return what was done (calibration list, kept nodes).

    Raises:
        Int8Error: the dataset has no training images, or quantization fails.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    info = load_model_info(ModelConfig(path=str(model)))
    samples = balanced_by_class(load_split(data_yaml, "train"), calib, seed)
    with tempfile.TemporaryDirectory(prefix="lanecount-int8-") as tmp:
        src = _prepare(to_opset(info.path, Path(tmp) / "opset.onnx"), Path(tmp) / "pre.onnx")
        keep = head_nodes(src, op_types) if keep_head_fp32 else []
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            quantize_static(
                str(src),
                str(out),
                _Calibration(samples, info.imgsz, _input_name(src)),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                nodes_to_exclude=keep,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        except Exception as exc:  # onnxruntime raises untyped errors
            raise Int8Error(f"{model}: quantization failed: {str(exc).splitlines()[0][:200]}") from None
    return {
        "calibration": {
            "split": "train",
            "images": len(samples),
            "balanced_by_class": True,
            "method": "minmax",
            "files": [s.image.name for s in samples],
        },
        "quantized_op_types": list(op_types),
        "kept_fp32": keep,
        "per_channel": True,
        "opset": TARGET_OPSET,
    }


def _prepare(src: Path, dst: Path) -> Path:
    """ONNX Runtime's recommended pre-processing: shape inference and graph fusions before calibration."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst))
    return dst


def _input_name(path: Path) -> str:
    import onnx

    return str(onnx.load(str(path), load_external_data=False).graph.input[0].name)


@dataclass(frozen=True)
class GateResult:
    """FP32 and INT8 scores on the val split, and the verdict."""

    fp32: Score
    int8: Score
    max_drop: float

    @property
    def drop(self) -> float:
        """mAP50-95 lost, in points (percent)."""
        return (self.fp32.map50_95 - self.int8.map50_95) * 100

    @property
    def passed(self) -> bool:
        """Whether INT8 is within ``max_drop`` points of FP32."""
        return self.drop <= self.max_drop + 1e-9

    def table(self) -> str:
        """FP32 vs INT8, overall and per class."""
        head = ("class", "boxes", "fp32 50-95", "int8 50-95", "delta", "fp32 50", "int8 50")
        rows = ["{:<14}{:>6}  {:>10} {:>10} {:>7}  {:>8} {:>8}".format(*head)]
        for a, b in zip(self.fp32.classes, self.int8.classes, strict=True):
            rows.append(_row(a.name, a.boxes, a.map50_95, b.map50_95, a.map50, b.map50))
        boxes = sum(c.boxes for c in self.fp32.classes)
        rows.append(
            _row("all", boxes, self.fp32.map50_95, self.int8.map50_95, self.fp32.map50, self.int8.map50)
        )
        verdict = "PASS" if self.passed else "FAIL"
        rows.append(
            f"gate: mAP50-95 drop {self.drop:.2f} points (max {self.max_drop:g}) on {self.fp32.images} val "
            f"images: {verdict}"
        )
        return "\n".join(rows)


def _row(name: str, boxes: int, f50_95: float, i50_95: float, f50: float, i50: float) -> str:
    delta = (i50_95 - f50_95) * 100
    return f"{name:<14}{boxes:>6}  {f50_95:>10.4f} {i50_95:>10.4f} {delta:>+7.2f}  {f50:>8.4f} {i50:>8.4f}"


def gate(fp32: ModelInfo, int8: ModelInfo, data_yaml: Path, max_drop: float) -> GateResult:
    """Score both models on the val split with ONNX Runtime."""
    val = load_split(data_yaml, "val")
    return GateResult(score_model(fp32, val), score_model(int8, val), max_drop)


def write_sidecar(out: Path, fp32: ModelInfo, report: dict[str, Any], result: GateResult) -> Path:
    """``M.int8.json``: the edge metadata (names, imgsz, version) plus calibration and both metrics."""
    meta = {
        "name": out.stem,
        "version": fp32.version,
        "imgsz": fp32.imgsz,
        "names": list(fp32.names),
        "precision": "int8",
        "source_model": fp32.path.name,
        "source_sha256": fp32.sha256,
        "sha256": file_sha256(out),
        "metrics": result.int8.as_dict("val"),
        "metrics_fp32": result.fp32.as_dict("val"),
        "gate": {"max_drop": result.max_drop, "drop": round(result.drop, 3), "passed": result.passed},
        **report,
    }
    path = out.with_suffix(".json")
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path

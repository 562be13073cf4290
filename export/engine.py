"""TensorRT engines from the ONNX models, built on the device they will run on (TensorRT 10 Python API).

An engine is tied to the GPU (compute capability) and the exact TensorRT version that built it, so both
go into its file name and its sidecar JSON (which ``bundle`` copies into the manifest and
:func:`edge.bundle.select_variant` matches against the device)::

    demo.orin.sm87.trt10.3.0.fp16.engine  +  demo.orin.sm87.trt10.3.0.fp16.json

Precisions: ``fp16`` builds from the FP32 ONNX model with the FP16 flag; ``int8`` builds from the QDQ
model of ``lanecount-export int8`` (explicit quantization: TensorRT takes the scales from the Q/DQ
nodes, no calibrator), with FP16 also allowed so the layers the QDQ model keeps in float run in FP16
rather than FP32. After the build the engine is checked against ONNX Runtime on sample images through
the edge backends (same detections; mAP delta on val when a dataset is given).

Everything up to the TensorRT calls (names, builder settings, the ``trtexec`` equivalent, metadata) is
plain Python and tested here; the build itself needs a Jetson (or any NVIDIA GPU) with TensorRT.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.bundle import DeviceGPU
from edge.errors import BackendUnavailable, LanecountError

__all__ = [
    "BuildSettings",
    "EngineError",
    "build_settings",
    "engine_filename",
    "engine_metadata",
    "require_tensorrt",
    "trtexec_command",
]

TRT_MISSING = (
    "engine: Python module 'tensorrt' not importable (install JetPack's python3-libnvinfer, "
    "or run the trtexec command printed above on the device)"
)


class EngineError(LanecountError):
    """An engine cannot be built or does not match its ONNX model."""


@dataclass(frozen=True)
class BuildSettings:
    """What the builder config gets: flags, workspace and timing cache."""

    precision: str
    flags: tuple[str, ...]  # trt.BuilderFlag names
    workspace_bytes: int
    timing_cache: Path | None


def build_settings(precision: str, workspace_mb: int, timing_cache: Path | None) -> BuildSettings:
    """The builder flags for ``precision`` (``int8`` also allows FP16 for the layers kept in float)."""
    flags = {"fp16": ("FP16",), "int8": ("INT8", "FP16")}.get(precision)
    if flags is None:
        raise EngineError(f"--precision: {precision!r} is not fp16 or int8")
    return BuildSettings(precision, flags, workspace_mb << 20, timing_cache)


def check_onnx_for(precision: str, onnx_path: Path) -> None:
    """INT8 needs the QDQ model; FP16 needs the float one (a QDQ model would silently build INT8)."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    qdq = "QuantizeLinear" in ops and "DequantizeLinear" in ops
    if precision == "int8" and not qdq:
        raise EngineError(
            f"{onnx_path}: no Q/DQ nodes: --precision int8 builds from the output of `lanecount-export int8`"
        )
    if precision == "fp16" and qdq:
        raise EngineError(
            f"{onnx_path}: a QDQ (INT8) model: build --precision int8 from it, fp16 from the FP32 model"
        )


def engine_filename(onnx_path: Path, gpu: DeviceGPU, precision: str) -> str:
    """``<stem>.<gpu>.sm<cc>.trt<version>.<precision>.engine``; a QDQ model's ``.int8`` is not repeated."""
    stem = onnx_path.stem.removesuffix(".int8")
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-") or "gpu"
    slug = slug.removeprefix("nvidia-")
    cc = gpu.compute_capability.replace(".", "")
    return f"{stem}.{slug}.sm{cc}.trt{gpu.tensorrt}.{precision}.engine"


def trtexec_command(onnx_path: Path, out: Path, settings: BuildSettings) -> str:
    """The ``trtexec`` command that builds the same engine on a device without Python TensorRT."""
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={out}"]
    args += [f"--{flag.lower()}" for flag in settings.flags]
    args.append(f"--memPoolSize=workspace:{settings.workspace_bytes >> 20}M")
    if settings.timing_cache is not None:
        args.append(f"--timingCacheFile={settings.timing_cache}")
    return shlex.join(args)


def engine_metadata(
    onnx_meta: dict[str, Any], gpu: DeviceGPU, precision: str, onnx_path: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """The engine's sidecar JSON: the edge metadata, the build target, and what it was built from."""
    from edge.model import file_sha256

    return {
        "name": onnx_meta.get("name"),
        "version": onnx_meta.get("version"),
        "imgsz": onnx_meta.get("imgsz"),
        "names": onnx_meta.get("names"),
        "precision": precision,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "tensorrt": gpu.tensorrt,
        "source_onnx": onnx_path.name,
        "source_sha256": file_sha256(onnx_path),
        **extra,
    }


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`BackendUnavailable` with one line saying what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(TRT_MISSING) from None
    return trt


def build_engine(
    onnx_path: Path, out: Path, settings: BuildSettings
) -> Path:  # pragma: no cover - needs a GPU
    """Parse the ONNX model and build a serialized engine with the TensorRT 10 builder."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT cannot parse it: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    for flag in settings.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    cache_path = settings.timing_cache
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(
            f"{onnx_path}: TensorRT failed to build a {settings.precision} engine (see its log above)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(plan))
    if cache_path is not None:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return out


def write_metadata(out: Path, meta: dict[str, Any]) -> Path:
    """``E.json`` beside ``E.engine`` (edge metadata + target): ``bundle`` and the daemon read it."""
    path = out.with_suffix(".json")
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class Agreement:
    """How the engine's detections agree with ONNX Runtime's on the sample images."""

    images: int
    detections: int  # the reference's, above the margin
    unmatched: list[str]  # one line per disagreement

    def summary(self, label: str) -> str:
        """One line for the console."""
        verdict = "detections match" if not self.unmatched else f"{len(self.unmatched)} disagreement(s)"
        return f"{label} vs ONNX Runtime on {self.images} image(s), {self.detections} detection(s): {verdict}"


def compare_detections(
    reference: Any,
    candidate: Any,
    frames: list[tuple[str, Any]],
    *,
    min_iou: float = 0.9,
    margin: float = 0.05,
) -> Agreement:
    """Match each confident detection of one detector to one of the other's (same class, IoU ≥ ``min_iou``).

    A detection within ``margin`` of the confidence threshold may legitimately appear in only one of
    them (FP16/INT8 kernels round differently); every other one must have a partner, both ways.
    """
    from export.metrics import iou_matrix

    unmatched: list[str] = []
    total = 0
    for label, frame in frames:
        a, b = reference.detect(frame), candidate.detect(frame)
        conf = reference.cfg.conf + margin
        for x, y, who in ((a, b, "only ONNX Runtime"), (b, a, "only the engine")):
            sure = x.confidence >= conf
            total += int(sure.sum()) if who == "only ONNX Runtime" else 0
            iou = iou_matrix(x.xyxy[sure], y.xyxy) * (x.class_id[sure][:, None] == y.class_id[None, :])
            lost = int((iou.max(axis=1, initial=0.0) < min_iou).sum()) if len(iou) else 0
            if lost:
                unmatched.append(f"{label}: {lost} detection(s) {who} finds")
    return Agreement(len(frames), total, unmatched)

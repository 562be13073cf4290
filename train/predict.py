"""Run a detector on images, a folder or a video and look at the result (the notebook's baseline step).

``lanecount-train predict MODEL SOURCE`` draws each detection (class and confidence) on a copy of every
image, or on every frame of a video, and writes all detections to ``detections.json`` and
``detections.csv``. Each still image is detected on its own: nothing is tracked from one photo to the
next, and nothing waits for a track to be confirmed (unlike ``lanecount-edge run`` on a folder).

The detector is the edge daemon's: ONNX Runtime for ``.onnx`` (the same pre/post-processing as on the
device), Ultralytics for ``.pt``.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.backends import Detector, create_detector
from edge.config import BackendConfig, ModelConfig
from edge.detections import Detections
from edge.model import ModelInfo, file_sha256, load_model_info
from train.fit import TrainError
from train.layout import IMAGE_EXTS, list_images

__all__ = ["VIDEO_EXTS", "PredictError", "PredictResult", "default_out", "load_detector", "predict"]

VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})


class PredictError(TrainError):
    """A model or source that predict cannot use, reported in one line."""


@dataclass
class PredictResult:
    """What :func:`predict` wrote.

    Attributes:
        out_dir: the output folder.
        model: the model file; ``version`` its version (metadata, else the start of its SHA-256).
        names: the model's class names.
        images: still images processed; ``frames``: video frames processed.
        per_class: detections per class name over everything.
        outputs: annotated images or videos written.
        json_path, csv_path: the detections files.
    """

    out_dir: Path
    model: Path
    version: str
    names: tuple[str, ...]
    images: int = 0
    frames: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)
    json_path: Path | None = None
    csv_path: Path | None = None


def _pt_info(path: Path, imgsz: int | None) -> ModelInfo:
    """Names and training image size from an Ultralytics checkpoint."""
    from ultralytics import YOLO

    try:
        yolo: Any = YOLO(str(path), task="detect")
    except Exception as exc:  # Ultralytics raises many types for unreadable weights
        raise PredictError(f"{path}: cannot load the model ({type(exc).__name__}: {exc})") from None
    names = yolo.names
    ordered = tuple(str(names[k]) for k in sorted(names)) if isinstance(names, dict) else tuple(names)
    trained = (getattr(yolo, "ckpt", None) or {}).get("train_args", {}).get("imgsz", 640)
    size = imgsz or (trained if isinstance(trained, int) else 640)
    digest = file_sha256(path)
    return ModelInfo(path=path.resolve(), names=ordered, imgsz=size, version=digest[:12], sha256=digest)


def load_detector(
    model: Path, conf: float = 0.25, imgsz: int | None = None, device: str = "auto"
) -> tuple[Detector, ModelInfo]:
    """The edge daemon's detector for ``model`` and its metadata (ONNX Runtime or Ultralytics for .pt).

    Raises:
        PredictError: unknown suffix or a missing file.
        ModelError: the model or its metadata cannot be read.
    """
    suffix = model.suffix.lower()
    if suffix not in (".onnx", ".pt"):
        raise PredictError(f"{model}: expected an .onnx or .pt model, got '{suffix or 'no suffix'}'")
    if not model.is_file():
        raise PredictError(f"{model}: model file not found")
    if suffix == ".onnx":
        info = load_model_info(ModelConfig(path=str(model), imgsz=imgsz))
        backend = BackendConfig(type="onnxruntime", device=device, conf=conf)
    else:
        info = _pt_info(model, imgsz)
        backend = BackendConfig(type="ultralytics", device=device, conf=conf)
    return create_detector(backend, info), info


def _frames(source: Path) -> Iterator[tuple[Path, int | None, np.ndarray | None, float]]:
    """``(file, frame index or None for a still, BGR pixels or None if unreadable, fps)``."""
    if source.is_dir():
        files = list_images(source)
        if not files:
            raise PredictError(f"{source}: no images found (looked for {', '.join(sorted(IMAGE_EXTS))})")
    elif source.suffix.lower() in IMAGE_EXTS:
        files = [source]
    elif source.suffix.lower() in VIDEO_EXTS:
        yield from _video_frames(source)
        return
    else:
        raise PredictError(f"{source}: expected an image, a folder of images or a video")
    for f in files:
        yield f, None, cv2.imread(str(f)), 0.0


def _video_frames(path: Path) -> Iterator[tuple[Path, int | None, np.ndarray | None, float]]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise PredictError(f"{path}: cannot open the video")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 30.0
    index = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield path, index, frame, fps
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise PredictError(f"{path}: the video has no readable frame")


def default_out(model: Path, source: Path, base: Path = Path("runs/predict")) -> Path:
    """``runs/predict/<source>-<model>``, numbered (``-2``, ``-3``...) rather than overwritten."""
    stem = f"{source.stem or source.name}-{model.stem}"
    out, k = base / stem, 1
    while out.exists():
        k += 1
        out = base / f"{stem}-{k}"
    return out


def predict(
    model: Path,
    source: Path,
    out: Path | None = None,
    conf: float = 0.25,
    imgsz: int | None = None,
    device: str = "auto",
) -> PredictResult:
    """Detect on every image (or video frame) of ``source``, draw the boxes, and write the detections.

    Args:
        model: ``.onnx`` or ``.pt`` detector.
        source: an image, a folder of images (recursively) or a video.
        out: output folder (default: :func:`default_out`).
        conf: minimum confidence kept.
        imgsz: network input size (default: the model's).
        device: ``cpu``, ``cuda`` or ``auto``.

    Returns:
        What was written.

    Raises:
        PredictError: a missing or unusable model or source.
    """
    model, source = Path(model), Path(source)
    if not source.exists():
        raise PredictError(f"{source}: no such file or folder")
    det, info = load_detector(model, conf, imgsz, device)
    names, version = info.names, info.version
    out = Path(out) if out is not None else default_out(model, source)
    out.mkdir(parents=True, exist_ok=True)
    result = PredictResult(out, model, version, names)
    records: list[dict[str, Any]] = []
    writer = _VideoOut(out)
    counts: Counter[str] = Counter()
    from edge.annotate import draw_detections

    for file, index, frame, fps in _frames(source):
        rel = file.relative_to(source).as_posix() if source.is_dir() else file.name
        if frame is None:
            records.append({"source": rel, "frame": index, "error": "unreadable image", "detections": []})
            continue
        dets = det.detect(frame)
        dets = dets[dets.confidence >= conf]
        counts.update(_name(names, int(c)) for c in dets.class_id)
        records.append({"source": rel, "frame": index, "size": [frame.shape[1], frame.shape[0]]})
        records[-1]["detections"] = _rows(dets, names)
        drawn = draw_detections(frame, dets, names)
        if index is None:
            target = out / Path(rel).with_suffix(".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), drawn)
            result.outputs.append(target)
            result.images += 1
        else:
            writer.write(file, drawn, fps)
            result.frames += 1
    result.outputs += writer.close()
    result.per_class = dict(counts.most_common())
    result.json_path, result.csv_path = _write_tables(out, model, version, names, conf, records)
    return result


def _name(names: tuple[str, ...], class_id: int) -> str:
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)


def _rows(dets: Detections, names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {
            "class_id": int(c),
            "class": _name(names, int(c)),
            "confidence": round(float(s), 4),
            "box": [round(float(v), 1) for v in box],
        }
        for box, s, c in zip(
            dets.xyxy.tolist(), dets.confidence.tolist(), dets.class_id.tolist(), strict=True
        )
    ]


class _VideoOut:
    """One annotated MP4 per source video, opened at its first frame."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.writers: dict[Path, tuple[cv2.VideoWriter, Path]] = {}

    def write(self, source: Path, frame: np.ndarray, fps: float) -> None:
        if source not in self.writers:
            path = self.out / f"{source.stem}.mp4"
            fourcc = cv2.VideoWriter.fourcc(*"mp4v")
            size = (frame.shape[1], frame.shape[0])
            self.writers[source] = (cv2.VideoWriter(str(path), fourcc, fps, size), path)
        self.writers[source][0].write(frame)

    def close(self) -> list[Path]:
        for writer, _ in self.writers.values():
            writer.release()
        return [path for _, path in self.writers.values()]


def _write_tables(
    out: Path, model: Path, version: str, names: tuple[str, ...], conf: float, records: list[dict[str, Any]]
) -> tuple[Path, Path]:
    meta = {"model": str(model), "version": version, "names": list(names), "conf": conf}
    json_path = out / "detections.json"
    json_path.write_text(json.dumps({**meta, "results": records}, indent=1) + "\n")
    csv_path = out / "detections.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "frame", "class_id", "class", "confidence", "x1", "y1", "x2", "y2"])
        for rec in records:
            frame = "" if rec["frame"] is None else rec["frame"]
            for d in rec["detections"]:
                w.writerow([rec["source"], frame, d["class_id"], d["class"], d["confidence"], *d["box"]])
    return json_path, csv_path

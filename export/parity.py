"""Does the exported ONNX model compute what the PyTorch model computes?

Both models get the same letterboxed blobs (the daemon's :func:`edge.yolo.letterbox`) of sample images; the
check reports the largest difference of the raw ``(1, 4 + nc, anchors)`` outputs and compares the
detections after the daemon's own decode and NMS at the daemon's default thresholds: same number, same
classes, boxes within ``box_tol`` pixels. Sample images come from the dataset the weights were trained on
(the checkpoint records it), or ``--data``; without either, seeded random frames still check the raw
outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.config import BackendConfig
from edge.errors import LanecountError
from edge.yolo import decode, letterbox

__all__ = ["Parity", "ParityError", "check_parity", "sample_images"]

DAEMON = BackendConfig()  # the daemon's default conf/iou/max_det


class ParityError(LanecountError):
    """The ONNX model's outputs differ from the PyTorch model's."""


@dataclass(frozen=True)
class Parity:
    """The comparison over all sample images."""

    images: int
    max_abs_diff: float  # largest raw-output difference (box pixels and class scores alike)
    detections: int  # PyTorch detections after NMS, all images together
    mismatches: list[str]  # one line per image whose detections differ

    def summary(self) -> str:
        """One line for the console."""
        verdict = "same detections" if not self.mismatches else f"{len(self.mismatches)} image(s) differ"
        return (
            f"parity on {self.images} image(s): largest raw-output difference {self.max_abs_diff:.2e}; "
            f"{self.detections} detection(s) at conf {DAEMON.conf}, iou {DAEMON.iou}: {verdict}"
        )


def sample_images(weights_data: str | None, data_yaml: Path | None, n: int = 8) -> list[Path]:
    """Up to ``n`` images of the val (else train) split of ``data_yaml`` or of the training data."""
    from export.dataset import DataError, load_split

    for candidate in (data_yaml, Path(weights_data) if weights_data else None):
        if candidate is None or not candidate.is_file():
            continue
        for split in ("val", "train"):
            try:
                return [s.image for s in load_split(candidate, split)[:n]]
            except DataError:
                continue
    return []


def check_parity(
    torch_model: Any, onnx_path: Path, imgsz: int, images: list[Path], *, box_tol: float = 1.0
) -> Parity:
    """Compare ``torch_model`` (an Ultralytics ``DetectionModel``) with the ONNX file on ``images``."""
    import cv2
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    frames: list[npt.NDArray[np.uint8]] = [np.asarray(cv2.imread(str(p)), np.uint8) for p in images]
    if not frames:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (imgsz, imgsz, 3), np.uint8) for _ in range(2)]
    model = torch_model.float().eval()
    worst, count, mismatches = 0.0, 0, []
    for i, frame in enumerate(frames):
        blob, _ = letterbox(frame, imgsz)
        with torch.no_grad():
            out = model(torch.from_numpy(blob))
        ref = (out[0] if isinstance(out, (list, tuple)) else out).numpy().astype(np.float32)
        got = np.asarray(session.run(None, {name: blob})[0], np.float32)
        if ref.shape != got.shape:
            raise ParityError(f"{onnx_path}: output shape {list(got.shape)} != PyTorch's {list(ref.shape)}")
        worst = max(worst, float(np.abs(ref - got).max()))
        a, b = (
            decode(x, DAEMON.conf, DAEMON.iou, DAEMON.max_det, None, nc=ref.shape[1] - 4) for x in (ref, got)
        )
        count += len(a)
        label = images[i].name if images else f"random frame {i}"
        if len(a) != len(b) or not np.array_equal(a.class_id, b.class_id):
            mismatches.append(f"{label}: PyTorch {len(a)} detection(s), ONNX {len(b)}")
        elif len(a) and float(np.abs(a.xyxy - b.xyxy).max()) > box_tol:
            mismatches.append(f"{label}: a box moved {float(np.abs(a.xyxy - b.xyxy).max()):.2f} px")
    return Parity(len(frames), worst, count, mismatches)

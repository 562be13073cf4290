"""mAP of an ONNX model on a dataset split, through the edge runtime's own detector.

Why not ``train/evaluate.py``: it runs Ultralytics' validator on ``.pt`` weights, and ``export`` must work
where only ``lanecount[export]`` is installed (no torch). Scoring the ONNX file through
:mod:`edge.backends` also measures exactly what the daemon will run: the same letterbox, decode and NMS.
The metric follows Ultralytics/COCO: a prediction is a true positive at IoU threshold t when it matches a
not-yet-matched box of its class with IoU ≥ t (greedy by IoU); AP is the area under the monotone
precision envelope sampled at 101 recall points; mAP50-95 averages t = 0.50, 0.55, …, 0.95.
Predictions are kept down to confidence 0.001 (300 per image, NMS IoU 0.7), as Ultralytics' ``val`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge.backends import create_detector
from edge.config import BackendConfig
from edge.model import ModelInfo
from export.dataset import Sample

__all__ = ["ClassAP", "Score", "iou_matrix", "score_model"]

IOUS = np.linspace(0.5, 0.95, 10)
VAL_BACKEND = BackendConfig(type="onnxruntime", device="cpu", conf=0.001, iou=0.7, max_det=300)


@dataclass(frozen=True)
class ClassAP:
    """One class's row: its number of boxes and AP at 0.5 and 0.5:0.95."""

    name: str
    boxes: int
    map50: float
    map50_95: float


@dataclass(frozen=True)
class Score:
    """A model's mAP on a split, overall and per class."""

    map50: float
    map50_95: float
    classes: list[ClassAP]
    images: int

    def as_dict(self, split: str) -> dict[str, object]:
        """The ``metrics`` entry of a bundle variant."""
        return {"map50_95": round(self.map50_95, 4), "map50": round(self.map50, 4), "split": split}


def score_model(
    model: ModelInfo, samples: list[Sample], threads: int = 0, backend: str = "onnxruntime"
) -> Score:
    """Run ``model`` on every sample (ONNX Runtime, or ``tensorrt`` for an engine); score its detections."""
    cfg = VAL_BACKEND.model_copy(update={"threads": threads, "type": backend})
    with create_detector(cfg, model) as det:
        stats = []
        for s in samples:
            img = _read(s.image)
            stats.append(_match(det.detect(img), s, (img.shape[0], img.shape[1])))
    return _summarize(stats, samples, model.names)


def _read(path: Path) -> npt.NDArray[np.uint8]:
    img = cv2.imread(str(path))
    if img is None:
        raise FileNotFoundError(path)
    return np.asarray(img, np.uint8)


def _gt_xyxy(s: Sample, shape: tuple[int, int]) -> npt.NDArray[np.float32]:
    h, w = shape
    cx, cy, bw, bh = (s.boxes * np.array([w, h, w, h], np.float32)).T
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)


def iou_matrix(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """IoU of every box of ``a`` with every box of ``b`` (``xyxy``), shape ``(len(a), len(b))``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return np.asarray(inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9), np.float32)


_Stat = tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32], npt.NDArray[np.int64]]


def _match(dets: object, s: Sample, shape: tuple[int, int]) -> _Stat:
    """Per prediction: true positive at each IoU threshold, confidence, class."""
    xyxy, conf, cls = dets.xyxy, dets.confidence, dets.class_id  # type: ignore[attr-defined]
    tp = np.zeros((len(xyxy), len(IOUS)), bool)
    if len(xyxy) and len(s.classes):
        gt = _gt_xyxy(s, shape)
        iou = iou_matrix(gt, xyxy) * (s.classes[:, None] == cls[None, :])
        for k, t in enumerate(IOUS):
            gi, pi = np.nonzero(iou >= t)
            if not len(gi):
                continue
            order = np.argsort(-iou[gi, pi], kind="stable")
            gi, pi = gi[order], pi[order]
            _, first_p = np.unique(pi, return_index=True)
            gi, pi = gi[first_p], pi[first_p]
            order = np.argsort(-iou[gi, pi], kind="stable")
            _, first_g = np.unique(gi[order], return_index=True)
            tp[pi[order][first_g], k] = True
    return tp, np.asarray(conf, np.float32), np.asarray(cls, np.int64)


def _summarize(stats: list[_Stat], samples: list[Sample], names: Iterable[str]) -> Score:
    tp = np.concatenate([s[0] for s in stats]) if stats else np.zeros((0, len(IOUS)), bool)
    conf = np.concatenate([s[1] for s in stats]) if stats else np.zeros(0, np.float32)
    cls = np.concatenate([s[2] for s in stats]) if stats else np.zeros(0, np.int64)
    gt_cls = np.concatenate([s.classes for s in samples]) if samples else np.zeros(0, np.int64)
    order = np.argsort(-conf, kind="stable")
    tp, cls = tp[order], cls[order]
    rows = []
    for c, name in enumerate(names):
        n_gt = int((gt_cls == c).sum())
        if n_gt == 0:
            continue
        ap = np.array([_ap(tp[cls == c, k], n_gt) for k in range(len(IOUS))])
        rows.append(ClassAP(name, n_gt, float(ap[0]), float(ap.mean())))
    m50 = float(np.mean([r.map50 for r in rows])) if rows else 0.0
    m = float(np.mean([r.map50_95 for r in rows])) if rows else 0.0
    return Score(m50, m, rows, len(samples))


def _ap(tp: npt.NDArray[np.bool_], n_gt: int) -> float:
    """Area under the precision envelope at 101 recall points (COCO, as Ultralytics computes it)."""
    if not len(tp):
        return 0.0
    tpc = np.cumsum(tp)
    fpc = np.cumsum(~tp)
    recall = tpc / n_gt
    precision = tpc / (tpc + fpc)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    y = np.interp(x, mrec, mpre)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)  # trapezoid rule (np.trapz is gone in numpy 2)

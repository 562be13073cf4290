"""Ultralytics backend: ``YOLO(path).predict`` for a workstation (``.pt``, ``.onnx``, ...).

A convenience for trying a freshly trained ``best.pt`` without exporting it; it needs the ``train``
extra (torch). Ultralytics does its own pre/post-processing, so the timings come from its ``speed``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from ultralytics import YOLO

from edge.backends import register
from edge.backends.base import TIMING_KEYS, Detector, map_inference_errors
from edge.config import BackendConfig
from edge.detections import Detections
from edge.errors import ModelError
from edge.model import ModelInfo

__all__ = ["UltralyticsDetector"]


@register("ultralytics")
class UltralyticsDetector(Detector):
    """YOLO detector running through Ultralytics.

    Raises:
        ModelError: the model cannot be loaded, or its class count differs from the metadata.
    """

    def __init__(self, cfg: BackendConfig, model: ModelInfo) -> None:
        self.cfg = cfg
        self.model = model
        self.names = model.names
        self.timings = dict.fromkeys(TIMING_KEYS, 0.0)
        try:
            self._yolo: Any = YOLO(str(model.path), task="detect")
        except Exception as exc:  # Ultralytics raises assorted errors for unreadable weights
            text = str(exc).strip().splitlines()
            raise ModelError(
                f"{model.path}: Ultralytics cannot load the model: {text[0] if text else exc!r}"
            ) from None
        own = getattr(self._yolo, "names", None)
        if isinstance(own, dict) and own and len(own) != len(model.names):
            raise ModelError(
                f"{model.path.name}: the model has {len(own)} classes "
                f"but the metadata names {len(model.names)}"
            )
        self._device = {"cpu": "cpu", "cuda": "0", "auto": None}[cfg.device]

    def detect(self, frame: npt.NDArray[np.uint8], prepared: Any = None) -> Detections:
        """Run ``YOLO.predict`` on one BGR frame (see :class:`Detector`)."""
        c = self.cfg
        with map_inference_errors("ultralytics"):
            result = self._yolo.predict(
                frame,
                imgsz=self.model.imgsz,
                conf=c.conf,
                iou=c.iou,
                max_det=c.max_det,
                classes=c.classes,
                device=self._device,
                verbose=False,
            )[0]
        self.timings = {k: float(result.speed.get(k, 0.0)) for k in TIMING_KEYS}
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return Detections.empty()
        return Detections(
            boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy().astype(np.int64)
        )

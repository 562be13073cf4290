"""The one interface every detector backend implements, and the YOLO pipeline two of them share.

:class:`Detector` is what the daemon sees: ``detect(frame) -> Detections`` plus ``names``, the last
call's ``timings``, ``warmup()`` and ``close()``. :class:`YoloDetector` implements it for runtimes that
only execute the network (ONNX Runtime, TensorRT): it letterboxes, calls the runtime's ``_infer`` and
decodes with :mod:`edge.yolo`, translating runtime exceptions into :class:`~edge.errors.InferenceError`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.config import BackendConfig
from edge.detections import Detections
from edge.errors import InferenceError, LanecountError
from edge.model import ModelInfo
from edge.yolo import LetterboxInfo, decode, letterbox, scale_boxes

__all__ = ["TIMING_KEYS", "Detector", "Prepared", "YoloDetector", "map_inference_errors"]

TIMING_KEYS = ("preprocess", "inference", "postprocess")


@dataclass(frozen=True)
class Prepared:
    """A frame letterboxed ahead of inference, and how long that took (ms)."""

    blob: npt.NDArray[np.float32]
    info: LetterboxInfo
    imgsz: int
    ms: float


class Detector(ABC):
    """A detector backend.

    Attributes:
        names: class names indexed by class id.
        timings: milliseconds spent by the last :meth:`detect` in ``preprocess``, ``inference`` and
            ``postprocess``.

    Example:
        >>> with create_detector(cfg.backend, load_model_info(cfg.model)) as det:
        ...     det.warmup()
        ...     dets = det.detect(frame)
    """

    names: tuple[str, ...]
    timings: dict[str, float]

    def prepare(self, frame: npt.NDArray[np.uint8]) -> Any:
        """Pre-processing that may run ahead, in another thread; ``None`` when the backend has none.

        Its result goes back in through :meth:`detect`'s ``prepared``; it must not touch the runtime.
        """
        return None

    @abstractmethod
    def detect(self, frame: npt.NDArray[np.uint8], prepared: Any = None) -> Detections:
        """Detect products in one BGR frame; boxes are in frame pixels.

        Raises:
            InferenceError: when the runtime fails on this frame.
        """

    def warmup(self) -> None:
        """Run one inference on a blank frame.

        The first run of a runtime allocates and autotunes; doing it at start-up keeps that second out of
        the first real frame (and out of the watchdog's budget).
        """
        self.detect(np.zeros((480, 640, 3), np.uint8))

    def close(self) -> None:  # noqa: B027 - optional hook; most runtimes free themselves
        """Release the runtime's resources (idempotent)."""

    def __enter__(self) -> Detector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextmanager
def map_inference_errors(backend: str) -> Iterator[None]:
    """Re-raise a runtime's own exception as :class:`InferenceError` naming the backend.

    Our own errors (e.g. a :class:`~edge.errors.ModelError` found while decoding) pass through.
    """
    try:
        yield
    except LanecountError:
        raise
    except Exception as exc:  # runtimes raise untyped errors (RuntimeError, Fail, ...)
        text = str(exc).strip().splitlines()
        raise InferenceError(
            f"{backend}: inference failed: {text[0] if text else type(exc).__name__}"
        ) from exc


class YoloDetector(Detector):
    """A YOLOv8 detector whose runtime only executes the network; pre/post-processing is :mod:`edge.yolo`.

    Subclasses implement :meth:`_infer`, mapping the ``(1, 3, imgsz, imgsz)`` blob to the raw output.
    """

    backend_name = "yolo"

    def __init__(self, cfg: BackendConfig, model: ModelInfo) -> None:
        self.cfg = cfg
        self.model = model
        self.names = model.names
        self.timings = dict.fromkeys(TIMING_KEYS, 0.0)

    @abstractmethod
    def _infer(self, blob: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the network on a letterboxed blob; return its raw ``(1, 4 + nc, A)`` output."""

    def prepare(self, frame: npt.NDArray[np.uint8]) -> Prepared:
        """Letterbox ``frame`` (pure numpy/OpenCV: safe in a reader thread)."""
        t0 = time.perf_counter()
        blob, info = letterbox(frame, self.model.imgsz)
        return Prepared(blob, info, self.model.imgsz, (time.perf_counter() - t0) * 1e3)

    def detect(self, frame: npt.NDArray[np.uint8], prepared: Any = None) -> Detections:
        """Letterbox (unless ``prepared`` ahead), infer, decode, scale back to frame pixels."""
        if not isinstance(prepared, Prepared) or prepared.imgsz != self.model.imgsz:
            prepared = self.prepare(frame)  # none ahead, or made for a model swapped out since
        blob, info = prepared.blob, prepared.info
        t1 = time.perf_counter()
        with map_inference_errors(self.backend_name):
            raw = self._infer(blob)
        t2 = time.perf_counter()
        c = self.cfg
        dets = decode(
            raw, c.conf, c.iou, c.max_det, c.classes, nc=len(self.names), model=self.model.path.name
        )
        dets = scale_boxes(dets, info, frame.shape)
        t3 = time.perf_counter()
        self.timings = {
            "preprocess": prepared.ms,
            "inference": (t2 - t1) * 1e3,
            "postprocess": (t3 - t2) * 1e3,
        }
        return dets

"""YOLOv8 pre- and post-processing in numpy and OpenCV, shared by the ONNX Runtime and TensorRT backends.

No torch: the Jetson installs only the ``edge`` extra. The steps match Ultralytics' own so that a model
gives the same boxes here as in ``YOLO.predict``:

1. :func:`letterbox` resizes keeping the aspect ratio and pads (grey 114, centred) to a square
   ``imgsz``, then packs an NCHW float32 RGB blob in ``[0, 1]``.
2. :func:`decode` turns the raw head output ``(1, 4 + nc, A)`` (``cx, cy, w, h`` and one score per class,
   no objectness) into :class:`~edge.detections.Detections` in network pixels: best class per anchor,
   confidence threshold, class-aware NMS, top ``max_det``.
3. :func:`scale_boxes` maps the boxes back to frame pixels and clips them to the frame.

Example:
    >>> blob, info = letterbox(frame, 320)
    >>> dets = scale_boxes(decode(session.run(None, {"images": blob})[0], nc=6), info, frame.shape)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np
import numpy.typing as npt

from edge.detections import Detections
from edge.errors import ModelError

__all__ = ["PAD_VALUE", "LetterboxInfo", "decode", "letterbox", "scale_boxes"]

PAD_VALUE = 114
# Offset per class id that moves boxes of different classes apart, so one NMS pass is class-aware.
_CLASS_OFFSET = 7680.0
# Like Ultralytics: at most this many boxes enter NMS (the most confident), bounding its cost.
_MAX_NMS = 30000


@dataclass(frozen=True)
class LetterboxInfo:
    """How a frame was fitted into the network input: ``net = frame * scale + pad``.

    Attributes:
        scale: resize factor applied to the frame.
        pad_x: pixels of padding on the left.
        pad_y: pixels of padding on top.
    """

    scale: float
    pad_x: int
    pad_y: int


def letterbox(img: npt.NDArray[np.uint8], size: int) -> tuple[npt.NDArray[np.float32], LetterboxInfo]:
    """Resize ``img`` (BGR, HxWx3) into a ``size`` square, keeping its aspect ratio, padded grey.

    Args:
        img: BGR uint8 frame.
        size: the network's square input size.

    Returns:
        The ``(1, 3, size, size)`` float32 RGB blob in ``[0, 1]`` (C-contiguous) and the
        :class:`LetterboxInfo` that :func:`scale_boxes` needs.

    Raises:
        ValueError: when ``img`` is not an HxWx3 image or ``size`` is not positive.
    """
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"letterbox: expected an HxWx3 BGR image, got shape {img.shape}")
    if size <= 0:
        raise ValueError(f"letterbox: size must be positive, got {size}")
    h, w = img.shape[:2]
    scale = min(size / h, size / w)
    new_w, new_h = round(w * scale), round(h * scale)
    resized = (
        img if (new_w, new_h) == (w, h) else cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    )
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    # The ±0.1 rounding is Ultralytics': an odd padding puts the extra pixel right/bottom.
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    padded = cv2.copyMakeBorder(
        resized, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    blob = cv2.dnn.blobFromImage(padded, scalefactor=1 / 255.0, swapRB=True)
    return np.ascontiguousarray(blob, dtype=np.float32), LetterboxInfo(scale, left, top)


def decode(
    output: npt.NDArray[np.floating],
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 100,
    classes: Sequence[int] | None = None,
    nc: int | None = None,
    model: str = "model",
) -> Detections:
    """Decode a YOLOv8 detection head output into detections in network-input pixels.

    Args:
        output: raw output ``(1, 4 + nc, A)``: per anchor ``cx, cy, w, h`` then ``nc`` class scores.
        conf: keep boxes whose best class score is above this.
        iou: NMS suppresses a box overlapping a better one of the same class by more than this IoU.
        max_det: most detections returned (highest confidence first).
        classes: keep only these class ids (applied to each box's best class, as Ultralytics does).
        nc: expected number of classes; ``None`` trusts the output.
        model: model name for error messages.

    Returns:
        Detections sorted by decreasing confidence.

    Raises:
        ModelError: when the output is not ``(1, 4 + nc, A)``.
    """
    out = np.asarray(output)
    if out.ndim == 3 and out.shape[0] == 1:
        out = out[0]
    if out.ndim != 2 or out.shape[0] < 5:
        raise ModelError(f"{model}: expected a YOLOv8 output of shape (1, 4+nc, anchors), got {output.shape}")
    if nc is not None and out.shape[0] != 4 + nc:
        raise ModelError(
            f"{model}: output has {out.shape[0]} channels ({out.shape[0] - 4} classes) "
            f"but {nc} class names need {4 + nc} (4 box + {nc} classes)"
        )
    scores = out[4:]
    class_id = scores.argmax(axis=0)
    confidence = np.take_along_axis(scores, class_id[None], axis=0)[0]
    keep = confidence > conf
    if classes is not None:
        keep &= np.isin(class_id, np.asarray(classes, dtype=np.int64))
    idx = np.flatnonzero(keep)
    if len(idx) > _MAX_NMS:
        idx = idx[np.argsort(-confidence[idx], kind="stable")[:_MAX_NMS]]
    cxcywh = out[:4, idx].T.astype(np.float32)
    return _nms(_xyxy(cxcywh), confidence[idx].astype(np.float32), class_id[idx], iou, max_det)


def _xyxy(cxcywh: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    half = cxcywh[:, 2:] / 2
    return np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], axis=1)


def _nms(
    xyxy: npt.NDArray[np.float32],
    confidence: npt.NDArray[np.float32],
    class_id: npt.NDArray[np.integer],
    iou: float,
    max_det: int,
) -> Detections:
    """Class-aware greedy NMS in one OpenCV call (boxes of each class shifted apart), top ``max_det``."""
    if len(xyxy) == 0:
        return Detections.empty()
    shifted = xyxy.astype(np.float64) + (class_id.astype(np.float64) * _CLASS_OFFSET)[:, None]
    xywh = np.concatenate([shifted[:, :2], shifted[:, 2:] - shifted[:, :2]], axis=1)
    # score_threshold 0: every candidate already scored above ``conf`` >= 0, so OpenCV drops nothing more.
    kept = np.asarray(
        cv2.dnn.NMSBoxes(xywh, cast(Sequence[float], confidence), 0.0, float(iou)), dtype=np.int64
    ).reshape(-1)
    kept = kept[np.argsort(-confidence[kept], kind="stable")][:max_det]
    return Detections(xyxy[kept], confidence[kept], class_id[kept].astype(np.int64))


def scale_boxes(dets: Detections, info: LetterboxInfo, frame_shape: tuple[int, ...]) -> Detections:
    """Map boxes from network-input pixels back to frame pixels, clipped to the frame.

    Args:
        dets: detections from :func:`decode`.
        info: the letterbox of the frame they were detected in.
        frame_shape: ``frame.shape`` (``h, w[, c]``).

    Returns:
        New detections in frame pixels.
    """
    if len(dets) == 0:
        return dets
    h, w = frame_shape[:2]
    pad = np.array([info.pad_x, info.pad_y, info.pad_x, info.pad_y], dtype=np.float32)
    xyxy = (dets.xyxy - pad) / np.float32(info.scale)
    xyxy = np.clip(xyxy, 0, np.array([w, h, w, h], dtype=np.float32))
    return Detections(xyxy, dets.confidence, dets.class_id, dets.tracker_id)

"""The one data type that flows through the pipeline: boxes, scores, class ids and track ids as arrays.

Every stage takes and returns :class:`Detections` (detector → tracker → counter → publisher), so there
are no positional tuples or ``dict[str, Any]`` records between stages. Objects are never mutated by a
stage; stages return new ones (``dataclasses.replace``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Detections", "box_iou"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if arr.shape != shape:
        raise ValueError(f"Detections.{name}: expected shape {shape}, got {arr.shape}")


@dataclass(frozen=True)
class Detections:
    """Detections of one frame.

    Attributes:
        xyxy: ``(n, 4)`` float32 boxes in frame pixels, ``x1, y1, x2, y2``.
        confidence: ``(n,)`` float32 scores in ``[0, 1]``.
        class_id: ``(n,)`` int64 class ids.
        tracker_id: ``(n,)`` int64 track ids, or ``None`` before tracking.

    Example:
        >>> d = Detections(np.array([[0, 0, 10, 10]]), np.array([0.9]), np.array([2]))
        >>> len(d), d.anchors("bottom_center").tolist()
        (1, [[5.0, 10.0]])
    """

    xyxy: FloatArray
    confidence: FloatArray
    class_id: IntArray
    tracker_id: IntArray | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        n = len(xyxy)
        conf = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        cls = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        _check_shape("confidence", conf, (n,))
        _check_shape("class_id", cls, (n,))
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "confidence", conf)
        object.__setattr__(self, "class_id", cls)
        if self.tracker_id is not None:
            tid = np.asarray(self.tracker_id, dtype=np.int64).reshape(-1)
            _check_shape("tracker_id", tid, (n,))
            object.__setattr__(self, "tracker_id", tid)

    @classmethod
    def empty(cls) -> Detections:
        """Return detections with no boxes."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: slice | npt.NDArray[np.bool_] | npt.NDArray[np.integer] | int) -> Detections:
        """Select rows by boolean mask, integer array, slice or int (an int keeps the array shape)."""
        if isinstance(index, (int, np.integer)):
            index = np.array([index])
        return Detections(
            self.xyxy[index],
            self.confidence[index],
            self.class_id[index],
            None if self.tracker_id is None else self.tracker_id[index],
        )

    def with_tracker_id(self, tracker_id: npt.ArrayLike) -> Detections:
        """Return a copy carrying ``tracker_id``."""
        return replace(self, tracker_id=np.asarray(tracker_id, dtype=np.int64))

    def anchors(self, anchor: str = "bottom_center") -> FloatArray:
        """Return the ``(n, 2)`` anchor point of each box.

        Args:
            anchor: ``center``, ``bottom_center``, ``top_center``, ``center_left`` or ``center_right``.

        Raises:
            ValueError: for an unknown anchor name.
        """
        x1, y1, x2, y2 = self.xyxy.T
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        points = {
            "center": (cx, cy),
            "bottom_center": (cx, y2),
            "top_center": (cx, y1),
            "center_left": (x1, cy),
            "center_right": (x2, cy),
        }
        if anchor not in points:
            raise ValueError(f"unknown anchor {anchor!r}; expected one of {sorted(points)}")
        return np.stack(points[anchor], axis=1).astype(np.float32)

    @property
    def area(self) -> FloatArray:
        """Box areas in square pixels."""
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        return (wh[:, 0] * wh[:, 1]).astype(np.float32)


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Pairwise IoU of two box sets, ``(n, 4)`` and ``(m, 4)`` xyxy → ``(n, m)``."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)

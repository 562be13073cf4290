"""Annotated output: boxes, track ids, classes, the counting lines and the running counts.

The reference notebook's tracked video (step 3.4), as the daemon's optional output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from edge.config import LineConfig, OutputConfig
from edge.counts import class_name
from edge.detections import Detections

__all__ = ["Annotator", "draw", "draw_detections"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _color(key: int) -> tuple[int, int, int]:
    """A stable, distinct colour per track id (golden-ratio hue walk)."""
    hue = int((key * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 200, 255]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _label(img: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    (tw, th), base = cv2.getTextSize(text, _FONT, 0.45, 1)
    y = max(y, th + 4)
    cv2.rectangle(img, (x, y - th - 4), (x + tw + 4, y + base - 2), color, -1)
    cv2.putText(img, text, (x + 2, y - 3), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def draw(
    frame: np.ndarray,
    tracked: Detections,
    names: Sequence[str],
    lines: Sequence[LineConfig],
    totals: Mapping[str, Mapping[str, Mapping[str, int]]],
) -> np.ndarray:
    """Return a copy of ``frame`` with tracks, lines and per-line in/out totals drawn."""
    img = frame.copy()
    ids = tracked.tracker_id if tracked.tracker_id is not None else np.full(len(tracked), -1)
    for (x1, y1, x2, y2), cls, tid in zip(tracked.xyxy.astype(int), tracked.class_id, ids, strict=True):
        color = _color(int(tid))
        cv2.rectangle(img, (x1, y1), (x2, y2), color, 2)
        name = class_name(names, int(cls))
        _label(img, f"#{tid} {name}", x1, y1, color)
    for line in lines:
        a = tuple(int(v) for v in line.start)
        b = tuple(int(v) for v in line.end)
        cv2.line(img, a, b, (0, 255, 255), 2, cv2.LINE_AA)
        cv2.putText(img, line.name, (a[0] + 4, a[1] - 6), _FONT, 0.5, (0, 255, 255), 1, cv2.LINE_AA)
    y = 20
    for line_name, by_dir in totals.items():
        n_in = sum(by_dir.get("in", {}).values())
        n_out = sum(by_dir.get("out", {}).values())
        text = f"{line_name}: in {n_in}  out {n_out}"
        cv2.putText(img, text, (10, y), _FONT, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, (10, y), _FONT, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        y += 22
    return img


class Annotator:
    """Writes annotated frames to an MP4 and/or a folder of JPEGs, every n-th frame."""

    def __init__(self, cfg: OutputConfig, fps: float) -> None:
        """Prepare outputs; the video writer opens on the first frame (its size is known then)."""
        self.cfg = cfg
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None
        self._n = 0
        if cfg.frames_dir:
            Path(cfg.frames_dir).mkdir(parents=True, exist_ok=True)
        if cfg.video:
            Path(cfg.video).parent.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        """True when any output is configured."""
        return bool(self.cfg.video or self.cfg.frames_dir)

    def wants(self) -> bool:
        """True when the next frame should be drawn (so callers can skip the drawing cost)."""
        return self.enabled and self._n % self.cfg.every_n == 0

    def write(self, image: np.ndarray, index: int) -> None:
        """Write one already-annotated frame."""
        self._n += 1
        if self.cfg.video:
            if self._writer is None:
                h, w = image.shape[:2]
                fourcc = cv2.VideoWriter.fourcc(*"mp4v")
                self._writer = cv2.VideoWriter(self.cfg.video, fourcc, self.fps / self.cfg.every_n, (w, h))
            self._writer.write(image)
        if self.cfg.frames_dir:
            cv2.imwrite(str(Path(self.cfg.frames_dir) / f"frame_{index:07d}.jpg"), image)

    def skip(self) -> None:
        """Count a frame that was not drawn."""
        self._n += 1

    def close(self) -> None:
        """Finish the video file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def draw_detections(frame: np.ndarray, dets: Detections, names: Sequence[str]) -> np.ndarray:
    """Return a copy of ``frame`` with untracked detections drawn: a box and ``class 0.87`` each.

    For still images and single frames (``lanecount-train predict``): the colour is the class's.
    """
    img = frame.copy()
    for (x1, y1, x2, y2), cls, conf in zip(
        dets.xyxy.astype(int), dets.class_id, dets.confidence, strict=True
    ):
        color = _color(int(cls) + 1)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, 2)
        name = names[cls] if 0 <= cls < len(names) else str(cls)
        _label(img, f"{name} {conf:.2f}", x1, y1, color)
    return img

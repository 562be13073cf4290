"""MOTChallenge text files: detections in, tracks out.

Detections (one box per line, frames from 1)::

    frame,-1,left,top,width,height,confidence[,class_id[,...]]

Column 8 is the class id; it is 0 when the column is absent or negative (MOTChallenge ``det.txt``
files put ``-1`` there). Further columns are ignored, so a ``gt.txt`` of
:mod:`train.synth_video` (``frame,id,left,top,width,height,1,class,visibility``) reads as detections too.
Blank lines and lines starting with ``#`` are skipped.

Tracks (what ``replay`` writes)::

    frame,id,left,top,width,height,confidence,class_id,-1,-1

This is MOTChallenge's tracker-output layout with the (unused for 2-D) world ``x`` slot, column 8,
holding the track's voted class id, so :mod:`edge.stats` can report tracks per class.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from edge.detections import Detections
from edge.errors import LanecountError

__all__ = ["MotFormatError", "TrackRow", "TrackWriter", "read_detections", "read_tracks"]


class MotFormatError(LanecountError):
    """A MOTChallenge file is missing or malformed; the message is ``file:line: problem``."""


@dataclass(frozen=True)
class TrackRow:
    """One line of a tracks file."""

    frame: int
    track_id: int
    left: float
    top: float
    width: float
    height: float
    confidence: float
    class_id: int | None  # None when the file has no class column (-1 or absent)


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    try:
        with path.open(encoding="utf-8") as fh:
            for number, raw in enumerate(fh, 1):
                text = raw.strip()
                if text and not text.startswith("#"):
                    yield number, [c.strip() for c in text.split(",")]
    except OSError as exc:
        raise MotFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MotFormatError(f"{path}: not a text file") from None


def _number(where: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MotFormatError(f"{where}: {name}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise MotFormatError(f"{where}: {name}: {text!r} is not finite")
    return value


def _integer(where: str, name: str, text: str) -> int:
    value = _number(where, name, text)
    if value != int(value):
        raise MotFormatError(f"{where}: {name}: {text!r} is not a whole number")
    return int(value)


def _box(where: str, cols: list[str]) -> tuple[float, float, float, float]:
    left, top = _number(where, "left", cols[2]), _number(where, "top", cols[3])
    width, height = _number(where, "width", cols[4]), _number(where, "height", cols[5])
    if width <= 0 or height <= 0:
        raise MotFormatError(f"{where}: width and height must be positive, got {width:g} x {height:g}")
    return left, top, width, height


def read_detections(path: str | os.PathLike[str]) -> dict[int, Detections]:
    """Read a MOTChallenge detections file.

    Args:
        path: the text file.

    Returns:
        Detections per frame number (frames without detections are absent), in frame order.

    Raises:
        MotFormatError: ``file:line: problem`` for the first bad line, or when the file is unreadable
            or holds no detections.
    """
    p = Path(path)
    rows: dict[int, list[tuple[float, float, float, float, float, int]]] = {}
    for number, cols in _lines(p):
        where = f"{p}:{number}"
        if len(cols) < 7:
            expected = "frame,-1,left,top,width,height,confidence[,class]"
            raise MotFormatError(f"{where}: expected {expected}, got {len(cols)} columns")
        frame = _integer(where, "frame", cols[0])
        if frame < 1:
            raise MotFormatError(f"{where}: frame: frames count from 1, got {frame}")
        left, top, width, height = _box(where, cols)
        conf = _number(where, "confidence", cols[6])
        cls = _integer(where, "class", cols[7]) if len(cols) > 7 else -1
        rows.setdefault(frame, []).append((left, top, left + width, top + height, conf, max(cls, 0)))
    if not rows:
        raise MotFormatError(f"{p}: no detections in the file")
    out = {}
    for frame in sorted(rows):
        arr = np.asarray(rows[frame], dtype=np.float64)
        out[frame] = Detections(
            arr[:, :4].astype(np.float32), arr[:, 4].astype(np.float32), arr[:, 5].astype(np.int64)
        )
    return out


def read_tracks(path: str | os.PathLike[str]) -> list[TrackRow]:
    """Read a tracks file (MOTChallenge tracker output, class id in column 8 when present).

    Raises:
        MotFormatError: ``file:line: problem`` for the first bad line, or when the file is unreadable.
    """
    p = Path(path)
    out = []
    for number, cols in _lines(p):
        where = f"{p}:{number}"
        if len(cols) < 6:
            raise MotFormatError(
                f"{where}: expected frame,id,left,top,width,height[,...], got {len(cols)} columns"
            )
        frame, tid = _integer(where, "frame", cols[0]), _integer(where, "id", cols[1])
        left, top, width, height = _box(where, cols)
        conf = _number(where, "confidence", cols[6]) if len(cols) > 6 else 1.0
        cls = _integer(where, "class", cols[7]) if len(cols) > 7 else -1
        out.append(TrackRow(frame, tid, left, top, width, height, conf, cls if cls >= 0 else None))
    return out


class TrackWriter:
    r"""Writes tracked detections frame by frame as ``frame,id,left,top,width,height,conf,class,-1,-1``.

    Example:
        >>> import io
        >>> buf = io.StringIO()
        >>> d = Detections(np.array([[10, 20, 40, 60]]), np.array([0.5]), np.array([2]), np.array([7]))
        >>> TrackWriter(buf).write(3, d)
        >>> buf.getvalue()
        '3,7,10.00,20.00,30.00,40.00,0.500,2,-1,-1\n'
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, frame: int, tracked: Detections) -> None:
        """Append one frame's tracks.

        Raises:
            ValueError: when ``tracked`` has no ``tracker_id``.
        """
        if tracked.tracker_id is None:
            raise ValueError("TrackWriter.write needs tracked detections (tracker_id is None)")
        xyxy = tracked.xyxy
        lines = [
            f"{frame},{tid},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{conf:.3f},{cls},-1,-1\n"
            for (x1, y1, x2, y2), conf, cls, tid in zip(
                xyxy.tolist(),
                tracked.confidence.tolist(),
                tracked.class_id.tolist(),
                tracked.tracker_id.tolist(),
                strict=True,
            )
        ]
        self._stream.writelines(lines)

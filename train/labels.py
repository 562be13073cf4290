"""YOLO label files: parse ``class cx cy w h`` lines into boxes and find an image's label file.

A label file holds one ``class cx cy w h`` line per box, normalised to [0, 1]; its path is the image's
with the last ``images`` folder replaced by ``labels`` (the rule Ultralytics applies). An EMPTY label
file is a negative image (nothing to detect); a MISSING one is reported, because it usually means an
image nobody labelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Box", "LabelFile", "label_path", "read_labels"]

_DUPLICATE_IOU = 0.95


@dataclass(frozen=True)
class Box:
    """One valid label line: 1-based ``line`` number, class id and normalised centre/size."""

    line: int
    class_id: int
    cx: float
    cy: float
    w: float
    h: float

    def xyxy(self) -> tuple[float, float, float, float]:
        """Normalised corners ``x1, y1, x2, y2``."""
        return (self.cx - self.w / 2, self.cy - self.h / 2, self.cx + self.w / 2, self.cy + self.h / 2)

    def to_line(self, class_id: int | None = None) -> str:
        """The YOLO text line of this box, optionally with another class id."""
        c = self.class_id if class_id is None else class_id
        return f"{c} {self.cx:.6f} {self.cy:.6f} {self.w:.6f} {self.h:.6f}"


@dataclass(frozen=True)
class LabelFile:
    """A parsed label file: its valid boxes and ``(line, problem)`` pairs for the rest."""

    boxes: tuple[Box, ...]
    problems: tuple[tuple[int, str], ...]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


_Parsed = tuple[int, float, float, float, float]


def _parse_line(text: str, nc: int | None) -> tuple[_Parsed | None, str | None]:
    fields = text.split()
    if len(fields) != 5:
        return None, f"expected 5 fields 'class cx cy w h', got {len(fields)}"
    try:
        values = [float(f) for f in fields]
    except ValueError:
        bad = next(f for f in fields if not _is_number(f))
        return None, f"not a number: {bad!r}"
    if not values[0].is_integer() or values[0] < 0:
        return None, f"class id must be a non-negative integer, got {fields[0]!r}"
    cls = int(values[0])
    if nc is not None and cls >= nc:
        return None, f"class id {cls} >= nc {nc}"
    cx, cy, w, h = values[1:]
    outside = [
        f"{k}={v:g}" for k, v in zip(("cx", "cy", "w", "h"), values[1:], strict=True) if not 0.0 <= v <= 1.0
    ]
    if w <= 0 or h <= 0:
        return None, f"zero or negative box size (w={w:g}, h={h:g})"
    if outside:
        return None, f"coordinate outside [0, 1]: {', '.join(outside)}"
    return (cls, cx, cy, w, h), None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_labels(path: Path, nc: int | None = None) -> LabelFile:
    """Parse a YOLO label file, keeping valid boxes and describing every bad line.

    Duplicates (same class and IoU > 0.95 with an earlier box) are reported and left out of ``boxes``,
    as Ultralytics drops them too.

    Args:
        path: the ``.txt`` file.
        nc: number of classes; class ids ``>= nc`` are problems. ``None`` skips that test.

    Returns:
        The valid boxes and ``(line, message)`` problems, lines counted from 1.
    """
    boxes: list[Box] = []
    problems: list[tuple[int, str]] = []
    for no, raw in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        parsed, problem = _parse_line(raw, nc)
        if parsed is None:
            problems.append((no, problem or "invalid line"))
            continue
        box = Box(no, *parsed)
        dup = next(
            (b for b in boxes if b.class_id == box.class_id and _iou(b.xyxy(), box.xyxy()) > _DUPLICATE_IOU),
            None,
        )
        if dup is not None:
            iou = _iou(dup.xyxy(), box.xyxy())
            problems.append((no, f"duplicate of line {dup.line} (class {box.class_id}, IoU {iou:.2f})"))
            continue
        boxes.append(box)
    return LabelFile(tuple(boxes), tuple(problems))


def label_path(image: Path) -> Path:
    """The label file of ``image``: the last ``images`` folder becomes ``labels``, the suffix ``.txt``.

    An image outside any ``images`` folder keeps its label beside it (``a.jpg`` → ``a.txt``).
    """
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")

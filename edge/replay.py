"""Offline replay: run the tracker and the line counter over a recorded detections file.

This is the counting half of the daemon without a camera or a model, so counting and tracking settings
can be tuned on recordings (or on the ground truth of :mod:`train.synth_video`) and compared with true
counts. Every frame from 1 to the last frame in the file steps the tracker, including frames without
detections, exactly as the daemon does.

Outputs in ``out_dir``:

* ``tracks.txt``: MOTChallenge tracks, class id in column 8 (see :mod:`edge.mot`);
* ``counts.json``: ``{"lines": {"<line>": {"in": {"<class>": n}, "out": {"<class>": n}}}}``, with
  class names when the config names classes (``model.names``) and class ids as strings otherwise; the
  same shape as the ``lines`` of ``crossings.json`` from :mod:`train.synth_video`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edge.config import EdgeConfig
from edge.counting import LineCounter, Totals
from edge.detections import Detections
from edge.mot import TrackWriter, read_detections
from edge.tracking import ProductTracker

__all__ = ["class_names", "counts_document", "replay"]


def class_names(cfg: EdgeConfig) -> list[str]:
    """Class names the config declares (``model.names``), or an empty list."""
    return list(cfg.model.names) if cfg.model is not None and cfg.model.names else []


def counts_document(totals: Totals, names: list[str]) -> dict[str, Any]:
    """Turn :attr:`LineCounter.totals` into the ``counts.json`` document (class names or id strings)."""

    def key(class_id: int) -> str:
        return names[class_id] if 0 <= class_id < len(names) else str(class_id)

    return {
        "lines": {
            line: {d: {key(c): n for c, n in sorted(per.items())} for d, per in by_dir.items()}
            for line, by_dir in totals.items()
        }
    }


def replay(
    cfg: EdgeConfig,
    detections_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fps: float = 30.0,
) -> dict[str, Any]:
    """Track and count a MOTChallenge detections file; write ``tracks.txt`` and ``counts.json``.

    Args:
        cfg: the config; only ``tracking``, ``counting`` and ``model.names`` are used.
        detections_path: ``frame,-1,left,top,width,height,confidence[,class]`` lines, frames from 1.
        out_dir: created if missing.
        fps: frame rate of the recording, for the crossings' timestamps.

    Returns:
        The ``counts.json`` document.

    Raises:
        MotFormatError: when the detections file is unreadable or malformed (one ``file:line`` line).
        ConfigError: when a line's class filter names an unknown class.
        ValueError: when ``fps`` is not positive.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    by_frame = read_detections(detections_path)
    names = class_names(cfg)
    tracker = ProductTracker(cfg.tracking)
    counter = LineCounter(cfg.counting, names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    empty = Detections.empty()
    with (out / "tracks.txt").open("w", encoding="utf-8") as fh:
        writer = TrackWriter(fh)
        for frame in range(1, max(by_frame) + 1):
            tracked = tracker.update(by_frame.get(frame, empty), frame)
            counter.update(tracked, frame, (frame - 1) / fps)
            counter.prune(tracker.alive_ids())
            writer.write(frame, tracked)
    doc = counts_document(counter.totals, names)
    (out / "counts.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc

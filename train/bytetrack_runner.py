"""Run Roboflow's ``trackers`` ByteTrack at its default settings over detections in an ``.npz`` file.

``trackers`` needs numpy >= 2 and Norfair (lanecount's tracker) needs numpy < 2, so the two cannot share
an environment: ``make bench-counting`` runs this file with its own interpreter (``.venv-bench``, where
only ``trackers`` is installed) and it imports nothing from lanecount.

Usage: ``python train/bytetrack_runner.py IN.npz OUT.npz``. ``IN`` holds, per scene ``s``, the arrays
``s{s}_frame`` (frame of each detection), ``s{s}_xyxy``, ``s{s}_conf``, ``s{s}_cls`` and ``s{s}_frames``
(the scene's number of frames); ``OUT`` holds ``s{s}_tracks``: rows ``frame, id, x1, y1, x2, y2, conf,
class`` of the tracked detections (the detection's own box and class), for every tracked detection.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def track_scene(data: Any, s: int) -> np.ndarray:
    """Track one scene with a fresh ``ByteTrackTracker()``; return its rows."""
    import supervision as sv
    import trackers

    tracker = trackers.ByteTrackTracker()
    frame, xyxy = data[f"s{s}_frame"], data[f"s{s}_xyxy"].astype(np.float64)
    conf, cls = data[f"s{s}_conf"].astype(np.float64), data[f"s{s}_cls"].astype(np.int64)
    rows = []
    for f in range(int(data[f"s{s}_frames"])):
        pick = frame == f
        dets = sv.Detections(xyxy=xyxy[pick].reshape(-1, 4), confidence=conf[pick], class_id=cls[pick])
        out = tracker.update(dets)
        keep = out.tracker_id >= 0
        n = int(keep.sum())
        if n:
            rows.append(
                np.column_stack(
                    [
                        np.full(n, f),
                        out.tracker_id[keep],
                        out.xyxy[keep],
                        out.confidence[keep],
                        out.class_id[keep],
                    ]
                )
            )
    return np.concatenate(rows) if rows else np.zeros((0, 8))


def main(argv: list[str]) -> int:
    """Track every scene of ``argv[0]`` into ``argv[1]``."""
    src, dst = argv
    data = np.load(src)
    scenes = sorted({int(k[1:].split("_")[0]) for k in data.files})
    np.savez(dst, **{f"s{s}_tracks": track_scene(data, s) for s in scenes})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

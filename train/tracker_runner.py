"""Run public trackers at their default settings over detections in an ``.npz`` file.

Roboflow's ``trackers`` and boxmot need numpy >= 2 (boxmot also torch), and Norfair (lanecount's tracker)
needs numpy < 2, so they cannot share an environment: ``make bench-counting`` runs this file with the
interpreter of ``.venv-bench`` and it imports nothing from lanecount.

Trackers (``--tracker``):

* ``bytetrack``: ``trackers.ByteTrackTracker()`` (trackers 2.6.1);
* ``ocsort``: boxmot 21.0.0's ``OcSort`` with its shipped default configuration;
* ``hybridsort``: boxmot's ``HybridSort`` with its default configuration without appearance: its ReID
  model needs weights that cannot be downloaded here, and the detections come without pixels. So
  ``with_reid``, the embedding-guided matching weights and the long-term ReID terms are off, which is
  Hybrid-SORT's appearance-free form (TCM and the height-modulated IoU stay). Only ``with_reid=False``
  is not enough: boxmot 21.0.0 still runs the embedding-guided first association on all-zero
  features, which swaps ids between objects from frame to frame (four boxes, two frames show it).
  Its camera-motion step (ECC) gets a blank frame and finds no motion, as with a fixed camera.

Usage: ``python train/tracker_runner.py --tracker NAME IN.npz OUT.npz``. ``IN`` holds, per scene ``s``,
the arrays ``s{s}_frame`` (frame of each detection), ``s{s}_xyxy``, ``s{s}_conf``, ``s{s}_cls``,
``s{s}_frames`` (the scene's number of frames) and ``s{s}_size`` (width, height); ``OUT`` holds
``s{s}_tracks``: rows ``frame, id, x1, y1, x2, y2, conf, class`` of the tracked detections (the
detection's own box and class, like lanecount's tracker returns).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

Step = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # xyxy, conf, cls → rows id,x1..y2,conf,cls


def bytetrack(size: tuple[int, int]) -> Step:
    """``trackers.ByteTrackTracker()`` at its defaults."""
    import supervision as sv
    import trackers

    tracker = trackers.ByteTrackTracker()

    def step(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray) -> np.ndarray:
        out = tracker.update(sv.Detections(xyxy=xyxy, confidence=conf, class_id=cls))
        keep = out.tracker_id >= 0
        return np.column_stack(
            [out.tracker_id[keep], out.xyxy[keep], out.confidence[keep], out.class_id[keep]]
        )

    return step


def _boxmot(name: str, size: tuple[int, int], **override: Any) -> Step:
    import logging

    from boxmot.trackers.tracker_zoo import create_tracker
    from boxmot.utils import logger

    logger.setLevel(logging.ERROR)  # "ECC did not converge" on every blank frame
    if override:
        import yaml
        from boxmot.trackers.tracker_zoo import get_tracker_config

        defaults = yaml.safe_load(get_tracker_config(name).read_text())
        params = {k: v["default"] for k, v in defaults.items()} | override
        tracker = create_tracker(name, evolve_param_dict=params)
    else:
        tracker = create_tracker(name)
    blank = np.zeros((size[1], size[0], 3), np.uint8)

    def step(xyxy: np.ndarray, conf: np.ndarray, cls: np.ndarray) -> np.ndarray:
        dets = np.column_stack([xyxy, conf, cls]).astype(np.float64).reshape(-1, 6)
        out = np.asarray(tracker.update(dets, blank)).reshape(-1, 8)
        out = out[out[:, 7] >= 0]
        ind = out[:, 7].astype(int)  # the matched detection: report its own box, score and class
        return np.column_stack([out[:, 4], xyxy[ind], conf[ind], cls[ind]])

    return step


TRACKERS: dict[str, Callable[[tuple[int, int]], Step]] = {
    "bytetrack": bytetrack,
    "ocsort": lambda size: _boxmot("ocsort", size),
    "hybridsort": lambda size: _boxmot(
        "hybridsort",
        size,
        with_reid=False,
        EG_weight_high_score=0.0,
        EG_weight_low_score=0.0,
        with_longterm_reid=False,
        with_longterm_reid_correction=False,
    ),
}


def track_scene(data: Any, s: int, name: str) -> np.ndarray:
    """Track one scene with a fresh tracker; return its rows."""
    frame, xyxy = data[f"s{s}_frame"], data[f"s{s}_xyxy"].astype(np.float64)
    conf, cls = data[f"s{s}_conf"].astype(np.float64), data[f"s{s}_cls"].astype(np.int64)
    w, h = (int(v) for v in data[f"s{s}_size"])
    step = TRACKERS[name]((w, h))
    rows = []
    for f in range(int(data[f"s{s}_frames"])):
        pick = frame == f
        out = step(xyxy[pick].reshape(-1, 4), conf[pick], cls[pick])
        if len(out):
            rows.append(np.column_stack([np.full(len(out), f), out]))
    return np.concatenate(rows) if rows else np.zeros((0, 8))


def main(argv: list[str]) -> int:
    """Track every scene of ``IN`` into ``OUT``."""
    ap = argparse.ArgumentParser(prog="tracker_runner.py", description=__doc__.splitlines()[0])
    ap.add_argument("--tracker", choices=sorted(TRACKERS), default="bytetrack")
    ap.add_argument("src")
    ap.add_argument("dst")
    a = ap.parse_args(argv)
    data = np.load(a.src)
    scenes = sorted({int(k[1:].split("_")[0]) for k in data.files})
    np.savez(a.dst, **{f"s{s}_tracks": track_scene(data, s, a.tracker) for s in scenes})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

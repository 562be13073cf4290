"""Counting accuracy on the scene bank (:mod:`train.scenebank`), lanecount against public baselines.

Three counters see the same noisy detections and are scored by :func:`train.countscore.score_events`:

* ``lanecount``: :class:`edge.tracking.ProductTracker` → :class:`edge.counting.LineCounter` (the daemon's
  pipeline without the detector), at the given settings;
* ``supervision``: ``sv.ByteTrack()`` → ``sv.LineZone`` (class: the detection's at the crossing), with
  the trigger anchors and crossing threshold that score best here;
* ``trackers+plain``: Roboflow's ``trackers`` ByteTrack at its defaults → :class:`PlainCounter` (hysteresis
  band, class = majority of the track's detections so far). ``trackers`` needs numpy >= 2, so it runs in
  its own interpreter (``--trackers-python``, see :mod:`train.bytetrack_runner`).

``python -m train.countbench`` (``make bench-counting``) prints the table and, with ``--sweep``, the error
at other values of each setting, one at a time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import CountingConfig, TrackingConfig
from edge.counting import LineCounter
from edge.geometry import line_coordinates
from edge.tracking import ProductTracker
from train.countscore import CountEvent, Score, score_events
from train.scenebank import NoiseModel, Scene, bank

__all__ = ["PlainCounter", "lanecount_events", "main", "plain_events", "score_bank", "supervision_events"]

TOLERANCE = 40  # frames: a product stopped on the line (up to 2 s) counts when it leaves the band
RUNNER = Path(__file__).with_name("bytetrack_runner.py")

Events = list[CountEvent]


def lanecount_events(
    scene: Scene, tracking: TrackingConfig | None = None, counting: CountingConfig | None = None
) -> Events:
    """Crossings lanecount counts in ``scene`` (tracker and counter stepped on every frame, as the daemon)."""
    counting = (counting or CountingConfig()).model_copy(update={"lines": [scene.line]})
    tracker = ProductTracker(tracking or TrackingConfig())
    counter = LineCounter(counting)
    out: Events = []
    for f, dets in enumerate(scene.detections):
        crossings = counter.update(tracker.update(dets, f), f, f / scene.fps)
        counter.prune(tracker.alive_ids())
        out += [CountEvent(c.frame, c.line, c.direction, c.class_id) for c in crossings]
    return out


SV_SETTINGS: dict[str, dict[str, Any]] = {
    "corners,1": {"anchors": None, "threshold": 1},
    "corners,2": {"anchors": None, "threshold": 2},
    "bottom_center,1": {"anchors": ["BOTTOM_CENTER"], "threshold": 1},
    "bottom_center,2": {"anchors": ["BOTTOM_CENTER"], "threshold": 2},
    "center,1": {"anchors": ["CENTER"], "threshold": 1},
    "center,2": {"anchors": ["CENTER"], "threshold": 2},
}


def supervision_events(scene: Scene) -> dict[str, Events]:
    """Crossings of supervision's ``ByteTrack()`` + ``LineZone`` per LineZone setting (one tracker run)."""
    import warnings

    import supervision as sv

    warnings.filterwarnings("ignore", category=FutureWarning)  # ByteTrack is deprecated in favour of trackers
    (x1, y1), (x2, y2) = scene.line.start, scene.line.end
    zones = {}
    for name, s in SV_SETTINGS.items():
        kw: dict[str, Any] = {"minimum_crossing_threshold": s["threshold"]}
        if s["anchors"]:
            kw["triggering_anchors"] = [sv.Position[a] for a in s["anchors"]]
        zones[name] = sv.LineZone(sv.Point(x1, y1), sv.Point(x2, y2), **kw)
    tracker = sv.ByteTrack()
    out: dict[str, Events] = {name: [] for name in zones}
    for f, d in enumerate(scene.detections):
        dets = sv.Detections(xyxy=d.xyxy.astype(np.float64), confidence=d.confidence, class_id=d.class_id)
        tracked = tracker.update_with_detections(dets)
        classes = np.asarray(tracked.class_id).tolist()
        for name, zone in zones.items():
            crossed_in, crossed_out = zone.trigger(tracked)
            # supervision's "in" is right → left of start → end: lanecount's "out".
            for direction, hits in (("out", crossed_in), ("in", crossed_out)):
                for k in np.flatnonzero(hits).tolist():
                    out[name].append(CountEvent(f, scene.line.name, direction, int(classes[k])))
    return out


@dataclass
class PlainCounter:
    """A plain line counter: hysteresis band, class = majority of the track's detections so far.

    A track's side is committed when its anchor (bottom centre) leaves the band; a crossing is counted
    when it leaves the band on the other side. No hand-off, no segment test (the bank's line spans the
    picture).
    """

    line: str
    start: tuple[float, float]
    end: tuple[float, float]
    hysteresis_px: float = 6.0
    sides: dict[int, int] = field(default_factory=dict)
    votes: dict[int, Counter[int]] = field(default_factory=dict)

    def update(self, frame: int, ids: Sequence[int], xyxy: np.ndarray, classes: Sequence[int]) -> Events:
        """One frame of tracked boxes; returns the crossings counted."""
        if not len(ids):
            return []
        anchors = np.column_stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, xyxy[:, 3]])
        dist = line_coordinates(anchors, [self.start], [self.end])[0][:, 0]
        out = []
        for tid, d, cls in zip(ids, dist.tolist(), classes, strict=True):
            votes = self.votes.setdefault(tid, Counter())
            votes[cls] += 1
            side = 1 if d > self.hysteresis_px else -1 if d < -self.hysteresis_px else 0
            before = self.sides.get(tid, 0)
            if side and before and side != before:
                out.append(
                    CountEvent(frame, self.line, "in" if side > 0 else "out", votes.most_common(1)[0][0])
                )
            if side:
                self.sides[tid] = side
        return out


def plain_events(scene: Scene, rows: np.ndarray, hysteresis_px: float | None = None) -> Events:
    """Crossings :class:`PlainCounter` counts from tracker rows ``frame, id, x1, y1, x2, y2, conf, class``.

    The band defaults to lanecount's ``counting.hysteresis_px``, so the comparison is between trackers.
    """
    h = CountingConfig().hysteresis_px if hysteresis_px is None else hysteresis_px
    counter = PlainCounter(scene.line.name, scene.line.start, scene.line.end, h)
    out: Events = []
    frames = rows[:, 0].astype(int)
    for f in np.unique(frames).tolist():
        r = rows[frames == f]
        out += counter.update(f, r[:, 1].astype(int).tolist(), r[:, 2:6], r[:, 7].astype(int).tolist())
    return out


def external_bytetrack(scenes: Sequence[Scene], python: str) -> list[np.ndarray]:
    """Track every scene with ``trackers``' ByteTrack in the interpreter ``python``; rows per scene."""
    arrays: dict[str, np.ndarray] = {}
    for s, scene in enumerate(scenes):
        dets = scene.detections
        arrays[f"s{s}_frame"] = np.concatenate([np.full(len(d), f) for f, d in enumerate(dets)])
        arrays[f"s{s}_xyxy"] = np.concatenate([d.xyxy for d in dets])
        arrays[f"s{s}_conf"] = np.concatenate([d.confidence for d in dets])
        arrays[f"s{s}_cls"] = np.concatenate([d.class_id for d in dets])
        arrays[f"s{s}_frames"] = np.array(len(dets))
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **arrays)
        subprocess.run([python, "-W", "ignore", str(RUNNER), str(src), str(dst)], check=True)
        data = np.load(dst)
        return [data[f"s{s}_tracks"] for s in range(len(scenes))]


def score_bank(scenes: Sequence[Scene], events: Callable[[Scene], Events]) -> Score:
    """Sum of the scenes' scores for the counter ``events``."""
    total = Score()
    for scene in scenes:
        total += score_events(events(scene), scene.truth, TOLERANCE)
    return total


SWEEP: dict[str, tuple[str, list[Any]]] = {
    "hysteresis_px": ("counting", [4.0, 6.0, 8.0, 12.0, 16.0, 24.0]),
    "handoff_frames": ("counting", [0, 15, 30, 60]),
    "handoff_px": ("counting", [50.0, 80.0, 120.0, 160.0]),
    "distance_threshold": ("tracking", [0.5, 0.6, 0.7, 0.8, 0.9]),
    "hit_counter_max": ("tracking", [8, 15, 30]),
    "initialization_delay": ("tracking", [1, 2, 3, 4, 5]),
    "class_vote_window": ("tracking", [10, 30, 100, 1000]),
}


def _lanecount(tracking: TrackingConfig, counting: CountingConfig) -> Callable[[Scene], Events]:
    return lambda scene: lanecount_events(scene, tracking, counting)


def sweep(
    banks: Mapping[str, Sequence[Scene]], tracking: TrackingConfig, counting: CountingConfig
) -> list[str]:
    """Count error on each bank at each value of each setting, the others at their defaults."""
    lines = [f"setting: value → count error on {' / '.join(banks)} (count diff)"]
    for name, (section, values) in SWEEP.items():
        cells = []
        for value in values:
            t, c = tracking, counting
            try:
                if section == "tracking":
                    t = TrackingConfig(**{**tracking.model_dump(), name: value})
                else:
                    c = CountingConfig(**{**counting.model_dump(), name: value})
            except ValueError:
                continue
            scores = [score_bank(scenes, _lanecount(t, c)) for scenes in banks.values()]
            errors = " / ".join(f"{100 * s.count_error:.2f}%" for s in scores)
            diffs = "/".join(str(s.count_diff) for s in scores)
            cells.append(f"{value}: {errors} ({diffs})")
        lines.append(f"  {name}: " + ", ".join(cells))
    return lines


def compare(scenes: Sequence[Scene], trackers_python: str | None) -> list[tuple[str, Score]]:
    """Score lanecount (defaults), supervision (best LineZone setting) and trackers + plain counter."""
    rows = [("lanecount (defaults)", score_bank(scenes, _lanecount(TrackingConfig(), CountingConfig())))]
    try:
        sv_runs = [supervision_events(s) for s in scenes]
    except ImportError:
        print("supervision: not installed (pip install -e '.[bench]'), skipped")
    else:
        sv_scores = {
            name: sum(
                (score_events(r[name], s.truth, TOLERANCE) for r, s in zip(sv_runs, scenes, strict=True)),
                Score(),
            )
            for name in SV_SETTINGS
        }
        best = min(sv_scores, key=lambda n: sv_scores[n].count_diff)
        rows.append((f"supervision ByteTrack+LineZone (best: {best})", sv_scores[best]))
    if trackers_python:
        tracks = external_bytetrack(scenes, trackers_python)
        plain = Score()
        for scene, r in zip(scenes, tracks, strict=True):
            plain += score_events(plain_events(scene, r), scene.truth, TOLERANCE)
        rows.append(("trackers ByteTrack (defaults) + plain counter", plain))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Print the comparison table on the bank and its hard variant (and the sweep)."""
    ap = argparse.ArgumentParser(prog="python -m train.countbench", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--trackers-python", help="interpreter with `trackers` installed (numpy >= 2)")
    ap.add_argument("--sweep", action="store_true", help="also the error at other values of each setting")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    banks = {
        "bank": bank(a.seed, a.scenes, a.seconds),
        "hard": bank(a.seed, a.scenes, a.seconds, NoiseModel.hard()),
    }
    n_true = sum(len(s.truth) for s in banks["bank"])
    print(
        f"seed {a.seed}: {a.scenes} scenes x {a.seconds:g} s, {n_true} true crossings; "
        f"noise: {NoiseModel()}; hard: {NoiseModel.hard()}; match tolerance ±{TOLERANCE} frames"
    )
    if not a.trackers_python:
        print("trackers: no --trackers-python given (make bench-counting sets it up), skipped")
    for name, scenes in banks.items():
        rows = compare(scenes, a.trackers_python)
        width = max(len(r[0]) for r in rows)
        print(f"\n{name}:")
        for label, score in rows:
            print(f"  {label:<{width}}  {score.summary()}")
    if a.sweep:
        print()
        print("\n".join(sweep(banks, TrackingConfig(), CountingConfig())))
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Counting accuracy on the scene banks and the real bank, lanecount against public trackers.

Every counter sees the same detections and is scored by :func:`train.countscore.score_events`:

* ``lanecount``: :class:`edge.tracking.ProductTracker` → :class:`edge.counting.LineCounter` (the daemon's
  pipeline without the detector), at the given settings;
* ``supervision``: ``sv.ByteTrack()`` → ``sv.LineZone`` (class: the detection's at the crossing), with
  the trigger anchors and crossing threshold that score best on each bank;
* public trackers at their defaults → :class:`PlainCounter` (the same hysteresis band as lanecount, the
  same segment test, class = majority of the track's detections so far): Roboflow's ``trackers``
  ByteTrack, boxmot's OC-SORT and Hybrid-SORT. They need numpy >= 2 (boxmot also torch), so they run in
  their own interpreter (``--trackers-python``, see :mod:`train.tracker_runner`).

Banks: ``bank``, ``hard`` and ``fast`` are :data:`train.scenebank.PRESETS`; ``real`` is
:mod:`train.realbank` (real videos, YOLOv8n detections, hand-verified crossings).
``python -m train.countbench`` (``make bench-counting``) prints them side by side and, with ``--sweep``,
lanecount's error at other values of each setting, one at a time.
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
from typing import Any, Protocol

import numpy as np

from edge.config import CountingConfig, LineConfig, TrackingConfig
from edge.counting import LineCounter
from edge.detections import Detections
from edge.geometry import line_coordinates
from edge.tracking import ProductTracker
from train.countscore import CountEvent, Score, score_events
from train.scenebank import preset

__all__ = [
    "EXTERNAL",
    "PlainCounter",
    "external_tracks",
    "lanecount_events",
    "main",
    "plain_events",
    "score_bank",
    "supervision_events",
]

TOLERANCE = 40  # frames: a product stopped on the line (up to 2 s) counts when it leaves the band
RUNNER = Path(__file__).with_name("tracker_runner.py")
EXTERNAL = {  # tracker_runner's name → the label in the tables
    "bytetrack": "trackers ByteTrack + plain counter",
    "ocsort": "boxmot OC-SORT + plain counter",
    "hybridsort": "boxmot Hybrid-SORT + plain counter",
}

Events = list[CountEvent]


class Scene(Protocol):
    """What a bank's scene offers: a synthetic :class:`train.scenebank.Scene` or a real video."""

    @property
    def detections(self) -> Sequence[Detections]: ...
    @property
    def truth(self) -> Sequence[CountEvent]: ...
    @property
    def lines(self) -> tuple[LineConfig, ...]: ...
    @property
    def fps(self) -> float: ...
    @property
    def names(self) -> tuple[str, ...]: ...
    @property
    def size(self) -> tuple[int, int]: ...


def lanecount_events(
    scene: Scene, tracking: TrackingConfig | None = None, counting: CountingConfig | None = None
) -> Events:
    """Crossings lanecount counts in ``scene`` (tracker and counter stepped on every frame, as the daemon)."""
    counting = (counting or CountingConfig()).model_copy(update={"lines": list(scene.lines)})
    tracker = ProductTracker(tracking or TrackingConfig())
    counter = LineCounter(counting, scene.names)
    out: Events = []
    for f, dets in enumerate(scene.detections):
        crossings = counter.update(tracker.update(dets, f), f, f / scene.fps)
        counter.prune(tracker.alive_ids())
        out += [CountEvent(c.frame, c.line, c.direction, c.class_id) for c in crossings]
    return out


def _class_ids(line: LineConfig, names: Sequence[str]) -> frozenset[int] | None:
    return None if line.classes is None else frozenset(names.index(c) for c in line.classes)


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
    zones: dict[str, list[tuple[LineConfig, frozenset[int] | None, Any]]] = {}
    for name, s in SV_SETTINGS.items():
        kw: dict[str, Any] = {"minimum_crossing_threshold": s["threshold"]}
        if s["anchors"]:
            kw["triggering_anchors"] = [sv.Position[a] for a in s["anchors"]]
        zones[name] = [
            (
                line,
                _class_ids(line, scene.names),
                sv.LineZone(sv.Point(*line.start), sv.Point(*line.end), **kw),
            )
            for line in scene.lines
        ]
    tracker = sv.ByteTrack()
    out: dict[str, Events] = {name: [] for name in zones}
    for f, d in enumerate(scene.detections):
        dets = sv.Detections(xyxy=d.xyxy.astype(np.float64), confidence=d.confidence, class_id=d.class_id)
        tracked = tracker.update_with_detections(dets)
        classes = np.asarray(tracked.class_id).tolist()
        for name, per_line in zones.items():
            for line, allowed, zone in per_line:
                crossed_in, crossed_out = zone.trigger(tracked)
                # supervision's "in" is right → left of start → end: lanecount's "out".
                for direction, hits in (("out", crossed_in), ("in", crossed_out)):
                    for k in np.flatnonzero(hits).tolist():
                        if allowed is None or classes[k] in allowed:
                            out[name].append(CountEvent(f, line.name, direction, int(classes[k])))
    return out


@dataclass
class _PlainTrack:
    votes: Counter[int] = field(default_factory=Counter)
    sides: dict[str, int] = field(default_factory=dict)
    last: dict[str, tuple[float, float, float]] = field(
        default_factory=dict
    )  # line → dist, along, crossed at


@dataclass
class PlainCounter:
    """A plain line counter: hysteresis band, segment test, class = majority of the track's detections so far.

    A track's side of a line is committed when its anchor (bottom centre) leaves the band; a crossing is
    counted when it leaves the band on the other side, if its last step across the line went through
    the segment (as lanecount's counter). No hand-off between tracks.
    """

    lines: Sequence[LineConfig]
    names: Sequence[str] = ()
    hysteresis_px: float = 12.0
    tracks: dict[int, _PlainTrack] = field(default_factory=dict)

    def update(self, frame: int, ids: Sequence[int], xyxy: np.ndarray, classes: Sequence[int]) -> Events:
        """One frame of tracked boxes; returns the crossings counted."""
        if not len(ids):
            return []
        anchors = np.column_stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, xyxy[:, 3]])
        starts = [ln.start for ln in self.lines]
        dist, along, lengths = line_coordinates(anchors, starts, [ln.end for ln in self.lines])
        out = []
        for k, (tid, cls) in enumerate(zip(ids, classes, strict=True)):
            track = self.tracks.setdefault(tid, _PlainTrack())
            track.votes[cls] += 1
            vote = track.votes.most_common(1)[0][0]
            for j, line in enumerate(self.lines):
                d, a = float(dist[k, j]), float(along[k, j])
                pd, pa, at = track.last.get(line.name, (np.nan, np.nan, np.nan))
                if np.isfinite(pd) and np.sign(pd) != np.sign(d):
                    at = pa + pd / (pd - d) * (a - pa)
                track.last[line.name] = (d, a, at)
                side = 1 if d > self.hysteresis_px else -1 if d < -self.hysteresis_px else 0
                before = track.sides.get(line.name, 0)
                if side and before and side != before and 0 <= at <= lengths[j]:
                    allowed = _class_ids(line, self.names)
                    if allowed is None or vote in allowed:
                        out.append(CountEvent(frame, line.name, "in" if side > 0 else "out", vote))
                if side:
                    track.sides[line.name] = side
        return out


def plain_events(scene: Scene, rows: np.ndarray, hysteresis_px: float | None = None) -> Events:
    """Crossings :class:`PlainCounter` counts from tracker rows ``frame, id, x1, y1, x2, y2, conf, class``.

    The band defaults to lanecount's ``counting.hysteresis_px``, so the comparison is between trackers.
    """
    h = CountingConfig().hysteresis_px if hysteresis_px is None else hysteresis_px
    counter = PlainCounter(scene.lines, scene.names, h)
    out: Events = []
    frames = rows[:, 0].astype(int)
    for f in np.unique(frames).tolist():
        r = rows[frames == f]
        out += counter.update(f, r[:, 1].astype(int).tolist(), r[:, 2:6], r[:, 7].astype(int).tolist())
    return out


def external_tracks(scenes: Sequence[Scene], python: str, tracker: str = "bytetrack") -> list[np.ndarray]:
    """Track every scene with a public tracker (:mod:`train.tracker_runner`) in ``python``; rows per scene."""
    arrays: dict[str, np.ndarray] = {}
    for s, scene in enumerate(scenes):
        dets = scene.detections
        arrays[f"s{s}_frame"] = np.concatenate([np.full(len(d), f) for f, d in enumerate(dets)])
        arrays[f"s{s}_xyxy"] = np.concatenate([d.xyxy for d in dets]).reshape(-1, 4)
        arrays[f"s{s}_conf"] = np.concatenate([d.confidence for d in dets])
        arrays[f"s{s}_cls"] = np.concatenate([d.class_id for d in dets])
        arrays[f"s{s}_frames"] = np.array(len(dets))
        arrays[f"s{s}_size"] = np.array(scene.size)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **arrays)
        cmd = [python, "-W", "ignore", str(RUNNER), "--tracker", tracker, str(src), str(dst)]
        subprocess.run(cmd, check=True)
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
    "handoff_px": ("counting", [30.0, 50.0, 80.0, 120.0, 160.0]),
    "distance_threshold": ("tracking", [0.5, 0.6, 0.7, 0.8, 0.9]),
    "hit_counter_max": ("tracking", [8, 15, 30]),
    "relink_distance": ("tracking", [0.0, 0.35, 0.5, 0.75, 1.0]),
    "initialization_delay": ("tracking", [1, 2, 3, 4, 5]),
    "class_vote_window": ("tracking", [10, 30, 100, 1000]),
}


def _lanecount(tracking: TrackingConfig, counting: CountingConfig) -> Callable[[Scene], Events]:
    return lambda scene: lanecount_events(scene, tracking, counting)


def sweep(
    banks: Mapping[str, Sequence[Scene]], tracking: TrackingConfig, counting: CountingConfig
) -> list[str]:
    """Count diff on each bank at each value of each setting, the others at their defaults."""
    lines = [f"setting: value → count diff on {' / '.join(banks)}"]
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
            cells.append(f"{value}: " + "/".join(str(s.count_diff) for s in scores))
        lines.append(f"  {name:<22} " + "   ".join(cells))
    return lines


def compare(
    scenes: Sequence[Scene], trackers_python: str | None, external: Sequence[str] = tuple(EXTERNAL)
) -> list[tuple[str, Score]]:
    """Score lanecount (defaults), supervision (best LineZone setting) and the public trackers."""
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
        rows.append((f"supervision ByteTrack+LineZone ({best})", sv_scores[best]))
    if trackers_python:
        for name in external:
            tracks = external_tracks(scenes, trackers_python, name)
            total = Score()
            for scene, r in zip(scenes, tracks, strict=True):
                total += score_events(plain_events(scene, r), scene.truth, TOLERANCE)
            rows.append((EXTERNAL[name], total))
    return rows


def load_banks(seed: int, scenes: int, seconds: float, names: Sequence[str]) -> dict[str, Sequence[Scene]]:
    """The named banks: synthetic presets drawn from ``seed``, and ``real``."""
    out: dict[str, Sequence[Scene]] = {}
    for name in names:
        if name == "real":
            from train.realbank import load_bank

            out[name] = load_bank()
        else:
            out[name] = preset(name, seed, scenes, seconds)
    return out


def table(results: Mapping[str, list[tuple[str, Score]]]) -> list[str]:
    """Count error per counter (rows) and bank (columns), then each bank's breakdown."""
    banks = list(results)
    labels = list(dict.fromkeys(label.split(" (")[0] for rows in results.values() for label, _ in rows))
    head = [f"{b} ({next(iter(results[b]))[1].true})" for b in banks]
    width = max(len(x) for x in labels) + 2
    out = [f"{'count error (count diff)':<{width}}" + "".join(f"{h:>18}" for h in head)]
    for label in labels:
        cells = []
        for b in banks:
            score = next((s for lab, s in results[b] if lab.split(" (")[0] == label), None)
            cell = "—" if score is None else f"{100 * score.count_error:.2f}% ({score.count_diff})"
            cells.append(f"{cell:>18}")
        out.append(f"{label:<{width}}" + "".join(cells))
    for b in banks:
        out.append(f"\n{b}:")
        out += [f"  {label:<{width + 12}} {score.summary()}" for label, score in results[b]]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print the comparison table on the banks side by side (and the sweep)."""
    ap = argparse.ArgumentParser(prog="python -m train.countbench", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--banks", nargs="+", default=["bank", "hard", "fast", "real"])
    ap.add_argument("--trackers-python", help="interpreter with trackers and boxmot installed (numpy >= 2)")
    ap.add_argument("--external", nargs="*", default=list(EXTERNAL), choices=list(EXTERNAL))
    ap.add_argument("--sweep", action="store_true", help="also the error at other values of each setting")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    banks = load_banks(a.seed, a.scenes, a.seconds, a.banks)
    print(f"seed {a.seed}: {a.scenes} scenes x {a.seconds:g} s per synthetic bank; match ±{TOLERANCE} frames")
    if not a.trackers_python:
        print("public trackers: no --trackers-python given (make bench-counting sets it up), skipped")
    results = {name: compare(scenes, a.trackers_python, a.external) for name, scenes in banks.items()}
    print("\n".join(table(results)))
    if a.sweep:
        print()
        print("\n".join(sweep(banks, TrackingConfig(), CountingConfig())))
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One frame at a time: detector → tracker → counter, with per-stage milliseconds.

No I/O here (no source, no store, no MQTT), so the daemon, the benchmark and tests share it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edge.backends.base import Detector
from edge.config import EdgeConfig
from edge.counting import Crossing, LineCounter
from edge.detections import Detections
from edge.frames import Frame
from edge.tracking import ProductTracker

__all__ = ["FrameResult", "Pipeline"]


@dataclass
class FrameResult:
    """What one frame produced, with per-stage milliseconds."""

    tracked: Detections
    crossings: list[Crossing]
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Detector → tracker → counter for one frame at a time."""

    def __init__(self, cfg: EdgeConfig, detector: Detector, names: tuple[str, ...]) -> None:
        """Build tracker and counter from ``cfg``; ``names`` are the model's class names."""
        self.cfg = cfg
        self.detector = detector
        self.names = names
        self.tracker = ProductTracker(cfg.tracking)
        self.counter = LineCounter(cfg.counting, names)

    def process(self, frame: Frame) -> FrameResult:
        """Run one frame through detection, tracking and counting."""
        dets = self.detector.detect(frame.image, frame.prepared)
        timings = dict(self.detector.timings)
        t0 = time.perf_counter()
        tracked = self.tracker.update(dets, frame.index)
        t1 = time.perf_counter()
        crossings = self.counter.update(tracked, frame.index, frame.timestamp)
        self.counter.prune(self.tracker.alive_ids())
        t2 = time.perf_counter()
        timings["tracking"] = (t1 - t0) * 1000
        timings["counting"] = (t2 - t1) * 1000
        return FrameResult(tracked, crossings, timings)

    def reconfigured(self, cfg: EdgeConfig, names: tuple[str, ...], detector: Detector) -> Pipeline:
        """A pipeline for ``cfg`` that keeps this one's tracker and counter where they are unchanged.

        Keeping them means a product on the line during a reload is neither lost nor counted twice.
        """
        new = Pipeline(cfg, detector, names)
        if detector is self.detector and names == self.names and cfg.tracking == self.cfg.tracking:
            new.tracker = self.tracker
            if cfg.counting == self.cfg.counting:
                new.counter = self.counter
        return new

"""The edge daemon: camera → detector → tracker → line counts and restock alerts → MQTT.

One thread runs the frame loop; MQTT has its own network thread and the durable outbox between the
two, so a slow or absent broker never stalls counting. Signals only set flags; the loop acts on them
between frames (SIGTERM/SIGINT: stop cleanly; SIGHUP: reload config and model).
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from edge.alerts import Alert, AlertEngine
from edge.annotate import Annotator, draw
from edge.backends import create_detector
from edge.backends.base import Detector
from edge.commands import Command, ResetCommand, RestockedCommand
from edge.config import EdgeConfig, load_config, require_for_run
from edge.counting import Crossing, LineCounter
from edge.errors import InferenceError, LanecountError
from edge.metrics import Metrics
from edge.model import ModelInfo, load_model_info
from edge.mot import TrackWriter
from edge.mqtt import Publisher, crossing_message
from edge.notify import Notifier
from edge.outbox import Outbox
from edge.replay import counts_document
from edge.sources import Frame, Source, open_source
from edge.store import CountStore
from edge.tracking import ProductTracker

log = logging.getLogger("lanecount")

__all__ = ["Daemon", "FrameResult", "Pipeline"]


@dataclass
class FrameResult:
    """What one frame produced, with per-stage milliseconds."""

    tracked: Any
    crossings: list[Crossing]
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Detector → tracker → counter for one frame at a time; no I/O, so bench and tests reuse it."""

    def __init__(self, cfg: EdgeConfig, detector: Detector, names: tuple[str, ...]) -> None:
        """Build tracker and counter from ``cfg``; ``names`` are the model's class names."""
        self.cfg = cfg
        self.detector = detector
        self.names = names
        self.tracker = ProductTracker(cfg.tracking)
        self.counter = LineCounter(cfg.counting, names)

    def process(self, frame: Frame) -> FrameResult:
        """Run one frame through detection, tracking and counting."""
        dets = self.detector.detect(frame.image)
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


class _Signals:
    """Signal handlers that only set flags (the loop acts on them between frames)."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self.stop = True

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload = True


class Daemon:
    """Owns the pipeline, the source, the durable state and the publisher for one config file."""

    def __init__(self, config_path: Path, counts_out: Path | None = None) -> None:
        """Load and check the config; nothing is opened until :meth:`run`."""
        self.config_path = config_path
        self.counts_out = counts_out
        self.cfg = load_config(config_path)
        require_for_run(self.cfg, str(config_path))
        self.signals = _Signals()
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.started = time.time()
        self.fps = 0.0
        self.frames = 0
        self.source: Source | None = None
        self.publisher: Publisher | None = None
        self._commands: queue.Queue[tuple[Command, Future[str]]] = queue.Queue()

    # --- start-up ------------------------------------------------------------------------------------

    def _load_model(self, cfg: EdgeConfig) -> tuple[ModelInfo, Pipeline]:
        assert cfg.model is not None
        info = load_model_info(cfg.model, base_dir=self.config_path.parent)
        detector = create_detector(cfg.backend, info)
        detector.warmup()
        return info, Pipeline(cfg, detector, info.names)

    def _open_state(self) -> None:
        state = self.cfg.state_path()
        state.mkdir(parents=True, exist_ok=True)
        self.store = CountStore(state / "counts.db")
        self.outbox = Outbox(state / "outbox.db", self.cfg.outbox.max_messages)
        self.alerts = AlertEngine(self.cfg.alerts, self.model.names, self.store)

    def _start_publisher(self) -> None:
        if not self.cfg.mqtt.enabled:
            return
        self.publisher = Publisher(
            self.cfg.mqtt,
            self.cfg.site,
            self.cfg.device,
            self.outbox,
            on_command=self._on_command,
            status_payload=self._status_payload,
            max_inflight=self.cfg.outbox.max_inflight,
        )
        self.publisher.start()

    # --- MQTT callbacks (network thread) -------------------------------------------------------------

    def _on_command(self, cmd: Command) -> str:
        """Hand a command to the frame loop (state is only touched there) and wait for its result.

        The loop polls between frames and at least once a second even without frames, so the wait is
        short; a LanecountError raised by the command becomes an ``ok: false`` reply.
        """
        done: Future[str] = Future()
        self._commands.put((cmd, done))
        return done.result(timeout=10.0)

    def _status_payload(self) -> dict[str, Any]:
        return {
            "state": "online",
            "site": self.cfg.site,
            "device": self.cfg.device,
            "model_version": self.model.version,
            "fps": round(self.fps, 2),
            "uptime_s": round(time.time() - self.started, 1),
            "frames": self.frames,
            "source": getattr(self.source, "state", "unknown"),
        }

    # --- the loop ------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until the source ends (files without loop) or a stop signal; returns an exit code."""
        self.signals.install()
        self.model, self.pipeline = self._load_model(self.cfg)
        self._open_state()
        assert self.cfg.source is not None
        self.source = open_source(self.cfg.source)
        self.annotator = Annotator(self.cfg.output, self.source.fps or 15.0)
        self._tracks_file = open(self.cfg.output.tracks, "w") if self.cfg.output.tracks else None  # noqa: SIM115
        self._tracks = TrackWriter(self._tracks_file) if self._tracks_file else None
        if self.cfg.metrics_port:
            self.metrics.serve(self.cfg.metrics_port)
        self._start_publisher()
        self.notifier.ready(f"model {self.model.version}, waiting for frames")
        log.info(
            "running: model %s (%d classes), source %s, %d line(s), mqtt %s",
            self.model.version,
            len(self.model.names),
            self.cfg.source.type,
            len(self.cfg.counting.lines),
            "on" if self.publisher else "off",
        )
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _loop(self) -> None:
        assert self.source is not None
        now = time.monotonic()
        next_counts = now + self.cfg.mqtt.publish_period_s
        next_status = now + self.cfg.mqtt.status_period_s
        window: list[float] = []
        while not self.signals.stop:
            if self.signals.reload:
                self._reload()
            self._run_commands()
            t0 = time.perf_counter()
            frame = self.source.read(timeout=1.0)
            if frame is None:
                if self.source.finished:
                    log.info("source ended after %d frames", self.frames)
                    break
                self.notifier.status(f"source {self.source.state}; no frames")
            else:
                decode_ms = (time.perf_counter() - t0) * 1000
                self._handle(frame, decode_ms)
                window.append(time.monotonic())
                window = [t for t in window if window[-1] - t <= 2.0]
                self.fps = (len(window) - 1) / max(window[-1] - window[0], 1e-6) if len(window) > 1 else 0.0
                self.notifier.frame_flowed()
            now = time.monotonic()
            if now >= next_counts:
                next_counts = now + self.cfg.mqtt.publish_period_s
                self._publish_counts()
            if now >= next_status:
                next_status = now + self.cfg.mqtt.status_period_s
                self._periodic_status()

    def _handle(self, frame: Frame, decode_ms: float) -> None:
        try:
            result = self.pipeline.process(frame)
        except InferenceError as exc:
            log.warning("frame %d skipped: %s", frame.index, exc)
            return
        self.frames += 1
        t0 = time.perf_counter()
        if result.crossings:
            self.store.add(result.crossings, self.model.names)
            for c in result.crossings:
                self._publish_crossing(c)
            self._publish_alerts(self.alerts.on_crossings(result.crossings))
        self._publish_alerts(self.alerts.on_frame(result.tracked, frame.timestamp))
        result.timings["decode"] = decode_ms
        result.timings["publishing"] = (time.perf_counter() - t0) * 1000
        self.metrics.observe_stages(result.timings)
        self.metrics.frames.inc()
        self.metrics.tracks.set(len(result.tracked))
        if self._tracks is not None:
            self._tracks.write(frame.index + 1, result.tracked)  # MOT frames count from 1
        if self.annotator.wants():
            totals = counts_document(self.pipeline.counter.totals, list(self.model.names))["lines"]
            image = draw(frame.image, result.tracked, self.model.names, self.cfg.counting.lines, totals)
            self.annotator.write(image, frame.index)
        elif self.annotator.enabled:
            self.annotator.skip()

    def _name(self, class_id: int) -> str:
        names = self.model.names
        return names[class_id] if 0 <= class_id < len(names) else str(class_id)

    def _publish(self, kind: str, payload: dict[str, Any], retain: bool = False) -> None:
        if self.publisher is not None:
            self.publisher.publish(kind, payload, retain=retain)

    def _publish_crossing(self, c: Crossing) -> None:
        self.metrics.crossings.labels(c.line, self._name(int(c.class_id)), c.direction).inc()
        self._publish("events/crossing", crossing_message(c, self.model.names))

    def _publish_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            log.warning("restock alert: %s", alert)
            self._publish(alert.topic_kind, alert.to_payload(), retain=alert.retain)

    def _publish_counts(self) -> None:
        self._publish("counts", self.store.counts_message())
        self.metrics.outbox_depth.set(self.outbox.depth())
        self.metrics.outbox_dropped.set(self.outbox.dropped)

    def _periodic_status(self) -> None:
        assert self.source is not None
        self.metrics.fps.set(self.fps)
        self.metrics.source_reconnects.set(self.source.reconnects)
        self.metrics.mqtt_connected.set(1 if self.publisher and self.publisher.connected else 0)
        totals = self.store.totals()
        n = sum(sum(v.values()) for by_dir in totals.values() for v in by_dir.values())
        self.notifier.status(f"{self.fps:.1f} fps, {n} counted, source {self.source.state}")
        if self.publisher is not None:
            self.publisher.publish_status()

    # --- commands, reload, shutdown --------------------------------------------------------------------

    def _run_commands(self) -> None:
        while not self._commands.empty():
            cmd, done = self._commands.get_nowait()
            try:
                done.set_result(self._execute(cmd))
            except LanecountError as exc:
                done.set_exception(exc)

    def _execute(self, cmd: Command) -> str:
        if isinstance(cmd, ResetCommand):
            n = self.store.reset(cmd.line)
            return f"counts reset ({cmd.line or 'all lines'}, {n} counters)"
        if isinstance(cmd, RestockedCommand):
            self._publish_alerts(self.alerts.restocked(cmd.product, cmd.stock))
            return f"{cmd.product} restocked"
        self.signals.reload = True
        return "reload scheduled"

    def _reload(self) -> None:
        """SIGHUP: re-read config and model; keep the running ones when the new ones are bad."""
        self.signals.reload = False
        self.notifier.reloading()
        try:
            cfg = load_config(self.config_path)
            require_for_run(cfg, str(self.config_path))
            model, pipeline = self._load_model(cfg)
        except LanecountError as exc:
            log.error("reload rejected, keeping the running config and model: %s", exc)
            self.notifier.ready("reload rejected")
            return
        self.pipeline.detector.close()
        self.cfg, self.model, self.pipeline = cfg, model, pipeline
        self.alerts = AlertEngine(cfg.alerts, model.names, self.store)
        log.info("reloaded: model %s", model.version)
        self.notifier.ready(f"reloaded model {model.version}")

    def _shutdown(self) -> None:
        self.notifier.stopping()
        if self.source is not None:
            self.source.close()
        self.annotator.close()
        if self._tracks_file is not None:
            self._tracks_file.close()
        if self.counts_out is not None:
            counts = counts_document(self.pipeline.counter.totals, list(self.model.names))
            self.counts_out.parent.mkdir(parents=True, exist_ok=True)
            self.counts_out.write_text(json.dumps(counts, indent=2, sort_keys=True) + "\n")
        if self.publisher is not None:
            self._publish_counts()
            self.publisher.stop(timeout=10.0)
        self.pipeline.detector.close()
        self.store.close()
        self.outbox.close()
        log.info("stopped after %d frames", self.frames)


"""The edge daemon: camera → detector → tracker → line counts and restock alerts → MQTT.

One thread runs the frame loop; MQTT has its own network thread and the durable outbox between the
two, so a slow or absent broker never stalls counting. Signals only set flags; the loop acts on them
between frames (SIGTERM/SIGINT: stop cleanly; SIGHUP: reload config and model).

Start-up is ordered (model, durable state, source, outputs, metrics, MQTT, then ``READY=1``) and each
step registers its own undo, so a failure part-way (a missing video, a busy metrics port) closes what
was already open, and a clean stop undoes the steps in reverse, each guarded, so one failing close does
not skip the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import queue
import signal
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from edge.alerts import Alert, AlertEngine
from edge.annotate import Annotator, draw
from edge.backends import create_detector
from edge.commands import Command, ResetCommand, RestockedCommand
from edge.config import EdgeConfig, load_config, require_for_run
from edge.counting import Crossing
from edge.errors import CommandError, ConfigError, InferenceError, LanecountError
from edge.metrics import Metrics
from edge.model import ModelInfo, load_model_info
from edge.mot import TrackWriter
from edge.mqtt import Publisher, crossing_message
from edge.notify import Notifier
from edge.outbox import Outbox
from edge.pipeline import FrameResult, Pipeline
from edge.replay import counts_document
from edge.sources import Frame, ReadAhead, Source, open_source
from edge.store import CountStore

log = logging.getLogger("lanecount")

__all__ = ["Daemon", "FrameResult", "Pipeline"]

_COMMAND_WAIT_S = 10.0  # longest a command waits for the frame loop (which polls at least once a second)
_FPS_WINDOW_S = 2.0
# Sections a SIGHUP cannot apply: they belong to resources opened once at start-up.
_RESTART_ONLY = ("site", "device", "state_dir", "source", "outbox", "output", "metrics_port")

LineCounts = dict[str, dict[str, dict[str, int]]]


class _Signals:
    """Signal handlers that only set flags (the loop acts on them between frames)."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (main thread only; elsewhere the owner sets ``stop`` itself)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in (
            (signal.SIGTERM, self._on_stop),
            (signal.SIGINT, self._on_stop),
            (signal.SIGHUP, self._on_hup),
        ):
            self._previous[sig] = signal.signal(sig, handler)

    def restore(self) -> None:
        """Put back the handlers found by :meth:`install` (a daemon run in-process, e.g. by tests)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self.stop = True

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload = True


class Daemon:
    """Owns the pipeline, the source, the durable state and the publisher for one config file.

    Args:
        config_path: the YAML config (re-read on SIGHUP and on the ``reload`` command).
        counts_out: where to write this run's final counts (``counts.json`` shape) when it stops.

    Raises:
        ConfigError: the config is invalid or lacks ``model``/``source``.

    Example:
        >>> Daemon(Path("lane.yaml"), counts_out=Path("counts.json")).run()  # doctest: +SKIP
        0
    """

    def __init__(self, config_path: Path, counts_out: Path | None = None) -> None:
        """Load and check the config; nothing is opened until :meth:`run`."""
        self.config_path = Path(config_path)
        self.counts_out = counts_out
        self.cfg = load_config(self.config_path)
        require_for_run(self.cfg, str(self.config_path))
        self.signals = _Signals()
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.started = time.time()
        self.fps = 0.0
        self.frames = 0
        self.first_frame_at: float | None = None  # monotonic times of the first and last frame (bench)
        self.last_frame_at: float | None = None
        self.source: Source | None = None
        self.publisher: Publisher | None = None
        self._commands: queue.Queue[tuple[Command, Future[str]]] = queue.Queue()
        self._closers: list[tuple[str, Callable[[], None]]] = []
        self._stopping = False
        self._frame_times: deque[float] = deque()
        self._carried: LineCounts = {}  # counts of counters replaced by a reload, for counts_out
        self._next_counts = self._next_status = 0.0
        self._ready = False

    # --- start-up ------------------------------------------------------------------------------------

    def _defer(self, name: str, close: Callable[[], None]) -> None:
        """Register the undo of a start-up step; :meth:`_shutdown` runs them in reverse."""
        self._closers.append((name, close))

    def _start(self) -> None:
        assert self.cfg.source is not None
        self.model, self.pipeline = self._load_model(self.cfg)
        self._defer("detector", lambda: self.pipeline.detector.close())
        self._open_state()
        self.source = open_source(self.cfg.source, base_dir=self.config_path.parent)
        self._defer("source", self.source.close)
        if isinstance(self.source, ReadAhead):
            # Letterbox in the reader thread, so it overlaps the previous frame's inference.
            self.source.transform = self._prepare_ahead
        self._open_outputs(self.source.fps or 15.0)
        self._serve_metrics()
        self._start_publisher()
        self._ready = True
        self.notifier.ready(f"model {self.model.version}, waiting for frames")
        log.info(
            "running: model %s (%d classes), source %s, %d line(s), mqtt %s",
            self.model.version,
            len(self.model.names),
            self.cfg.source.type,
            len(self.cfg.counting.lines),
            "on" if self.publisher else "off",
        )

    def _prepare_ahead(self, frame: Frame) -> Frame:
        return dataclasses.replace(frame, prepared=self.pipeline.detector.prepare(frame.image))

    def _load_model(self, cfg: EdgeConfig, info: ModelInfo | None = None) -> tuple[ModelInfo, Pipeline]:
        assert cfg.model is not None
        info = info or load_model_info(cfg.model, base_dir=self.config_path.parent)
        detector = create_detector(cfg.backend, info)
        try:
            # Warm up before READY/WATCHDOG, so the slow first inference does not trip WatchdogSec.
            detector.warmup()
            return info, Pipeline(cfg, detector, info.names)
        except BaseException:
            detector.close()
            raise

    def _open_state(self) -> None:
        state = self.cfg.state_path()
        try:
            state.mkdir(parents=True, exist_ok=True)
            self.store = CountStore(state / "counts.db")
            self._defer("counts store", self.store.close)
            self.outbox = Outbox(state / "outbox.db", self.cfg.outbox.max_messages)
            self._defer("outbox", self.outbox.close)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"{self.config_path}: state_dir: cannot use {state}: {exc}") from None
        self.alerts = AlertEngine(self.cfg.alerts, self.model.names, self.store)

    def _open_outputs(self, fps: float) -> None:
        self.annotator = Annotator(self.cfg.output, fps)
        self._defer("annotated output", self.annotator.close)
        self._tracks: TrackWriter | None = None
        self._tracks_file: TextIO | None = None
        if self.cfg.output.tracks:
            self._tracks_file = _open_for_writing(self.cfg.output.tracks, "output.tracks")
            self._defer("tracks file", self._tracks_file.close)
            self._tracks = TrackWriter(self._tracks_file)
        if self.counts_out is not None:
            self._defer("counts-out", self._write_counts_out)

    def _serve_metrics(self) -> None:
        if not self.cfg.metrics_port:
            return
        try:
            self.metrics.serve(self.cfg.metrics_port)
        except OSError as exc:
            raise ConfigError(
                f"{self.config_path}: metrics_port: cannot serve on port {self.cfg.metrics_port}: "
                f"{exc.strerror or exc}"
            ) from None

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
        self._defer("mqtt", self._stop_publisher)

    # --- MQTT callbacks (network thread) -------------------------------------------------------------

    def _on_command(self, cmd: Command) -> str:
        """Hand a command to the frame loop (state is only touched there) and wait for its result.

        The loop polls between frames and at least once a second even without frames. A command the
        loop has not started within ``_COMMAND_WAIT_S``, or one arriving while the daemon stops, is
        cancelled and never runs later: its sender gets an ``ok: false`` reply and may send it again.

        Raises:
            CommandError: the command was refused or not run; a LanecountError it raised is passed on.
        """
        if self._stopping:
            raise CommandError(f"command {cmd.command!r}: the daemon is stopping; not executed")
        done: Future[str] = Future()
        self._commands.put((cmd, done))
        deadline = time.monotonic() + _COMMAND_WAIT_S
        while True:
            try:
                return done.result(timeout=0.2)
            except TimeoutError:
                if not (self._stopping or time.monotonic() >= deadline):
                    continue
                if done.cancel():
                    why = "the daemon is stopping" if self._stopping else "the frame loop is busy"
                    raise CommandError(f"command {cmd.command!r}: {why}; not executed") from None

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
        """Run until the source ends (files without loop) or a stop signal; returns an exit code.

        Raises:
            LanecountError: a user mistake found at start-up (model, source, state_dir, ports); what
                was already opened is closed again.
        """
        self.signals.install()
        try:
            self._start()
            self._loop()
        finally:
            self._shutdown()
            self.signals.restore()
        return 0

    def _loop(self) -> None:
        assert self.source is not None
        now = time.monotonic()
        self._next_counts = now + self.cfg.mqtt.publish_period_s
        self._next_status = now + self.cfg.mqtt.status_period_s
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
                self._handle(frame, (time.perf_counter() - t0) * 1000)
                self.last_frame_at = time.monotonic()
                self.first_frame_at = self.first_frame_at or self.last_frame_at
                self._frame_times.append(self.last_frame_at)
                self.notifier.frame_flowed()
            self._periodic(time.monotonic())

    def _periodic(self, now: float) -> None:
        self.fps = self._recent_fps(now)
        if now >= self._next_counts:
            self._next_counts = now + self.cfg.mqtt.publish_period_s
            self._publish_counts()
        if now >= self._next_status:
            self._next_status = now + self.cfg.mqtt.status_period_s
            self._periodic_status()

    def _recent_fps(self, now: float) -> float:
        """Frames per second over the last two seconds; 0 once frames stop (a stalled camera)."""
        times = self._frame_times
        while times and now - times[0] > _FPS_WINDOW_S:
            times.popleft()
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)

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
            totals = self.run_counts()
            image = draw(frame.image, result.tracked, self.model.names, self.cfg.counting.lines, totals)
            self.annotator.write(image, frame.index)
        elif self.annotator.enabled:
            self.annotator.skip()

    def run_counts(self) -> LineCounts:
        """This run's counts ``{line: {"in": {class: n}, "out": {class: n}}}``, across reloads."""
        current = counts_document(self.pipeline.counter.totals, list(self.model.names))["lines"]
        return _merge_counts(self._carried, current)

    def _publish(self, kind: str, payload: dict[str, Any], retain: bool = False) -> None:
        if self.publisher is not None:
            self.publisher.publish(kind, payload, retain=retain)

    def _publish_crossing(self, c: Crossing) -> None:
        message = crossing_message(c, self.model.names)
        self.metrics.crossings.labels(c.line, message["class_name"], c.direction).inc()
        if self.source is not None and not self.source.live:
            # Recordings stamp frames with media time; the event carries both clocks.
            message["media_time_s"] = message["timestamp"]
            message["timestamp"] = time.time()
        self._publish("events/crossing", message)

    def _publish_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            log.warning("restock alert: %s %s %s", alert.kind, alert.product, alert.state)
            self._publish(alert.topic_kind, alert.to_payload(), retain=alert.retain)
        if alerts:
            self.metrics.alerts.set(len(self.alerts.active()))

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

    # --- commands ------------------------------------------------------------------------------------

    def _run_commands(self) -> None:
        while True:
            try:
                cmd, done = self._commands.get_nowait()
            except queue.Empty:
                return
            if not done.set_running_or_notify_cancel():
                continue  # its sender already got a "not executed" reply
            try:
                done.set_result(self._execute(cmd))
            except LanecountError as exc:
                done.set_exception(exc)
            except Exception as exc:  # a failing command must not take the frame loop down
                log.exception("command %r failed", cmd.command)
                done.set_exception(exc)

    def _execute(self, cmd: Command) -> str:
        if isinstance(cmd, ResetCommand):
            known = {line.name for line in self.cfg.counting.lines} | set(self.store.totals())
            if cmd.line is not None and cmd.line not in known:
                raise CommandError(f"reset: unknown line {cmd.line!r}; lines: {', '.join(sorted(known))}")
            n = self.store.reset(cmd.line)
            return f"counts reset ({cmd.line or 'all lines'}, {n} counters)"
        if isinstance(cmd, RestockedCommand):
            self._publish_alerts(self.alerts.restocked(cmd.product, cmd.stock))
            return f"{cmd.product} restocked"
        self.signals.reload = True
        return "reload scheduled"

    def _refuse_pending_commands(self) -> None:
        while True:
            try:
                cmd, done = self._commands.get_nowait()
            except queue.Empty:
                return
            if done.set_running_or_notify_cancel():
                done.set_exception(
                    CommandError(f"command {cmd.command!r}: the daemon is stopping; not executed")
                )

    # --- reload --------------------------------------------------------------------------------------

    def _reload(self) -> None:
        """SIGHUP: re-read config and model; keep the running ones when the new ones are bad."""
        self.signals.reload = False
        self.notifier.reloading()
        try:
            cfg = load_config(self.config_path)
            require_for_run(cfg, str(self.config_path))
            cfg = self._keep_restart_only(cfg)
            model, pipeline = self._reload_pipeline(cfg)
        except LanecountError as exc:
            log.error(
                "reload rejected, keeping the running config and model: %s", str(exc).replace("\n", "; ")
            )
            self.notifier.ready("reload rejected; running the previous config")
            return
        try:
            alerts = AlertEngine(cfg.alerts, model.names, self.store)
        except LanecountError as exc:
            if pipeline.detector is not self.pipeline.detector:
                pipeline.detector.close()
            log.error("reload rejected, keeping the running config and model: %s", exc)
            self.notifier.ready("reload rejected; running the previous config")
            return
        self._swap(cfg, model, pipeline, alerts)

    def _keep_restart_only(self, cfg: EdgeConfig) -> EdgeConfig:
        """Keep the running values of what only a restart can change, with a warning naming them."""
        keep: dict[str, Any] = {
            k: getattr(self.cfg, k) for k in _RESTART_ONLY if getattr(cfg, k) != getattr(self.cfg, k)
        }
        periods = {"publish_period_s": cfg.mqtt.publish_period_s, "status_period_s": cfg.mqtt.status_period_s}
        mqtt = self.cfg.mqtt.model_copy(update=periods)
        if mqtt != cfg.mqtt:
            keep["mqtt"] = mqtt
        if not keep:
            return cfg
        log.warning("reload: %s changed; that takes effect after a restart", ", ".join(sorted(keep)))
        return cfg.model_copy(update=keep)

    def _reload_pipeline(self, cfg: EdgeConfig) -> tuple[ModelInfo, Pipeline]:
        """A pipeline for ``cfg`` that reuses the detector, tracker and counter where they are unchanged.

        Keeping the tracker and counter means a product on the line during the reload is neither
        lost nor counted twice; a new model file (same path, new checksum) is loaded afresh.
        """
        assert cfg.model is not None
        info = load_model_info(cfg.model, base_dir=self.config_path.parent)
        old = self.pipeline
        if info != self.model or cfg.backend != self.cfg.backend:
            return self._load_model(cfg, info)
        pipeline = Pipeline(cfg, old.detector, info.names)
        if cfg.tracking == self.cfg.tracking:
            pipeline.tracker = old.tracker
            if cfg.counting == self.cfg.counting:
                pipeline.counter = old.counter
        return info, pipeline

    def _swap(self, cfg: EdgeConfig, model: ModelInfo, pipeline: Pipeline, alerts: AlertEngine) -> None:
        old = self.pipeline
        if pipeline.counter is not old.counter:
            self._carried = self.run_counts()
        if pipeline.detector is not old.detector:
            old.detector.close()
        if cfg.log_level != self.cfg.log_level:
            logging.getLogger().setLevel(cfg.log_level)
        self.cfg, self.model, self.pipeline, self.alerts = cfg, model, pipeline, alerts
        # A shorter period applies now, not after the old (possibly long) one has run out.
        now = time.monotonic()
        self._next_counts = min(self._next_counts, now + cfg.mqtt.publish_period_s)
        self._next_status = min(self._next_status, now + cfg.mqtt.status_period_s)
        log.info(
            "reloaded %s: model %s, %d line(s), publish every %g s",
            self.config_path,
            model.version,
            len(cfg.counting.lines),
            cfg.mqtt.publish_period_s,
        )
        self.notifier.ready(f"reloaded, model {model.version}")

    # --- shutdown ------------------------------------------------------------------------------------

    def _stop_publisher(self) -> None:
        assert self.publisher is not None
        self._publish_counts()
        self.publisher.stop(timeout=10.0)

    def _write_counts_out(self) -> None:
        assert self.counts_out is not None
        self.counts_out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"lines": self.run_counts()}
        self.counts_out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def _shutdown(self) -> None:
        """Undo the start-up steps that ran, in reverse; one failing step does not skip the others."""
        self._stopping = True
        self.notifier.stopping()
        self._refuse_pending_commands()
        while self._closers:
            name, close = self._closers.pop()
            try:
                close()
            except Exception:
                log.exception("shutdown: closing the %s failed", name)
        self._refuse_pending_commands()
        if self._ready:  # a start-up mistake is reported by the caller as one line, nothing else
            log.info("stopped after %d frames", self.frames)


def _open_for_writing(path: str, field_name: str) -> TextIO:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        return p.open("w", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{field_name}: cannot write {p}: {exc.strerror or exc}") from None


def _merge_counts(a: LineCounts, b: LineCounts) -> LineCounts:
    """Sum two ``{line: {direction: {class: n}}}`` documents."""
    out = copy.deepcopy(a)
    for line, by_dir in b.items():
        dst = out.setdefault(line, {"in": {}, "out": {}})
        for direction, per in by_dir.items():
            bucket = dst.setdefault(direction, {})
            for cls, n in per.items():
                bucket[cls] = bucket.get(cls, 0) + n
    return out

"""The edge daemon: camera → detector → tracker → line counts and restock alerts → MQTT.

The frame path, top-down (:meth:`Daemon._handle`)::

    frame ─▶ pipeline (detect, track, count) ─▶ alerts ─▶ state.commit (ONE transaction) ─▶ outputs

One thread runs the frame loop; MQTT has its own network thread, and the durable outbox (inside the
state database) sits between the two, so a slow or absent broker never stalls counting. Signals only
set flags; the loop acts on them between frames (SIGTERM/SIGINT: stop; SIGHUP: reload config and model).

The loop turns at least once a second, frames or not, and each turn feeds the systemd watchdog: a
camera that is down is reported (status ``"source": "reconnecting"``, a metric, the retained
``alerts/source`` after ``source.alert_after_s``), not "fixed" by a restart loop. A hung inference
stops the turns, and systemd restarts the service; inference failing on every frame for
``backend.max_failure_s``, or state that cannot be written (by a frame or a command), ends the run
with exit code 1. Counts are reported per period aligned to the clock (:mod:`edge.periods`): the
period ending at a boundary is queued before any frame stamped at or after it is committed.

Start-up is ordered (model, durable state, source, outputs, metrics, MQTT, then ``READY=1``) and each
step registers its own undo, so a failure part-way closes what was already open, and a stop undoes the
steps in reverse, each guarded.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge.alerts import Alert, AlertEngine
from edge.backends import create_detector
from edge.commands import Answered, Command, CommandBridge
from edge.config import EdgeConfig, load_config, reloadable, require_for_run
from edge.counts import Counts, class_name
from edge.db import one_line
from edge.errors import ConfigError, FatalError, InferenceError, LanecountError
from edge.executor import execute
from edge.health import FailureClock, FpsMeter, Signals
from edge.messages import Clock, alert_message, crossing_message, source_alert_message
from edge.metrics import Metrics
from edge.model import ModelInfo, load_model_info
from edge.mqtt import Publisher
from edge.notify import Notifier
from edge.outputs import Outputs
from edge.periods import next_boundary
from edge.pipeline import FrameResult, Pipeline
from edge.recordings import resume_point
from edge.sources import Frame, ReadAhead, Source, open_source
from edge.state import FrameCommit, OutMessage, Progress, StateStore
from edge.statedir import StateInUse
from edge.validate import validate_for_run

log = logging.getLogger("lanecount")

__all__ = ["Daemon", "FrameResult", "Pipeline"]

_PROGRESS_EVERY_S = 1.0  # a recording's progress is saved at least this often (and with every commit)
# A resumed recording re-reads this many frames before the first uncounted one, without counting, so
# the tracker knows the products already on the belt (their side of the line) when counting resumes.
_RESUME_WARMUP_FRAMES = 90
_SOURCE_ALERT_KEY = "alert:source"


class Daemon:
    """Owns the pipeline, the source, the durable state and the publisher for one config file.

    Args:
        config_path: the YAML config (re-read on SIGHUP and on the ``reload`` command).
        counts_out: where to write this run's final counts (``counts.json`` shape) when it stops.
        recount: count a recording again even if this state already counted it.

    Raises:
        ConfigError: the config is invalid or lacks ``model``/``source``.

    Example:
        >>> Daemon(Path("lane.yaml"), counts_out=Path("counts.json")).run()  # doctest: +SKIP
        0
    """

    def __init__(self, config_path: Path, counts_out: Path | None = None, recount: bool = False) -> None:
        """Load and check the config; nothing is opened until :meth:`run`."""
        self.config_path = Path(config_path)
        self.counts_out = counts_out
        self.recount = recount
        self.cfg = load_config(self.config_path)
        require_for_run(self.cfg, str(self.config_path))
        self.signals = Signals()
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.commands = CommandBridge()
        self.started = time.time()
        self.fps = 0.0
        self.frames = 0
        self.first_frame_at: float | None = None  # monotonic times of the first and last frame (bench)
        self.last_frame_at: float | None = None
        self.run_counts = Counts()  # this run's crossings (the overlay and --counts-out)
        self.source: Source | None = None
        self.publisher: Publisher | None = None
        self.exit_code = 0
        self.offline_reason = "shutdown"
        self._closers: list[tuple[str, Callable[[], None]]] = []
        self._fps = FpsMeter()
        self._recording: str | None = None  # the recording's identity when it is resumable
        self._resume_at = 0  # frames before this one were counted by an earlier run
        self._last_index = -1
        self._source_down = False  # the retained alerts/source alert is raised
        self._finished = False
        self._boundary = 0.0  # wall time the current counts period ends (edge.periods)
        self._next_status = self._next_progress = 0.0
        self._no_frames = FailureClock()
        self._inference = FailureClock()
        self._ready = False

    # --- start-up ------------------------------------------------------------------------------------

    def _defer(self, name: str, close: Callable[[], None]) -> None:
        """Register the undo of a start-up step; :meth:`_shutdown` runs them in reverse."""
        self._closers.append((name, close))

    def _start(self) -> bool:
        """Open everything; ``False`` when there is nothing to do (a recording already counted)."""
        assert self.cfg.source is not None
        # The same checks as check-config, all reported at once before anything is opened.
        self.model, self.pipeline = self._load_model(self.cfg, validate_for_run(self.cfg, self.config_path))
        self._defer("detector", lambda: self.pipeline.detector.close())
        self._open_state()
        if not self._plan_recording():
            return False
        self.source = open_source(
            self.cfg.source, base_dir=self.config_path.parent, start=self._warmup_start()
        )
        self._defer("source", self.source.close)
        if isinstance(self.source, ReadAhead):
            # Letterbox in the reader thread, so it overlaps the previous frame's inference.
            self.source.transform = self._prepare_ahead
        self.outputs = Outputs(self.cfg, self.source.fps or 15.0, self.model.names, self.cfg.source.type)
        self._defer("outputs", self.outputs.close)
        if self.counts_out is not None:
            self._defer("counts-out", self._write_counts_out)
        self._serve_metrics()
        self._start_publisher()
        self._ready = True
        self.notifier.ready(f"model {self.model.version}, waiting for frames")
        log.info(
            "running: model %s (%d classes), source %s, %d line(s), mqtt %s, epoch %s",
            self.model.version,
            len(self.model.names),
            self.cfg.source.type,
            len(self.cfg.counting.lines),
            "on" if self.publisher else "off",
            self.state.epoch,
        )
        return True

    def _prepare_ahead(self, frame: Frame) -> Frame:
        return replace(frame, prepared=self.pipeline.detector.prepare(frame.image))

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
        db = self.cfg.state_path() / "state.db"
        try:
            self.state = StateStore(
                db,
                topic_base=f"{self.cfg.mqtt.prefix}/{self.cfg.site}/{self.cfg.device}",
                envelope={"site": self.cfg.site, "device": self.cfg.device},
                max_messages=self.cfg.outbox.max_messages,
                publish=self.cfg.mqtt.enabled,
            )
        except StateInUse as exc:
            raise ConfigError(f"{self.config_path}: state_dir: {exc}") from None
        except (OSError, sqlite3.Error) as exc:  # not damage (that is moved aside): leave it as it is
            raise FatalError(f"cannot open {db}: {one_line(str(exc))}; nothing was changed") from None
        self._defer("state", self.state.close)
        self.state.outbox.on_drop = lambda n: self.metrics.outbox_dropped.set(self.state.outbox.dropped)
        saved = self.state.alert_state()
        self.alerts = AlertEngine(self.cfg.alerts, self.model.names, saved)
        self._source_down = bool(saved.get(_SOURCE_ALERT_KEY, {}).get("raised"))
        self._roll(time.time())  # periods that ended while the daemon was not running come first

    def _plan_recording(self) -> bool:
        """Resume a recording where the last run stopped; refuse to count a finished one twice."""
        assert self.cfg.source is not None
        plan = resume_point(self.state, self.cfg.source, self.config_path.parent, self.recount)
        if plan is None:
            return False
        self._recording, self._resume_at = plan
        return True

    def _warmup_start(self) -> int:
        return max(0, self._resume_at - _RESUME_WARMUP_FRAMES)

    def _serve_metrics(self) -> None:
        if not self.cfg.metrics_port:
            return
        try:
            self.metrics.serve(self.cfg.metrics_port, self.cfg.metrics_host)
            self._defer("metrics", self.metrics.close)
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
            self.state.outbox,
            on_command=self.commands.submit,
            status_payload=self._status_payload,
            max_inflight=self.cfg.outbox.max_inflight,
        )
        self.publisher.start()
        self._defer("mqtt", self._stop_publisher)

    def _status_payload(self) -> dict[str, Any]:
        """The ``online`` status (published by the MQTT drain thread, the one status publisher)."""
        body: dict[str, Any] = {  # site, device, state and timestamp are the publisher's
            "model_version": self.model.version,
            "fps": round(self.fps, 2),
            "uptime_s": round(time.time() - self.started, 1),
            "frames": self.frames,
            "source": getattr(self.source, "state", "unknown"),
            "epoch": self.state.epoch,
        }
        if self.state.recovered:
            body["state_recovered"] = self.state.recovered
        return body

    # --- the loop ------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until the source ends (files without loop) or a stop signal.

        Returns:
            0 after a normal end or stop; 1 when the run could not go on (see :class:`FatalError`).

        Raises:
            LanecountError: a user mistake found at start-up (model, source, state_dir, ports); what
                was already opened is closed again.
        """
        self.signals.install()
        try:
            if self._start():
                self._loop()
        except FatalError as exc:
            log.error("stopping: %s", exc)
            self.exit_code, self.offline_reason = 1, f"error: {exc}"
        finally:
            self._shutdown()
            self.signals.restore()
        return self.exit_code

    def _loop(self) -> None:
        assert self.source is not None
        self._next_status = time.monotonic() + self.cfg.mqtt.status_period_s
        # The loop turns at least this often without frames, and feeds the watchdog each turn.
        turn_s = min(1.0, self.notifier.watchdog_interval or 1.0)
        while not self.signals.stop:
            if self.signals.reload:
                self._reload()
            self.commands.run_pending(self._execute)
            t0 = time.perf_counter()
            frame = self.source.read(timeout=turn_s)
            if frame is not None:
                self._handle(frame, (time.perf_counter() - t0) * 1000)
            elif self.source.finished:
                log.info("source ended after %d frames", self.frames)
                self._finished = True
                break
            else:
                self._without_frames(time.monotonic())
            self._periodic(time.monotonic())
            self.notifier.alive()
        self._save_progress(force=True)

    def _handle(self, frame: Frame, decode_ms: float) -> None:
        """One frame: pipeline → alerts → one state commit → outputs."""
        result = self._process(frame)
        self._last_index = frame.index
        if result is None or frame.index < self._resume_at:
            return  # a failed inference, or a warm-up frame of a resumed recording (already counted)
        clock = Clock(time.time(), None if self.source is None or self.source.live else frame.timestamp)
        alerts = self.alerts.on_crossings(result.crossings) + self.alerts.on_frame(
            result.tracked, frame.timestamp
        )
        t0 = time.perf_counter()
        if clock.wall >= self._boundary:  # this frame's crossings belong to the next period
            self._roll(clock.wall)
        change = self._frame_commit(frame, result, alerts, clock)
        if change.changes_state():
            self._commit(change)
        self.run_counts += change.counts
        self._after_commit(change, alerts)
        result.timings["decode"] = decode_ms
        result.timings["publishing"] = (time.perf_counter() - t0) * 1000
        self._observe(frame, result)
        self.outputs.write(frame.image, frame.index, result.tracked, self.run_counts)

    def _process(self, frame: Frame) -> FrameResult | None:
        try:
            result = self.pipeline.process(frame)
        except InferenceError as exc:
            failing = self._inference.failed(time.monotonic())
            log.warning("frame %d skipped: %s", frame.index, exc)
            if failing >= self.cfg.backend.max_failure_s:
                raise FatalError(f"inference has failed on every frame for {failing:.0f} s: {exc}") from None
            return None
        self._inference.ok()
        return result

    def _frame_commit(
        self, frame: Frame, result: FrameResult, alerts: list[Alert], clock: Clock
    ) -> FrameCommit:
        names = self.model.names
        counts = Counts.of((c.line, c.direction, class_name(names, c.class_id)) for c in result.crossings)
        messages: list[OutMessage] = []
        if self.publisher is not None:
            messages += [crossing_message(c, names, clock) for c in result.crossings]
            messages += [alert_message(a, clock) for a in alerts]
        progress = None
        if self._recording is not None:
            progress = Progress(self._recording, frame.index + 1)
        return FrameCommit(counts, self.alerts.take_changes(), messages, progress)

    def _commit(self, change: FrameCommit) -> None:
        """Commit, or end the run (exit 1) when the state cannot be written (counts must not run ahead)."""
        try:
            self.state.commit(change)
        except sqlite3.Error as exc:
            raise FatalError(
                f"cannot write the state database ({exc}); nothing of this frame was recorded"
            ) from None
        if change.progress is not None:
            self._next_progress = time.monotonic() + _PROGRESS_EVERY_S
        if change.messages and self.publisher is not None:
            self.publisher.wake()

    def _after_commit(self, change: FrameCommit, alerts: list[Alert]) -> None:
        for (line, direction, product), n in change.counts.items():
            self.metrics.crossings.labels(line, product, direction).inc(n)
        self._note_alerts(alerts)

    def _note_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            log.warning("restock alert: %s %s %s", alert.kind, alert.product, alert.state)
        if alerts:
            self.metrics.alerts.set(len(self.alerts.active()))

    def _observe(self, frame: Frame, result: FrameResult) -> None:
        self.frames += 1
        self.last_frame_at = time.monotonic()
        self.first_frame_at = self.first_frame_at or self.last_frame_at
        self._fps.tick(self.last_frame_at)
        self.metrics.observe_stages(result.timings)
        self.metrics.frames.inc()
        self.metrics.tracks.set(len(result.tracked))
        self.metrics.source_up.set(1)
        down_for = self._no_frames.ok()
        if down_for is not None and self._source_down:
            self._source_alert(False, down_for)

    def _without_frames(self, now: float) -> None:
        """A loop turn without a frame: say so, and raise the source alert once it lasts."""
        assert self.source is not None
        down_for = self._no_frames.failed(now)
        self.metrics.source_up.set(0)
        self.notifier.status(f"source {self.source.state}; no frames for {down_for:.0f} s")
        assert self.cfg.source is not None
        if self.source.live and not self._source_down and down_for >= self.cfg.source.alert_after_s:
            self._source_alert(True, down_for)
            if self.publisher is not None:
                self.publisher.request_status()

    def _source_alert(self, raised: bool, down_s: float) -> None:
        assert self.source is not None
        log.warning("source %s: %s after %.0f s", self.source.state, "down" if raised else "back", down_s)
        msg = source_alert_message(raised, self.source.state, down_s, self.source.error, time.time())
        messages = [msg] if self.publisher is not None else []
        self._commit(FrameCommit(alert_state={_SOURCE_ALERT_KEY: {"raised": raised}}, messages=messages))
        self._source_down = raised

    def _periodic(self, now: float) -> None:
        self.fps = self._fps.rate(now)
        wall = time.time()
        if wall >= self._boundary:
            self._roll(wall)
        if now >= self._next_status:
            self._next_status = now + self.cfg.mqtt.status_period_s
            self._periodic_status()
        self._save_progress()

    def _save_progress(self, force: bool = False) -> None:
        """Record how far a recording got; at least once a second, and at the end (finished or not)."""
        if self._recording is None or not self._ready or self._last_index < 0:
            return
        if not force and time.monotonic() < self._next_progress:
            return
        frames = max(self._resume_at, self._last_index + 1)
        self._commit(FrameCommit(progress=Progress(self._recording, frames, finished=self._finished)))

    def _roll(self, wall: float) -> None:
        """Close the counts periods due at ``wall``; with MQTT off they roll without a message."""
        lines = [line.name for line in self.cfg.counting.lines]
        try:
            self._boundary = self.state.roll(wall, self.cfg.mqtt.publish_period_s, lines)
        except sqlite3.Error as exc:
            raise FatalError(f"cannot write the state database ({exc})") from None
        if self.publisher is not None:
            self.publisher.wake()

    def _periodic_status(self) -> None:
        assert self.source is not None
        self.metrics.outbox_depth.set(self.state.outbox.depth())
        self.metrics.outbox_dropped.set(self.state.outbox.dropped)
        self.metrics.fps.set(self.fps)
        self.metrics.source_reconnects.set(self.source.reconnects)
        self.metrics.mqtt_connected.set(1 if self.publisher and self.publisher.connected else 0)
        n = self.state.totals().total()
        self.notifier.status(f"{self.fps:.1f} fps, {n} counted, source {self.source.state}")

    # --- commands (run on the frame loop) ------------------------------------------------------------

    def _execute(self, cmd: Command) -> Answered:
        """Run a command; the in-memory state follows only what was committed (else exit 1)."""
        lines = {line.name for line in self.cfg.counting.lines} | self.state.totals().lines()
        try:
            done = execute(cmd, self.state, self.alerts, lines)
        except sqlite3.Error as exc:
            raise FatalError(
                f"command {cmd.command!r}: cannot write the state database ({exc}); it was not applied"
            ) from None
        if done.reset is not None:
            self.run_counts = self.run_counts.without(done.reset.line)
        self.alerts.load(done.alert_state)
        self._note_alerts(done.alerts)
        self.signals.reload = self.signals.reload or done.reload
        return done.answered

    # --- reload --------------------------------------------------------------------------------------

    def _reload(self) -> None:
        """SIGHUP: re-read config and model; keep the running ones when the new ones are bad."""
        self.signals.reload = False
        self.notifier.reloading()
        try:
            self._swap(*self._prepare_reload())
        except (LanecountError, OSError) as exc:
            log.error(
                "reload rejected, keeping the running config and model: %s", str(exc).replace("\n", "; ")
            )
            self.notifier.ready("reload rejected; running the previous config")

    def _prepare_reload(self) -> tuple[EdgeConfig, ModelInfo, Pipeline, AlertEngine]:
        cfg = load_config(self.config_path)
        require_for_run(cfg, str(self.config_path))
        cfg, kept = reloadable(self.cfg, cfg)
        if kept:
            log.warning("reload: %s changed; that takes effect after a restart", ", ".join(kept))
        info = validate_for_run(cfg, self.config_path)
        if info != self.model or cfg.backend != self.cfg.backend:
            info, fresh = self._load_model(cfg, info)
            pipeline = self.pipeline.reconfigured(cfg, info.names, fresh.detector)
        else:
            pipeline = self.pipeline.reconfigured(cfg, info.names, self.pipeline.detector)
        try:
            alerts = AlertEngine(cfg.alerts, info.names, self.state.alert_state())
        except LanecountError:
            if pipeline.detector is not self.pipeline.detector:
                pipeline.detector.close()
            raise
        return cfg, info, pipeline, alerts

    def _swap(self, cfg: EdgeConfig, model: ModelInfo, pipeline: Pipeline, alerts: AlertEngine) -> None:
        if pipeline.detector is not self.pipeline.detector:
            self.pipeline.detector.close()
        if cfg.log_level != self.cfg.log_level:
            logging.getLogger().setLevel(cfg.log_level)
        self.cfg, self.model, self.pipeline, self.alerts = cfg, model, pipeline, alerts
        # A shorter period applies now, not after the old (possibly long) one has run out: the
        # current period ends at the new period's next boundary (its crossings all lie before it).
        self._boundary = self.state.shorten_period(next_boundary(time.time(), cfg.mqtt.publish_period_s))
        self._next_status = min(self._next_status, time.monotonic() + cfg.mqtt.status_period_s)
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
        # No counts message here: the current period has not ended. Its crossings wait in the
        # state and are reported at the next start, in the period ending at its boundary.
        self.publisher.stop(timeout=10.0, reason=self.offline_reason)

    def _write_counts_out(self) -> None:
        assert self.counts_out is not None
        self.counts_out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"lines": self.run_counts.to_json(line.name for line in self.cfg.counting.lines)}
        self.counts_out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    def summary(self) -> str:
        """One line: frames, fps, and this run's counts per line and direction."""
        span = (self.last_frame_at or 0.0) - (self.first_frame_at or 0.0)
        fps = (self.frames - 1) / span if self.frames > 1 and span > 0 else 0.0
        per_line = []
        for line, by_dir in self.run_counts.to_json(line.name for line in self.cfg.counting.lines).items():
            per_line.append(f"{line} in {sum(by_dir['in'].values())} out {sum(by_dir['out'].values())}")
        return f"{self.frames} frames at {fps:.1f} fps; " + ("; ".join(per_line) or "no lines")

    def _shutdown(self) -> None:
        """Undo the start-up steps that ran, in reverse; one failing step does not skip the others."""
        self.notifier.stopping()
        self.commands.refuse_pending()
        while self._closers:
            name, close = self._closers.pop()
            try:
                close()
            except Exception:
                log.exception("shutdown: closing the %s failed", name)
        self.commands.refuse_pending()
        self.notifier.close()
        if self._ready:  # a start-up mistake is reported by the caller as one line, nothing else
            log.info("stopped after %d frames", self.frames)

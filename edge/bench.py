"""``make bench``: per-stage milliseconds, end-to-end fps, memory, and ratios to Ultralytics.

Each measurement runs in its own process so peak memory (VmHWM) belongs to one pipeline only:

* ``inference``  — the ONNX Runtime session alone on a fixed letterboxed input: the ceiling.
* ``lanecount``  — the real daemon (``Daemon.run``) on the video with MQTT to a private broker; per-stage
  times come from its own Prometheus histograms.
* ``ultralytics``— ``solutions.ObjectCounter`` (which calls ``model.track(..., persist=True)``) on the same
  ONNX model, video and line. Needs the ``train`` extra; skipped with a note when absent.
* ``trackcount`` — tracker + counter alone on 20 synthetic moving boxes.
* ``soak``       — the daemon on the looping video for ``--soak-minutes``, resident memory sampled.

Ratios are computed within one run (this machine is shared and noisy), never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from edge.demo import free_port, start_broker

MODELS = Path(__file__).resolve().parent / "models"
LINE = {"name": "lane", "start": [320, 480], "end": [320, 0]}
STAGES = ("decode", "preprocess", "inference", "postprocess", "tracking", "counting", "publishing")


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


# --- workers (run in child processes) ------------------------------------------------------------------


def _worker_inference(a: argparse.Namespace) -> dict[str, Any]:
    from edge.backends import create_detector
    from edge.config import BackendConfig, ModelConfig
    from edge.model import load_model_info
    from edge.yolo import letterbox

    info = load_model_info(ModelConfig(path=str(a.model)))
    det = create_detector(BackendConfig(device="cpu"), info)
    blob, _ = letterbox(np.zeros((480, 640, 3), np.uint8), info.imgsz)
    for _ in range(5):
        det._infer(blob)  # type: ignore[attr-defined]
    n, t0 = a.frames, time.perf_counter()
    for _ in range(n):
        det._infer(blob)  # type: ignore[attr-defined]
    ms = (time.perf_counter() - t0) * 1000 / n
    return {"inference_ms": ms, "fps": 1000 / ms, "peak_mb": _rss_mb()[1]}


def _daemon_config(a: argparse.Namespace, tmp: Path, port: int | None, loop: bool) -> Path:
    cfg = {
        "site": "bench",
        "device": "lane",
        "state_dir": str(tmp / "state"),
        "log_level": "WARNING",
        "source": {"type": "file", "path": str(a.video), "loop": loop},
        "model": {"path": str(a.model)},
        "backend": {"type": "onnxruntime", "device": "cpu"},
        "counting": {"lines": [LINE]},
        "mqtt": {"enabled": port is not None, "port": port or 1883, "publish_period_s": 1.0},
    }
    path = tmp / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _timed_daemon(config: Path) -> Any:
    """The real daemon, timing each frame's whole path and noting whether it had a crossing."""
    from edge.daemon import Daemon

    class Timed(Daemon):
        frame_ms: ClassVar[list[tuple[float, bool]]] = []

        def _handle(self, frame: Any, decode_ms: float) -> None:
            before = sum(
                n for by in self.pipeline.counter.totals.values() for d in by.values() for n in d.values()
            )
            t0 = time.perf_counter()
            super()._handle(frame, decode_ms)
            ms = (time.perf_counter() - t0) * 1000 + decode_ms
            after = sum(
                n for by in self.pipeline.counter.totals.values() for d in by.values() for n in d.values()
            )
            self.frame_ms.append((ms, after > before))

    return Timed(config)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": 0.0, "p99": 0.0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.5), "p99": pick(0.99)}


def _worker_lanecount(a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        broker = start_broker(port, Path(tmp))
        try:
            daemon = _timed_daemon(_daemon_config(a, Path(tmp), port, loop=False))
            t0 = time.perf_counter()
            daemon.run()
            wall = time.perf_counter() - t0
        finally:
            broker.terminate()
    # Steady state: from the first frame to the last, excluding model load, warm-up and shutdown.
    first, last = getattr(daemon, "first_frame_at", None), getattr(daemon, "last_frame_at", None)
    steady = (
        (last - first) / max(daemon.frames - 1, 1)
        if first and last and last > first
        else wall / daemon.frames
    )
    reg = daemon.metrics.registry
    stages = {}
    for s in STAGES:
        total = reg.get_sample_value("lanecount_stage_seconds_sum", {"stage": s}) or 0.0
        count = reg.get_sample_value("lanecount_stage_seconds_count", {"stage": s}) or 1.0
        stages[s] = total * 1000 / count
    frames = daemon.frames
    timed = daemon.frame_ms
    return {
        "frames": frames,
        "frame_ms_crossing": _percentiles([ms for ms, crossed in timed if crossed]),
        "frame_ms_other": _percentiles([ms for ms, crossed in timed if not crossed]),
        "fps": 1 / steady,
        "fps_with_startup": frames / wall,
        "stages_ms": stages,
        "peak_mb": _rss_mb()[1],
    }


def _worker_ultralytics(a: argparse.Namespace) -> dict[str, Any]:
    import cv2
    from ultralytics import solutions

    counter = solutions.ObjectCounter(
        model=str(a.model), region=[tuple(LINE["start"]), tuple(LINE["end"])], show=False, verbose=False
    )
    cap = cv2.VideoCapture(str(a.video))
    frames, t0, wall0 = 0, 0.0, time.perf_counter()
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        counter(frame)
        frames += 1
        if frames == 1:  # the first call loads the model: measure the steady state, as for lanecount
            t0 = time.perf_counter()
    end = time.perf_counter()
    return {
        "frames": frames,
        "fps": (frames - 1) / (end - t0),
        "fps_with_startup": frames / (end - wall0),
        "peak_mb": _rss_mb()[1],
    }


def _worker_trackcount(a: argparse.Namespace) -> dict[str, Any]:
    from edge.config import CountingConfig, LineConfig, TrackingConfig
    from edge.counting import LineCounter
    from edge.detections import Detections
    from edge.tracking import ProductTracker

    rng = np.random.default_rng(0)
    out = {}
    for n in (5, 20):
        tracker = ProductTracker(TrackingConfig())
        counter = LineCounter(CountingConfig(lines=[LineConfig(**LINE)]), ("a", "b", "c"))
        x0 = rng.uniform(0, 600, n)
        y0 = np.linspace(20, 440, n)
        times = []
        for f in range(600):
            x = (x0 + 4 * f) % 660 - 20
            xyxy = np.stack([x, y0, x + 30, y0 + 18], 1).astype(np.float32)
            xyxy += rng.normal(0, 0.7, xyxy.shape).astype(np.float32)
            dets = Detections(xyxy, np.full(n, 0.9, np.float32), np.arange(n) % 3)
            t0 = time.perf_counter()
            tracked = tracker.update(dets, f)
            counter.update(tracked, f, f / 15)
            counter.prune(tracker.alive_ids())
            times.append(time.perf_counter() - t0)
        out[f"ms_{n}"] = float(np.mean(times[50:]) * 1000)
    return out


def _worker_soak(a: argparse.Namespace) -> dict[str, Any]:
    from edge.daemon import Daemon

    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(_daemon_config(a, Path(tmp), None, loop=True))
        t_end = time.monotonic() + a.soak_minutes * 60

        def sample() -> None:
            while time.monotonic() < t_end:
                samples.append((time.monotonic(), _rss_mb()[0]))
                time.sleep(5)
            daemon.signals.stop = True

        threading.Thread(target=sample, daemon=True).start()
        daemon.run()
    warm = [rss for t, rss in samples if t - samples[0][0] >= 30] or [samples[-1][1]]
    return {
        "minutes": a.soak_minutes,
        "frames": daemon.frames,
        "rss_after_warmup_mb": warm[0],
        "rss_max_mb": max(warm),
        "rss_end_mb": warm[-1],
        "growth_mb": max(warm) - warm[0],
    }


WORKERS = {
    "inference": _worker_inference,
    "lanecount": _worker_lanecount,
    "ultralytics": _worker_ultralytics,
    "trackcount": _worker_trackcount,
    "soak": _worker_soak,
}


# --- orchestration ---------------------------------------------------------------------------------------


def _spawn(name: str, a: argparse.Namespace) -> dict[str, Any] | str:
    cmd = [
        sys.executable,
        "-m",
        "edge.bench",
        "--worker",
        name,
        "--video",
        str(a.video),
        "--model",
        str(a.model),
        "--frames",
        str(a.frames),
        "--soak-minutes",
        str(a.soak_minutes),
    ]
    env = dict(os.environ, YOLO_OFFLINE="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return f"failed ({tail})"
    return dict(json.loads(lines[-1]))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def report(r: dict[str, Any]) -> str:
    """The printed table and ratios."""
    out = []
    lc, inf, ul, tc = r["lanecount"], r["inference"], r.get("ultralytics"), r["trackcount"]
    out.append(f"model {r['model']}, video {r['video']} ({lc['frames']} frames), ONNX Runtime CPU\n")
    out.append("stage          ms/frame")
    for s in STAGES:
        out.append(f"  {s:<12}{lc['stages_ms'][s]:>9.2f}")
    out.append(f"  {'total':<12}{sum(lc['stages_ms'].values()):>9.2f}\n")
    out.append(
        f"inference only      {inf['fps']:7.1f} fps ({inf['inference_ms']:.2f} ms; "
        f"median of {r['inference_fps_runs']})"
    )
    out.append(
        f"lanecount end2end   {lc['fps']:7.1f} fps steady ({lc['fps_with_startup']:.1f} with start-up), "
        f"peak RSS {lc['peak_mb']:.0f} MB; median of {r['lanecount_fps_runs']}"
    )
    if isinstance(ul, dict):
        out.append(
            f"ultralytics track   {ul['fps']:7.1f} fps steady ({ul['fps_with_startup']:.1f} with start-up), "
            f"peak RSS {ul['peak_mb']:.0f} MB (model.track persist=True + solutions.ObjectCounter)"
        )
    else:
        out.append(f"ultralytics track   {ul or 'skipped (--skip-ultralytics)'}")
    cross, other = lc.get("frame_ms_crossing"), lc.get("frame_ms_other")
    if cross and other:
        out.append(
            f"frame time          p50 {other['p50']:.2f} / p99 {other['p99']:.2f} ms"
            f" ({other['n']} frames without"
            f" a crossing); p50 {cross['p50']:.2f} / p99 {cross['p99']:.2f} ms ({cross['n']} with one)"
        )
    out.append(f"tracking+counting   {tc['ms_5']:.3f} ms @5 objects, {tc['ms_20']:.3f} ms @20 objects\n")
    out.append("ratios (same run)                               value   target")
    out.append(f"  lanecount e2e fps / inference-only fps       {_ratio(lc['fps'], inf['fps']):>6}   >= 0.90")
    if isinstance(ul, dict):
        out.append(
            f"  lanecount fps / ultralytics fps              {_ratio(lc['fps'], ul['fps']):>6}   >= 1.20"
        )
        out.append(
            f"  lanecount peak RSS / ultralytics peak RSS    {_ratio(lc['peak_mb'], ul['peak_mb']):>6}"
            "   <= 0.33"
        )
        out.append(f"  ultralytics fps / inference-only fps         {_ratio(ul['fps'], inf['fps']):>6}")
    out.append(f"  tracking+counting ms @20 objects             {tc['ms_20']:>6.3f}   <  1.00")
    soak = r.get("soak")
    if isinstance(soak, dict):
        out.append(
            f"  RSS growth over {soak['minutes']:g} min soak ({soak['frames']} frames)  "
            f"{soak['growth_mb']:>5.1f} MB  <= 10 MB"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the workers one after another (never in parallel: they would share the CPU)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--model", type=Path, default=MODELS / "demo.onnx")
    p.add_argument("--frames", type=int, default=200, help="inference-only iterations")
    p.add_argument("--soak-minutes", type=float, default=2.0, help="0 skips the memory soak")
    p.add_argument("--skip-ultralytics", action="store_true")
    p.add_argument("--repeat", type=int, default=3, help="runs of the inference-only and lanecount workers")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.video, a.model = a.video.resolve(), a.model.resolve()
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a)))
        return 0
    # The shared machine is noisy: the fps pair behind the headline ratio is measured --repeat times,
    # interleaved, and the median run of each is kept.
    names = ["inference", "lanecount"] * a.repeat + ["trackcount"]
    names += [] if a.skip_ultralytics else ["ultralytics"]
    names += ["soak"] if a.soak_minutes > 0 else []
    results: dict[str, Any] = {"model": a.model.name, "video": str(a.video), "repeat": a.repeat}
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        res = _spawn(name, a)
        if isinstance(res, str) and name in ("inference", "lanecount", "trackcount"):
            print(f"error: {name} worker {res}", file=sys.stderr)
            return 1
        if isinstance(res, dict):
            runs.setdefault(name, []).append(res)
        results[name] = res
    for name in ("inference", "lanecount"):
        ordered = sorted(runs[name], key=lambda r: float(r["fps"]))
        results[name] = ordered[len(ordered) // 2]
        results[f"{name}_fps_runs"] = [round(float(r["fps"]), 1) for r in runs[name]]
    print(report(results))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

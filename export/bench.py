"""``make bench-export``: FP32 vs INT8 ONNX models on ONNX Runtime (CPU), side by side with ratios.

Three measurements per model:

- inference latency per frame: the network alone on one letterboxed blob, the median of interleaved
  repeats (FP32, INT8, FP32, INT8, ...), so both models see the same load on a shared machine;
- mAP50-95 and mAP50 on the val split, through the edge runtime (:mod:`export.metrics`);
- the daemon end to end on a synthetic conveyor video (decode, letterbox, inference, NMS, tracking,
  counting; MQTT off): frames per second from the first frame to the last (median of interleaved
  runs), and whether its counts equal the video's ground truth.

Usage::

    python -m export.bench --fp32 M.onnx --int8 M.int8.onnx --data DATA.yaml --video DIR [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge.config import ModelConfig
from edge.model import ModelInfo, load_model_info
from export.dataset import load_split
from export.metrics import score_model


def latency_ms(models: list[ModelInfo], threads: int, repeats: int) -> list[float]:
    """Median inference time of each model, runs interleaved."""
    import onnxruntime as ort

    sessions = []
    for m in models:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        sessions.append(ort.InferenceSession(str(m.path), opts, providers=["CPUExecutionProvider"]))
    blob = np.random.default_rng(0).random((1, 3, models[0].imgsz, models[0].imgsz), np.float32)
    feeds = [{s.get_inputs()[0].name: blob} for s in sessions]
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(5):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for s, f, t in zip(sessions, feeds, times, strict=True):
            t0 = time.perf_counter()
            s.run(None, f)
            t.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def daemon_fps(model: ModelInfo, video: Path, truth: dict[str, Any], threads: int) -> tuple[float, bool]:
    """The daemon on ``video`` with ``model``: steady frames per second, and counts == ground truth."""
    from edge.daemon import Daemon

    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "state_dir": f"{tmp}/state",
            "log_level": "WARNING",
            "source": {"type": "file", "path": str(video.resolve())},
            "model": {"path": str(model.path)},
            "backend": {"type": "onnxruntime", "device": "cpu", "threads": threads},
            "counting": {"lines": [truth["line"]]},
            "mqtt": {"enabled": False},
        }
        (Path(tmp) / "edge.yaml").write_text(yaml.safe_dump(cfg))
        daemon = Daemon(Path(tmp) / "edge.yaml", counts_out=Path(tmp) / "counts.json")
        t0 = time.perf_counter()
        daemon.run()
        wall = time.perf_counter() - t0
        counts = json.loads((Path(tmp) / "counts.json").read_text())["lines"]
    first, last = getattr(daemon, "first_frame_at", None), getattr(daemon, "last_frame_at", None)
    frames = int(daemon.frames)
    steady = (last - first) / max(frames - 1, 1) if first and last and last > first else wall / frames
    return 1 / steady, counts == truth["lines"]


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp32", type=Path, required=True)
    p.add_argument("--int8", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="dataset YAML (val split)")
    p.add_argument("--video", type=Path, required=True, help="folder from lanecount-train synth-video")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="interleaved daemon runs per model (median)")
    a = p.parse_args(argv)
    models = [load_model_info(ModelConfig(path=str(m))) for m in (a.fp32, a.int8)]
    truth = json.loads((a.video / "crossings.json").read_text())
    lat = latency_ms(models, a.threads, a.repeats)
    val = load_split(a.data, "val")
    scores = [score_model(m, val, threads=a.threads) for m in models]
    # Interleaved rounds, median per model: the machine's load changes between runs.
    runs = [[daemon_fps(m, a.video / "video.mp4", truth, a.threads) for m in models] for _ in range(a.rounds)]
    fps = [(statistics.median(r[k][0] for r in runs), all(r[k][1] for r in runs)) for k in range(len(models))]
    f32, i8 = scores
    rows = [
        ("inference ms (median)", lat[0], lat[1], f"{lat[0] / lat[1]:.2f}x faster"),
        ("mAP50-95 val", f32.map50_95, i8.map50_95, f"{(i8.map50_95 - f32.map50_95) * 100:+.2f} points"),
        ("mAP50 val", f32.map50, i8.map50, f"{(i8.map50 - f32.map50) * 100:+.2f} points"),
        ("daemon fps (end to end)", fps[0][0], fps[1][0], f"{fps[1][0] / fps[0][0]:.2f}x"),
    ]
    print(
        f"ONNX Runtime CPU, {a.threads} thread(s); latency: median of {a.repeats} interleaved repeats; "
        f"daemon: median of {a.rounds} interleaved runs; {len(val)} val images"
    )
    print(f"{'':<26}{'FP32':>10}{'INT8':>10}  INT8 vs FP32")
    for name, f, i, ratio in rows:
        print(f"{name:<26}{f:>10.4g}{i:>10.4g}  {ratio}")
    print(f"daemon counts equal the ground truth: FP32 {fps[0][1]}, INT8 {fps[1][1]}")


if __name__ == "__main__":
    main()

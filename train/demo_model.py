"""Reproduce the committed demo model: synthetic scenes → YOLOv8n from scratch → ONNX + JSON.

``make demo-model`` runs this. No pretrained weights can be downloaded here, so the network starts
from ``yolov8n.yaml``; the synthetic products are simple enough for that to converge on a CPU.
The result lands in ``edge/models/demo.onnx`` and ``edge/models/demo.json`` (class names, imgsz,
version, test-split metrics), which the edge daemon's demo, tests and benchmarks use.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from export.cli import export_onnx
from train.fit import FitOptions, fit
from train.synth import write_dataset

MODELS = Path(__file__).resolve().parent.parent / "edge" / "models"


def main(argv: list[str] | None = None) -> None:
    """Render the dataset, train, evaluate on the test split and export to ONNX."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--hours", type=float, default=1.6, help="wall-clock budget; overrides --epochs")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--work", type=Path, default=Path("runs/demo-model"))
    p.add_argument("--out", type=Path, default=MODELS)
    p.add_argument("--device", default="cpu", help="cpu, or a CUDA device index such as 0")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="dataloader workers (and rendering processes)")
    p.add_argument("--train-only", action="store_true", help="stop after training (export elsewhere)")
    p.add_argument(
        "--export-only", type=Path, default=None, help="skip training: evaluate and export these weights"
    )
    p.add_argument("--note", default="", help="how the weights were trained (kept in the JSON)")
    a = p.parse_args(argv)
    data_dir = a.work / "data"
    data_yaml = data_dir / "data.yaml"
    if not data_yaml.exists():
        write_dataset(data_dir, a.images, a.seed, progress=True, jobs=a.workers)
    if a.export_only:
        export(a.export_only, data_yaml, a, train_s=float("nan"))
        return
    extra: dict[str, object] = {"time": a.hours} if a.hours > 0 else {}
    if a.device != "cpu":
        extra["amp"] = False  # Ultralytics' AMP self-check downloads weights; offline it cannot
    opts = FitOptions(
        model="yolov8n.yaml",
        epochs=a.epochs,
        imgsz=a.imgsz,
        batch=a.batch,
        patience=100,
        close_mosaic=5,
        seed=a.seed,
        device=a.device,
        workers=a.workers,
        project=str(a.work.resolve()),
        name="fit",
        exist_ok=True,
        extra=extra,
    )
    started = time.time()
    result = fit(data_yaml, opts)
    print(f"best weights: {result.best}")
    if not a.train_only:
        export(result.best, data_yaml, a, time.time() - started)


def export(best: Path, data_yaml: Path, a: argparse.Namespace, train_s: float) -> None:
    """Evaluate ``best`` on the test split, export it with ``lanecount-export onnx``, add the metrics."""
    from ultralytics import YOLO

    m = YOLO(str(best)).val(
        data=str(data_yaml), split="test", imgsz=a.imgsz, batch=16, device="cpu", plots=False
    )
    onnx = export_onnx(best, a.out / "demo.onnx", a.imgsz)
    meta = json.loads(onnx.with_suffix(".json").read_text())
    meta.update(
        {
            "name": "lanecount-demo",
            "architecture": "yolov8n",
            "trained_on": {"generator": "lanecount-train synth", "images": a.images, "seed": a.seed},
            "train_hours": None if train_s != train_s else round(train_s / 3600, 2),
            "training": a.note
            or f"python -m train.demo_model --device {a.device} --images {a.images} --hours {a.hours}",
            "metrics_test": {
                "mAP50": round(float(m.box.map50), 4),
                "mAP50-95": round(float(m.box.map), 4),
                "precision": round(float(m.box.mp), 4),
                "recall": round(float(m.box.mr), 4),
            },
        }
    )
    onnx.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()

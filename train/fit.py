"""Fine-tune Ultralytics YOLOv8 with the knobs users tune, offline-safe (the notebook's step 2.4).

Ultralytics resolves a bare name such as ``yolov8n.pt`` by downloading it; here that cannot work, so a
missing weights file is reported in one line before any training starts. A ``.yaml`` model builds
from scratch and needs nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import LanecountError

__all__ = ["FitOptions", "FitResult", "fit", "offline"]


class TrainError(LanecountError):
    """A training-side user mistake or failure, reported in one line."""


@dataclass(frozen=True)
class FitOptions:
    """Training knobs, passed to ``YOLO.train`` under the same names."""

    model: str = "yolov8n.pt"
    epochs: int = 50
    imgsz: int = 640
    batch: int = 16
    freeze: int | None = None
    lr0: float = 0.01
    optimizer: str = "auto"
    patience: int = 20
    close_mosaic: int = 10
    device: str | None = None
    seed: int = 0
    workers: int = 2
    project: str = "runs/fit"
    name: str = "train"
    exist_ok: bool = False
    plots: bool | None = None  # None: on unless offline (plots need a font Ultralytics downloads)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FitResult:
    """Where training wrote its outputs and the final validation metrics."""

    save_dir: Path
    best: Path
    last: Path
    metrics: dict[str, float]


def offline() -> bool:
    """True when Ultralytics must not reach the internet (``YOLO_OFFLINE=1``)."""
    return os.environ.get("YOLO_OFFLINE", "").lower() in ("1", "true", "yes")


def _check_model(model: str) -> None:
    path = Path(model)
    if path.suffix in (".yaml", ".yml") and not path.exists():
        return  # a model family name such as yolov8n.yaml: Ultralytics ships its definition
    if not path.exists() and (offline() or path.parent != Path(".")):
        raise TrainError(
            f"{model}: weights file not found (offline: give a local .pt path, or a .yaml such as "
            "yolov8n.yaml to train from scratch)"
        )


def _check_data(data: Path) -> None:
    if not data.exists():
        raise TrainError(f"{data}: dataset file not found")
    if data.is_dir():
        raise TrainError(f"{data}: expected a data.yaml file, got a folder (try {data / 'data.yaml'})")
    from train.dataset import validate_yaml

    problems = validate_yaml(data)  # one line naming the yaml line beats Ultralytics' traceback
    if problems:
        raise TrainError(f"{data.parent / problems[0]}")


def fit(data: Path, opts: FitOptions, resume: Path | None = None) -> FitResult:
    """Train (or resume from ``resume``, a ``last.pt``) and return where best.pt is."""
    if resume is not None and not resume.exists():
        raise TrainError(f"{resume}: checkpoint to resume not found")
    if resume is None:
        _check_data(data)  # before the slow import, so a typo fails at once
        _check_model(opts.model)
    from ultralytics import YOLO

    if resume is not None:
        model = YOLO(str(resume))
        results = model.train(resume=True)
    else:
        model = YOLO(opts.model)
        plots = (not offline()) if opts.plots is None else opts.plots
        args = {k: v for k, v in asdict(opts).items() if k not in ("model", "extra", "plots")}
        args = {k: v for k, v in args.items() if v is not None}
        results = model.train(data=str(data), plots=plots, verbose=False, **args, **opts.extra)
    trainer: Any = model.trainer  # set by train(); Ultralytics types it Optional
    save_dir = Path(trainer.save_dir)
    metrics = {k: float(v) for k, v in (getattr(results, "results_dict", None) or {}).items()}
    result = FitResult(save_dir, save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt", metrics)
    (save_dir / "fit.json").write_text(
        json.dumps({"best": str(result.best), "last": str(result.last), "metrics": metrics}, indent=2) + "\n"
    )
    return result

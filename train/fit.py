"""Fine-tune Ultralytics YOLOv8 with the knobs users tune, offline-safe (the notebook's step 2.4).

Ultralytics resolves a bare name such as ``yolov8n.pt`` by downloading it; here that cannot work, so a
missing weights file is reported in one line before any training starts. A ``.yaml`` model builds
from scratch and needs nothing.

Results go to ``<project>/<name>`` with a relative ``project`` taken from the current directory:
Ultralytics would otherwise put a relative project under its global ``runs_dir`` setting, in another
folder than the one the user works in. The dataset is checked first (:func:`train.check.require_clean`),
because Ultralytics skips broken images and labels with a warning and trains on what is left.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import LanecountError

__all__ = ["FitOptions", "FitResult", "default_warmup_bias_lr", "fit", "offline"]


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
    plots: bool | None = None  # None: on (results.png and the other curves draw offline too)
    force: bool = False  # train even when the dataset check finds errors
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


def default_warmup_bias_lr(model: str) -> float:
    """Ultralytics' bias warm-up rate (0.1, falling to lr0) from scratch; none from pretrained weights.

    That rate is meant for random biases. From a ``.pt`` it overwrites what fine-tuning should keep:
    the class rows Ultralytics copies by name from COCO's head (apple, orange, banana) lost their
    real-photo score within 2 epochs of it (mAP50-95 0.03 in the demo model's pilots; the model card).
    """
    return 0.1 if Path(model).suffix.lower() in (".yaml", ".yml") else 0.0


def _check_model(model: str) -> None:
    path = Path(model)
    if path.suffix.lower() not in (".pt", ".yaml", ".yml"):
        raise TrainError(
            f"{model}: fit needs PyTorch weights (.pt) or a model .yaml, got '{path.suffix or 'no suffix'}'"
            + (" (an .onnx model is for inference: eval, predict, the edge daemon)" if path.suffix else "")
        )
    if path.suffix in (".yaml", ".yml") and not path.exists():
        return  # a model family name such as yolov8n.yaml: Ultralytics ships its definition
    if not path.exists() and (offline() or path.parent != Path(".")):
        raise TrainError(
            f"{model}: weights file not found (offline: give a local .pt path, or a .yaml such as "
            "yolov8n.yaml to train from scratch)"
        )


def _check_data(data: Path, force: bool) -> None:
    if not data.exists():
        raise TrainError(f"{data}: dataset file not found")
    if data.is_dir():
        raise TrainError(f"{data}: expected a data.yaml file, got a folder (try {data / 'data.yaml'})")
    from train.check import require_clean
    from train.dataset import validate_yaml

    problems = validate_yaml(data)  # one line naming the yaml line beats Ultralytics' traceback
    if problems:
        raise TrainError(f"{data.parent / problems[0]}")
    require_clean(data, force=force, action="fit")


def _check_resume(resume: Path) -> dict[str, Any]:
    """The training arguments of an unfinished run's checkpoint; one line for anything else.

    Ultralytics strips the optimizer from ``last.pt`` and sets its epoch to -1 when a run ends; resuming
    such a file makes it forget the run's data and fall back to a dataset it downloads.
    """
    if not resume.is_file():
        raise TrainError(f"{resume}: checkpoint to resume not found")
    import torch

    try:
        ckpt = torch.load(resume, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise TrainError(f"{resume}: not a PyTorch checkpoint ({type(exc).__name__})") from exc
    args = ckpt.get("train_args") if isinstance(ckpt, dict) else None
    if not isinstance(args, dict):
        raise TrainError(f"{resume}: not an Ultralytics training checkpoint (no train_args)")
    if ckpt.get("epoch", -1) < 0 or ckpt.get("optimizer") is None:
        raise TrainError(
            f"{resume}: that run finished ({args.get('epochs')} epochs); nothing to resume. "
            f"To train further start a new run: fit DATA --model {resume}"
        )
    data = args.get("data")
    if not data or not Path(str(data)).is_file():
        raise TrainError(f"{resume}: the run's dataset {data!r} is not there any more; cannot resume")
    return args


def _project(project: str) -> str:
    """An absolute project folder: a relative one is taken from the current directory."""
    path = Path(project).expanduser()
    return str(path if path.is_absolute() else Path.cwd() / path)


def fit(data: Path, opts: FitOptions, resume: Path | None = None) -> FitResult:
    """Train (or resume from ``resume``, a ``last.pt``) and return where best.pt is."""
    if resume is not None:
        _check_resume(resume)
    else:
        _check_model(opts.model)  # before the slow import, so a typo fails at once
        _check_data(data, opts.force)
    from ultralytics import YOLO

    if resume is not None:
        model = YOLO(str(resume))
        results = model.train(resume=True)
    else:
        model = YOLO(opts.model)
        plots = True if opts.plots is None else opts.plots
        skip = ("model", "extra", "plots", "force", "project")
        args = {k: v for k, v in asdict(opts).items() if k not in skip and v is not None}
        args["project"] = _project(opts.project)
        # no bias warm-up from pretrained weights unless asked (default_warmup_bias_lr says why)
        extra = {"warmup_bias_lr": default_warmup_bias_lr(opts.model), **opts.extra}
        results = model.train(data=str(data), plots=plots, verbose=False, **args, **extra)
    trainer: Any = model.trainer  # set by train(); Ultralytics types it Optional
    save_dir = Path(trainer.save_dir)
    metrics = {k: float(v) for k, v in (getattr(results, "results_dict", None) or {}).items()}
    result = FitResult(save_dir, save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt", metrics)
    (save_dir / "fit.json").write_text(
        json.dumps({"best": str(result.best), "last": str(result.last), "metrics": metrics}, indent=2) + "\n"
    )
    return result

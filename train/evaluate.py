"""Evaluate a detector on a dataset split, and compare two of them (the notebook's steps 2.6 and 2.7).

:func:`evaluate` wraps Ultralytics ``YOLO(weights).val(...)`` for ``.pt`` and ``.onnx`` weights and keeps
what a person reads: overall and per-class precision, recall and mAP, speed, and a confusion matrix.
:func:`compare` evaluates a baseline and a fine-tuned model on the same split and lines the classes up
*by name*, because a baseline such as COCO ``yolov8n.pt`` numbers its 80 classes differently.

A model whose class names differ from the dataset's is validated with its predictions remapped to the
dataset's class ids by name (predictions of classes the dataset lacks are dropped: they cannot add to
any class's AP). Without that remap Ultralytics scores COCO "person" against the dataset's class 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from train.fit import TrainError, offline

__all__ = [
    "ClassDelta",
    "ClassMetrics",
    "Comparison",
    "EvalError",
    "EvalResult",
    "class_names",
    "compare",
    "compare_results",
    "default_out",
    "evaluate",
    "load_data",
    "model_label",
    "model_version",
    "norm_name",
]

WEIGHT_SUFFIXES = (".pt", ".onnx")
OVERALL = ("precision", "recall", "map50", "map50_95")
_TITLES = {"precision": "P", "recall": "R", "map50": "mAP50", "map50_95": "mAP50-95"}


class EvalError(TrainError):
    """An evaluation input is missing or unusable (weights, data.yaml, split), reported in one line."""


# --- inputs ----------------------------------------------------------------------------------------


def norm_name(name: str) -> str:
    """Normalise a class name for matching across models: ``"Milk Carton"`` == ``"milk_carton"``."""
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def load_data(data_yaml: Path | str) -> dict[str, Any]:
    """Read a YOLO ``data.yaml`` and check it names classes.

    Raises:
        EvalError: the file is missing, a folder, not YAML, or has no ``names``.
    """
    path = Path(data_yaml)
    if not path.exists():
        raise EvalError(f"{path}: dataset file not found")
    if path.is_dir():
        raise EvalError(f"{path}: expected a data.yaml file, got a folder (try {path / 'data.yaml'})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EvalError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict) or not data.get("names"):
        raise EvalError(f"{path}: 'names' (the class names) is missing")
    return data


def class_names(data: Mapping[str, Any]) -> list[str]:
    """The class names of a data.yaml, in id order (``names`` may be a list or an ``{id: name}`` map)."""
    names = data["names"]
    if isinstance(names, Mapping):
        return [str(names[k]) for k in sorted(names, key=int)]
    return [str(n) for n in names]


def _check_split(data: Mapping[str, Any], data_yaml: Path, split: str) -> None:
    if not data.get(split):
        have = ", ".join(k for k in ("train", "val", "test") if data.get(k)) or "none"
        raise EvalError(f"{data_yaml}: no '{split}' split (has: {have})")


def _check_weights(weights: Path) -> None:
    if weights.suffix not in WEIGHT_SUFFIXES:
        raise EvalError(f"{weights}: expected .pt or .onnx weights, got '{weights.suffix or 'no suffix'}'")
    if not weights.is_file():
        raise EvalError(f"{weights}: weights file not found")


def _load_model(weights: Path) -> Any:
    from ultralytics import YOLO

    try:
        return YOLO(str(weights), task="detect")
    except Exception as exc:  # Ultralytics raises many types for a corrupt file; the user needs one line
        raise EvalError(f"{weights}: cannot load model ({type(exc).__name__}: {exc})") from exc


def _remap(model_names: Sequence[str], data_names: Sequence[str]) -> list[int] | None:
    """Model class id → dataset class id by name (-1: not in the dataset); None when already aligned."""
    if [norm_name(n) for n in model_names] == [norm_name(n) for n in data_names]:
        return None
    index = {norm_name(n): i for i, n in enumerate(data_names)}
    return [index.get(norm_name(n), -1) for n in model_names]


def model_version(weights: Path) -> str:
    """An ONNX model's metadata version, else the first 12 hex digits of the file's SHA-256."""
    from edge.config import ModelConfig
    from edge.errors import LanecountError
    from edge.model import file_sha256, load_model_info

    if weights.suffix.lower() == ".onnx":
        try:
            return load_model_info(ModelConfig(path=str(weights))).version
        except LanecountError:
            pass  # no usable metadata: fall back to the checksum
    return file_sha256(weights)[:12]


def model_label(weights: Path) -> str:
    """A folder-safe name for a model version: ``<run>-<file>-<version>`` (run: for ``weights/*.pt``)."""
    run = weights.parent.parent.name if weights.parent.name == "weights" else ""
    text = f"{run}-{weights.stem}" if run else weights.stem
    text = f"{text}-{model_version(weights)}"
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def data_label(data_yaml: Path) -> str:
    """A dataset's folder-safe name: the folder of a ``data.yaml``, else the file's stem."""
    name = data_yaml.parent.name if data_yaml.name == "data.yaml" else data_yaml.stem
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name) or "data"


def default_out(kind: str, labels: Sequence[str], data_yaml: Path | str, split: str) -> Path:
    """``runs/<kind>/<label>[-vs-<label>]-<dataset>-<split>``: one folder per model, dataset and split.

    The dataset is in the name because the same two models are compared on the synthetic test split
    and on the real photos, and the second run must not overwrite the first.
    """
    return Path("runs") / kind / ("-vs-".join(labels) + f"-{data_label(Path(data_yaml))}-{split}")


def _device_text(device: str | None) -> str:
    """Where inference ran, as a person reads it: GPU name, or CPU architecture and thread count."""
    import platform

    import torch

    if device not in (None, "cpu") and torch.cuda.is_available():
        index = int(str(device).split(",")[0]) if str(device).split(",")[0].isdigit() else 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device is None and torch.cuda.is_available():
        return f"cuda:0 ({torch.cuda.get_device_name(0)})"
    return f"cpu ({platform.machine()}, torch threads: {torch.get_num_threads()})"


# --- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class. Metric fields are ``None`` when the split has no instance of the class."""

    name: str
    images: int
    instances: int
    precision: float | None
    recall: float | None
    map50: float | None
    map50_95: float | None


@dataclass
class EvalResult:
    """What :func:`evaluate` measured; ``to_dict()`` is what ``eval.json`` holds."""

    weights: str
    data: str
    split: str
    imgsz: int
    precision: float
    recall: float
    map50: float
    map50_95: float
    classes: list[ClassMetrics]
    speed: dict[str, float]
    model_classes: list[str]
    confusion_matrix: list[list[float]] = field(default_factory=list)
    confusion_png: str | None = None
    out_dir: str | None = None
    version: str = ""  # the model's version (metadata, else the start of the file's SHA-256)
    device: str = ""  # where the speed was measured, e.g. "cpu (x86_64, 2 threads)"
    fps: float = 0.0  # images per second: 1000 / (pre + infer + post ms)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        """Rebuild from :meth:`to_dict` output (e.g. a saved ``eval.json``)."""
        return cls(**{**d, "classes": [ClassMetrics(**c) for c in d["classes"]]})

    def metric(self, key: str) -> float:
        """An overall metric by name: ``precision``, ``recall``, ``map50`` or ``map50_95``."""
        return float(getattr(self, key))

    def class_by_name(self) -> dict[str, ClassMetrics]:
        """Per-class metrics keyed by normalised class name."""
        return {norm_name(c.name): c for c in self.classes}

    def to_markdown(self, rel_to: Path | None = None) -> str:
        """Markdown: overall table, per-class table, speed and the confusion matrix image."""
        lines = [
            f"### Evaluation: `{Path(self.weights).name}` on `{self.split}`",
            "",
            f"Model version `{self.version or '?'}`, image size {self.imgsz}, {self.fps:.1f} images/s on "
            f"{self.device or 'an unrecorded device'}.",
            "",
            "| metric | value |",
            "|---|---|",
            *(f"| {k} | {_fmt(self.metric(k))} |" for k in OVERALL),
            "",
            "| class | images | instances | P | R | mAP50 | mAP50-95 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in self.classes:
            cells = (c.precision, c.recall, c.map50, c.map50_95)
            lines.append(f"| {c.name} | {c.images} | {c.instances} | " + " | ".join(map(_fmt, cells)) + " |")
        speed = ", ".join(f"{k} {v:.1f} ms" for k, v in self.speed.items())
        lines += ["", f"Speed per image: {speed}."]
        if self.confusion_png:
            lines += ["", f"![confusion matrix]({_link(self.confusion_png, rel_to)})"]
        return "\n".join(lines) + "\n"


def _fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _fmt_delta(v: float | None) -> str:
    return "—" if v is None else f"{v:+.3f}"


def _link(path: str | Path, rel_to: Path | None) -> str:
    """A Markdown image link to ``path``, relative to the folder ``rel_to`` when given."""
    import os

    return Path(os.path.relpath(Path(path).resolve(), rel_to.resolve())).as_posix() if rel_to else str(path)


def _class_rows(metrics: Any, data_names: Sequence[str]) -> list[ClassMetrics]:
    """Per-class rows for every dataset class, from Ultralytics ``DetMetrics``."""
    n = len(data_names)
    nt_class = _counts(getattr(metrics, "nt_per_class", None), n)
    nt_image = _counts(getattr(metrics, "nt_per_image", None), n)
    index = {int(c): i for i, c in enumerate(metrics.box.ap_class_index)}
    rows = []
    for cid, name in enumerate(data_names):
        values: tuple[float | None, ...] = (None, None, None, None)
        if cid in index and nt_class[cid] > 0:
            values = tuple(float(v) for v in metrics.box.class_result(index[cid]))
        rows.append(ClassMetrics(name, nt_image[cid], nt_class[cid], *values))
    return rows


def _counts(arr: Any, n: int) -> list[int]:
    if arr is None:
        return [0] * n
    out = [int(x) for x in np.asarray(arr).reshape(-1)[:n]]
    return out + [0] * (n - len(out))


# --- Ultralytics validation ------------------------------------------------------------------------


def _validator_class(remap: list[int] | None, data_names: list[str], draw_images: bool) -> type:
    """A DetectionValidator that always fills the confusion matrix, remaps classes, and may skip mosaics.

    Ultralytics fills the confusion matrix only with ``plots=True``, and its batch mosaics want a font it
    downloads, so plots stay on and the mosaic drawing is switched off offline instead.
    """
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import ConfusionMatrix

    lut = None if remap is None else torch.tensor(remap, dtype=torch.long)
    names = dict(enumerate(data_names))

    class _Validator(DetectionValidator):
        def init_metrics(self, model: Any) -> None:
            super().init_metrics(model)
            if lut is not None:  # score against the dataset's classes, not the model's
                # Ultralytics declares these None until set; mypy takes that for their type.
                self.names, self.nc, self.metrics.names = names, len(names), names  # type: ignore[assignment]
                self.confusion_matrix = ConfusionMatrix(names=names)  # type: ignore[assignment]

        def postprocess(self, preds: Any) -> list[dict[str, Any]]:
            out = super().postprocess(preds)
            if lut is None:
                return out
            remapped = []
            for p in out:
                cls = lut.to(p["cls"].device)[p["cls"].long()]
                keep = cls >= 0
                remapped.append({**{k: v[keep] for k, v in p.items()}, "cls": cls[keep].to(p["cls"].dtype)})
            return remapped

        def plot_val_samples(self, batch: Any, ni: int) -> None:
            if draw_images:
                super().plot_val_samples(batch, ni)

        def plot_predictions(self, batch: Any, preds: Any, ni: int, max_det: int | None = None) -> None:
            if draw_images:
                super().plot_predictions(batch, preds, ni)

    return _Validator


def evaluate(
    weights: Path | str,
    data_yaml: Path | str,
    split: str = "test",
    imgsz: int = 640,
    batch: int = 16,
    device: str | None = None,
    conf: float = 0.001,
    iou: float = 0.6,
    out_dir: Path | str | None = None,
    plots: bool | None = None,
) -> EvalResult:
    """Validate ``weights`` on one split of ``data_yaml`` and write ``eval.json`` and ``confusion.png``.

    Args:
        weights: ``.pt`` or ``.onnx`` detector.
        data_yaml: YOLO dataset description.
        split: ``test`` or ``val`` (any split the YAML names).
        imgsz: inference size (an ONNX model uses its exported size).
        batch: batch size (an ONNX model with a static batch uses its own).
        device: ``cpu``, ``0``… or ``None`` for Ultralytics' choice.
        conf: confidence floor for mAP (keep it low: mAP integrates over confidence).
        iou: NMS IoU.
        out_dir: where results and plots go (default: :func:`default_out`, named by model version, dataset and
            split, so evaluating another model or split does not overwrite this one).
        plots: Ultralytics' own image plots; ``None`` means on unless offline (``YOLO_OFFLINE=1``).

    Returns:
        The measured :class:`EvalResult`.

    Raises:
        EvalError: missing/unusable weights, data.yaml or split.

    Example:
        >>> r = evaluate("runs/fit/train/weights/best.pt", "data/data.yaml", split="test")  # doctest: +SKIP
        >>> print(r.to_markdown())  # doctest: +SKIP
    """
    weights, data_yaml = Path(weights), Path(data_yaml)
    data = load_data(data_yaml)
    _check_split(data, data_yaml, split)
    _check_weights(weights)
    out = Path(
        out_dir if out_dir is not None else default_out("eval", [model_label(weights)], data_yaml, split)
    ).resolve()
    data_names = class_names(data)
    model = _load_model(weights)
    model_names = [str(n) for n in model.names.values()]
    draw = (not offline()) if plots is None else plots
    validator = _validator_class(_remap(model_names, data_names), data_names, draw)
    out.mkdir(parents=True, exist_ok=True)
    metrics = model.val(
        validator=validator,
        **dict(data=str(data_yaml), split=split, imgsz=imgsz, batch=batch, conf=conf, iou=iou, plots=True),
        **({"device": device} if device is not None else {}),
        **dict(project=str(out.parent), name=out.name, exist_ok=True, verbose=False, workers=0),
    )
    matrix = np.asarray(metrics.confusion_matrix.matrix, dtype=float)
    speed = {k: float(metrics.speed.get(k, 0.0)) for k in ("preprocess", "inference", "postprocess")}
    result = EvalResult(
        weights=str(weights),
        data=str(data_yaml),
        split=split,
        imgsz=imgsz,
        precision=float(metrics.box.mp),
        recall=float(metrics.box.mr),
        map50=float(metrics.box.map50),
        map50_95=float(metrics.box.map),
        classes=_class_rows(metrics, data_names),
        speed=speed,
        model_classes=model_names,
        confusion_matrix=matrix.tolist(),
        confusion_png=str(plot_confusion(matrix, data_names, out / "confusion.png")),
        out_dir=str(out),
        version=model_version(weights),
        device=_device_text(device),
        fps=1000.0 / sum(speed.values()) if sum(speed.values()) > 0 else 0.0,
    )
    (out / "eval.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def plot_confusion(matrix: np.ndarray, names: Sequence[str], out_png: Path) -> Path:
    """Draw a confusion matrix (rows predicted, columns true, last row/column background) as a PNG.

    Cells show counts; colour is the share of each true class (column-normalised), as Ultralytics does.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*names, "background"]
    m = np.asarray(matrix, dtype=float)
    shares = m / np.maximum(m.sum(0, keepdims=True), 1e-9)
    size = 2 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(m):
        if v:
            ax.text(
                j,
                i,
                f"{int(v)}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shares[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("Confusion matrix (counts; colour = share of true class)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


# --- comparison ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassDelta:
    """One class side by side; a side is ``None`` when that model does not know the class."""

    name: str
    baseline: ClassMetrics | None
    finetuned: ClassMetrics | None

    def delta(self, key: str) -> float | None:
        """``finetuned − baseline`` of a metric; a side lacking the class counts as 0, no data as ``None``."""
        b, f = self._value(self.baseline, key), self._value(self.finetuned, key)
        if (self.baseline is not None and b is None) or (self.finetuned is not None and f is None):
            return None  # the class has no instances in the split
        return (f or 0.0) - (b or 0.0)

    @staticmethod
    def _value(side: ClassMetrics | None, key: str) -> float | None:
        return None if side is None else getattr(side, key)


def compare_results(baseline: EvalResult, finetuned: EvalResult) -> list[ClassDelta]:
    """Line the dataset's classes up by name.

    A side whose *model* lacks a class (a COCO baseline has no ``milk_carton``) gets ``None`` there.
    Classes follow the fine-tuned model's order, then any only the baseline reports.
    """
    b_rows, f_rows = baseline.class_by_name(), finetuned.class_by_name()
    b_known = {norm_name(n) for n in baseline.model_classes}
    f_known = {norm_name(n) for n in finetuned.model_classes}
    order = [c.name for c in finetuned.classes] + [
        c.name for c in baseline.classes if norm_name(c.name) not in f_rows
    ]
    return [
        ClassDelta(
            name,
            b_rows.get(norm_name(name)) if norm_name(name) in b_known else None,
            f_rows.get(norm_name(name)) if norm_name(name) in f_known else None,
        )
        for name in order
    ]


@dataclass
class Comparison:
    """Baseline vs fine-tuned on one split; ``to_dict()`` is what ``compare.json`` holds."""

    baseline: EvalResult
    finetuned: EvalResult
    plot_png: str | None = None

    @property
    def classes(self) -> list[ClassDelta]:
        """Per-class rows matched by name."""
        return compare_results(self.baseline, self.finetuned)

    def overall_deltas(self) -> dict[str, float]:
        """``finetuned − baseline`` of the overall metrics."""
        return {k: self.finetuned.metric(k) - self.baseline.metric(k) for k in OVERALL}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {
            "baseline": self.baseline.to_dict(),
            "finetuned": self.finetuned.to_dict(),
            "overall_delta": self.overall_deltas(),
            "classes": [
                {"name": c.name, **{f"delta_{k}": c.delta(k) for k in OVERALL}} for c in self.classes
            ],
            "plot_png": self.plot_png,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Comparison:
        """Rebuild from :meth:`to_dict` output (e.g. a saved ``compare.json``)."""
        return cls(
            EvalResult.from_dict(d["baseline"]), EvalResult.from_dict(d["finetuned"]), d.get("plot_png")
        )

    def to_markdown(self, rel_to: Path | None = None) -> str:
        """Markdown: overall and per-class side-by-side tables with deltas, and the bar plot."""
        b, f = Path(self.baseline.weights).name, Path(self.finetuned.weights).name
        lines = [
            f"### Comparison on `{self.finetuned.split}`: `{b}` (baseline) vs `{f}` (fine-tuned)",
            "",
            "| metric | baseline | fine-tuned | Δ |",
            "|---|---:|---:|---:|",
        ]
        deltas = self.overall_deltas()
        for k in OVERALL:
            b_val, f_val = _fmt(self.baseline.metric(k)), _fmt(self.finetuned.metric(k))
            lines.append(f"| {k} | {b_val} | {f_val} | {_fmt_delta(deltas[k])} |")
        keys = ("map50", "map50_95", "precision", "recall")
        header = [h for k in keys for h in (f"{_TITLES[k]} base", f"{_TITLES[k]} tuned", f"Δ {_TITLES[k]}")]
        lines += ["", "| class | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
        for c in self.classes:
            cells = []
            for k in keys:
                cells += [_fmt(ClassDelta._value(c.baseline, k)), _fmt(ClassDelta._value(c.finetuned, k))]
                cells.append(_fmt_delta(c.delta(k)))
            lines.append(f"| {c.name} | " + " | ".join(cells) + " |")
        lines += ["", "— : the model does not know the class, or the split has no instance of it."]
        if self.plot_png:
            lines += ["", f"![baseline vs fine-tuned]({_link(self.plot_png, rel_to)})"]
        return "\n".join(lines) + "\n"


def plot_comparison(comp: Comparison, out_png: Path) -> Path:
    """Grouped bars of mAP50 and mAP50-95 per class (and overall) for both models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = comp.classes
    labels = ["all", *(c.name for c in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(labels) * 2), 4), sharey=True)
    x = np.arange(len(labels))
    for ax, key, title in zip(axes, ("map50", "map50_95"), ("mAP50", "mAP50-95"), strict=True):
        for offset, side, label in ((-0.2, "baseline", "baseline"), (0.2, "finetuned", "fine-tuned")):
            result: EvalResult = getattr(comp, side)
            vals = [result.metric(key)] + [ClassDelta._value(getattr(c, side), key) or 0.0 for c in rows]
            ax.bar(x + offset, vals, width=0.4, label=label)
        ax.set_xticks(x, labels, rotation=45, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def compare(
    baseline: Path | str,
    finetuned: Path | str,
    data_yaml: Path | str,
    split: str = "test",
    imgsz: int = 640,
    batch: int = 16,
    device: str | None = None,
    conf: float = 0.001,
    iou: float = 0.6,
    out_dir: Path | str | None = None,
) -> Comparison:
    """Evaluate both models on the same split and write ``compare.json`` and ``compare.png``.

    Args:
        baseline: weights before fine-tuning (e.g. COCO ``yolov8n.pt``).
        finetuned: weights after fine-tuning.
        data_yaml: YOLO dataset description.
        split: split both models are scored on.
        imgsz: inference size.
        batch: batch size.
        device: Ultralytics device string or ``None``.
        conf: confidence floor for mAP.
        iou: NMS IoU.
        out_dir: results go to ``out_dir/{baseline,finetuned}`` and ``out_dir`` (default: named by both
            model versions, the dataset and the split, see :func:`default_out`).

    Returns:
        The :class:`Comparison`; deltas are ``finetuned − baseline``.

    Raises:
        EvalError: missing/unusable weights, data.yaml or split.
    """
    # Check both before the first (slow) evaluation, so a typo in the second fails at once.
    for w in (Path(baseline), Path(finetuned)):
        _check_weights(w)
    out = (
        Path(out_dir)
        if out_dir is not None
        else default_out("compare", [model_label(Path(m)) for m in (baseline, finetuned)], data_yaml, split)
    )
    common = dict(
        data_yaml=data_yaml, split=split, imgsz=imgsz, batch=batch, device=device, conf=conf, iou=iou
    )
    b = evaluate(baseline, out_dir=out / "baseline", **common)  # type: ignore[arg-type]
    f = evaluate(finetuned, out_dir=out / "finetuned", **common)  # type: ignore[arg-type]
    comp = Comparison(b, f)
    comp.plot_png = str(plot_comparison(comp, out / "compare.png"))
    (out / "compare.json").write_text(json.dumps(comp.to_dict(), indent=2) + "\n")
    return comp

"""Error analysis: where a detector is wrong, image by image (the notebook's step 2.8).

At one operating point (``conf``), each model's predictions are matched to the ground truth
(:func:`match`), giving TP/FP/FN per image, and P/R/F1 per model and per class. Galleries show the
images with the most false positives and the most false negatives: found ground truth in green, missed
ground truth (false negatives) in magenta and marked "missed", matched predictions in orange, false
positives in red.

Predictions come from a *predictor*: Ultralytics weights (``.pt``/``.onnx``, streamed over the split)
or any callable ``image (BGR) → (boxes xyxy px, scores, class ids in the dataset's numbering)``,
which is how the tests drive the logic without a network.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge.detections import box_iou
from train.evaluate import EvalError, _check_split, _check_weights, _link, class_names, load_data, norm_name

__all__ = [
    "ClassErrors",
    "ErrorReport",
    "ImageErrors",
    "ModelErrors",
    "Predictor",
    "analyse",
    "class_errors",
    "draw_errors",
    "gallery",
    "match",
    "prf",
    "read_labels",
    "split_images",
]

Prediction = tuple[npt.NDArray[np.floating], npt.NDArray[np.floating], npt.NDArray[np.integer]]
Predictor = Callable[[np.ndarray], Prediction]
IMG_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
GREEN, ORANGE, RED, MAGENTA = (0, 200, 0), (0, 165, 255), (0, 0, 255), (255, 0, 255)
OVERALL = ("precision", "recall", "f1")


# --- pure metrics ----------------------------------------------------------------------------------


def match(
    pred_boxes: npt.ArrayLike,
    pred_cls: npt.ArrayLike,
    gt_boxes: npt.ArrayLike,
    gt_cls: npt.ArrayLike,
    iou_thr: float = 0.5,
    scores: npt.ArrayLike | None = None,
) -> tuple[int, int, int, list[tuple[int, int, float]]]:
    """Match predictions to ground truth greedily by confidence, class-aware.

    Predictions are visited from the most to the least confident; each takes the unmatched ground-truth
    box of its class with the highest IoU, if that IoU is ``>= iou_thr``. A second prediction on an
    already matched object is therefore a false positive, as in COCO/VOC matching.

    Args:
        pred_boxes: ``(n, 4)`` xyxy.
        pred_cls: ``(n,)`` class ids.
        gt_boxes: ``(m, 4)`` xyxy.
        gt_cls: ``(m,)`` class ids.
        iou_thr: minimum IoU for a match.
        scores: ``(n,)`` confidences; ``None`` keeps the given order (already sorted).

    Returns:
        ``(tp, fp, fn, matches)`` with ``matches`` a list of ``(pred_index, gt_index, iou)``.

    Example:
        >>> match([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 1], [[0, 0, 10, 10]], [1], scores=[0.9, 0.8])[:3]
        (1, 1, 0)
    """
    pb, gb = (
        np.asarray(pred_boxes, np.float32).reshape(-1, 4),
        np.asarray(gt_boxes, np.float32).reshape(-1, 4),
    )
    pc, gc = np.asarray(pred_cls).reshape(-1).astype(int), np.asarray(gt_cls).reshape(-1).astype(int)
    order = (
        np.arange(len(pb))
        if scores is None
        else np.argsort(-np.asarray(scores, float).reshape(-1), kind="stable")
    )
    ious = box_iou(pb, gb)
    taken = np.zeros(len(gb), bool)
    matches: list[tuple[int, int, float]] = []
    for p in order:
        candidates = np.where((gc == pc[p]) & ~taken, ious[p], -1.0)
        g = int(np.argmax(candidates)) if len(gb) else -1
        if g >= 0 and candidates[g] >= iou_thr:
            taken[g] = True
            matches.append((int(p), g, float(ious[p, g])))
    tp = len(matches)
    return tp, len(pb) - tp, len(gb) - tp, matches


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1; a ratio with a zero denominator is 0.

    Example:
        >>> prf(3, 0, 3)
        (1.0, 0.5, 0.6666666666666666)
    """
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# --- dataset reading -------------------------------------------------------------------------------


def _root(data: Mapping[str, Any], data_yaml: Path) -> Path:
    root = Path(str(data.get("path") or data_yaml.parent))
    return root if root.is_absolute() else (data_yaml.parent / root)


def split_images(data_yaml: Path | str, split: str) -> list[Path]:
    """The image files of a split: a folder, a ``.txt`` list of images, or a list of either.

    Raises:
        EvalError: the split is missing, points nowhere, or holds no image.
    """
    data_yaml = Path(data_yaml)
    data = load_data(data_yaml)
    _check_split(data, data_yaml, split)
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    root, images = _root(data, data_yaml), []
    for entry in entries:
        path = Path(str(entry)) if Path(str(entry)).is_absolute() else root / str(entry)
        if path.is_dir():
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMG_SUFFIXES)
        elif path.suffix == ".txt" and path.is_file():
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            images += [Path(ln) if Path(ln).is_absolute() else (path.parent / ln).resolve() for ln in lines]
        else:
            raise EvalError(f"{data_yaml}: {split}: {path} not found")
    if not images:
        raise EvalError(f"{data_yaml}: {split}: no images in {', '.join(map(str, entries))}")
    return images


def read_labels(image: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth of an image from its YOLO label file (``…/images/…`` → ``…/labels/….txt``).

    Returns:
        ``(boxes xyxy in pixels (m, 4), class ids (m,))``; empty for a missing file (a negative image).
    """
    parts = list(image.parts)
    at = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    if at is None:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    label = Path(*parts[:at], "labels", *parts[at + 1 :]).with_suffix(".txt")
    rows = (
        np.loadtxt(label, ndmin=2, usecols=range(5))
        if label.exists() and label.stat().st_size
        else np.zeros((0, 5))
    )
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    return boxes, rows[:, 0].astype(np.int64)


# --- results ---------------------------------------------------------------------------------------


@dataclass
class ImageErrors:
    """Ground truth, predictions and their matching on one image."""

    image: Path
    gt_boxes: np.ndarray
    gt_cls: np.ndarray
    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    pred_cls: np.ndarray
    pred_labels: list[str]
    matches: list[tuple[int, int, float]]

    @property
    def tp(self) -> int:
        """Matched predictions."""
        return len(self.matches)

    @property
    def fp(self) -> int:
        """Unmatched predictions."""
        return len(self.pred_boxes) - self.tp

    @property
    def fn(self) -> int:
        """Unmatched ground-truth objects."""
        return len(self.gt_boxes) - self.tp

    def per_class(self) -> dict[int, tuple[int, int, int]]:
        """``class id → (tp, fp, fn)`` on this image (a false positive counts for its predicted class)."""
        out: dict[int, list[int]] = {}
        matched_p = {p for p, _, _ in self.matches}
        matched_g = {g for _, g, _ in self.matches}
        for i, c in enumerate(self.pred_cls.tolist()):
            out.setdefault(int(c), [0, 0, 0])[0 if i in matched_p else 1] += 1
        for j, c in enumerate(self.gt_cls.tolist()):
            if j not in matched_g:
                out.setdefault(int(c), [0, 0, 0])[2] += 1
        return {k: (v[0], v[1], v[2]) for k, v in out.items()}


class _Rates:
    """Precision, recall and F1 from the ``tp``, ``fp`` and ``fn`` of the dataclass that mixes it in."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        """TP / (TP + FP)."""
        return prf(self.tp, self.fp, self.fn)[0]

    @property
    def recall(self) -> float:
        """TP / (TP + FN)."""
        return prf(self.tp, self.fp, self.fn)[1]

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        return prf(self.tp, self.fp, self.fn)[2]


@dataclass(frozen=True)
class ClassErrors(_Rates):
    """TP/FP/FN of one class over the split, and its P/R/F1."""

    name: str
    tp: int
    fp: int
    fn: int

    def to_dict(self) -> dict[str, Any]:
        """Counts and ratios."""
        keys = ("name", "tp", "fp", "fn", "precision", "recall", "f1")
        return {k: getattr(self, k) for k in keys}


@dataclass
class ModelErrors(_Rates):
    """Totals of one model over the split, and its galleries."""

    name: str
    tp: int
    fp: int
    fn: int
    fp_gallery: str | None = None
    fn_gallery: str | None = None
    images: list[ImageErrors] = field(default_factory=list, repr=False)
    classes: list[ClassErrors] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Totals, P/R/F1 overall and per class, gallery paths (per-image rows are in the CSV)."""
        keys = ("name", "tp", "fp", "fn", "precision", "recall", "f1", "fp_gallery", "fn_gallery")
        return {**{k: getattr(self, k) for k in keys}, "classes": [c.to_dict() for c in self.classes]}


@dataclass
class ErrorReport:
    """Error analysis of one or more models on one split; ``to_dict()`` is what ``errors.json`` holds."""

    split: str
    conf: float
    iou: float
    models: list[ModelErrors]
    csv: str | None = None

    def deltas(self) -> dict[str, float] | None:
        """P/R/F1 of the second model minus the first (``None`` with a single model)."""
        if len(self.models) < 2:
            return None
        first, second = self.models[0], self.models[1]
        return {k: getattr(second, k) - getattr(first, k) for k in OVERALL}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {
            "split": self.split,
            "conf": self.conf,
            "iou": self.iou,
            "models": [m.to_dict() for m in self.models],
            "delta": self.deltas(),
            "csv": self.csv,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ErrorReport:
        """Rebuild the totals from :meth:`to_dict` output (per-image data is not restored)."""
        models = [
            ModelErrors(
                m["name"],
                m["tp"],
                m["fp"],
                m["fn"],
                m.get("fp_gallery"),
                m.get("fn_gallery"),
                classes=[ClassErrors(c["name"], c["tp"], c["fp"], c["fn"]) for c in m.get("classes", [])],
            )
            for m in d["models"]
        ]
        return cls(d["split"], d["conf"], d["iou"], models, d.get("csv"))

    def to_markdown(self, rel_to: Path | None = None) -> str:
        """Markdown: TP/FP/FN and P/R/F1 per model, the deltas, and the galleries."""
        lines = [
            f"### Error analysis on `{self.split}` (conf ≥ {self.conf}, IoU ≥ {self.iou})",
            "",
            "| model | TP | FP | FN | precision | recall | F1 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m in self.models:
            lines.append(
                f"| {m.name} | {m.tp} | {m.fp} | {m.fn} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} |"
            )
        delta = self.deltas()
        if delta:
            lines += ["", f"Δ ({self.models[1].name} − {self.models[0].name}): "]
            lines[-1] += ", ".join(f"{k} {v:+.3f}" for k, v in delta.items())
        lines += self._class_table()
        legend = "green: found truth, magenta: missed truth, orange: matched, red: false positive"
        for m in self.models:
            for kind, path in (("false positives", m.fp_gallery), ("false negatives", m.fn_gallery)):
                if path:
                    lines += ["", f"**{m.name}: most {kind}** ({legend})"]
                    lines += ["", f"![{m.name} {kind}]({_link(path, rel_to)})"]
        return "\n".join(lines) + "\n"

    def _class_table(self) -> list[str]:
        """Per class: TP/FP/FN and P/R/F1 of each model side by side."""
        names = list(dict.fromkeys(c.name for m in self.models for c in m.classes))
        if not names:
            return []
        header = "| class | " + " | ".join(f"{m.name} TP/FP/FN | P | R | F1" for m in self.models) + " |"
        lines = ["", "Per class:", "", header, "|---|" + "---:|---:|---:|---:|" * len(self.models)]
        for name in names:
            cells = []
            for m in self.models:
                c = next((x for x in m.classes if x.name == name), ClassErrors(name, 0, 0, 0))
                cells.append(f"{c.tp}/{c.fp}/{c.fn} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return lines


def class_errors(records: Sequence[ImageErrors], names: Sequence[str]) -> list[ClassErrors]:
    """Per-class totals over images, in the dataset's class order (classes never seen are left out)."""
    totals: dict[int, list[int]] = {}
    for rec in records:
        for c, counts in rec.per_class().items():
            t = totals.setdefault(c, [0, 0, 0])
            for i in range(3):
                t[i] += counts[i]
    return [
        ClassErrors(names[c] if 0 <= c < len(names) else str(c), *totals[c])
        for c in sorted(totals, key=lambda c: (c < 0, c))
    ]


# --- predictions -----------------------------------------------------------------------------------


def _from_callable(
    predict: Predictor, images: Sequence[Path], names: Sequence[str]
) -> Iterator[tuple[Path, tuple[int, int], Prediction, list[str]]]:
    for path in images:
        img = cv2.imread(str(path))
        if img is None:
            raise EvalError(f"{path}: cannot read image")
        boxes, scores, cls = predict(img)
        cls = np.asarray(cls, np.int64).reshape(-1)
        labels = [names[c] if 0 <= c < len(names) else str(c) for c in cls]
        yield (
            path,
            (img.shape[0], img.shape[1]),
            (np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1), cls),
            labels,
        )


def _from_weights(
    weights: Path, images: Sequence[Path], names: Sequence[str], opts: Mapping[str, Any]
) -> Iterator[tuple[Path, tuple[int, int], Prediction, list[str]]]:
    from train.evaluate import _load_model

    _check_weights(weights)
    model = _load_model(weights)
    model_names = [str(n) for n in model.names.values()]
    index = {norm_name(n): i for i, n in enumerate(names)}
    lut = np.array([index.get(norm_name(n), -1) for n in model_names], np.int64)  # by name: a COCO baseline
    # stream=True: one Results at a time, so a large split does not pile up in memory.
    for r in model.predict(source=[str(p) for p in images], stream=True, verbose=False, **opts):
        b = r.boxes
        model_cls = b.cls.cpu().numpy().astype(np.int64)
        pred = (b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), lut[model_cls])
        yield Path(r.path), tuple(r.orig_shape), pred, [model_names[c] for c in model_cls]


def _analyse_model(
    stream: Iterator[tuple[Path, tuple[int, int], Prediction, list[str]]],
    total: int,
    name: str,
    conf: float,
    iou: float,
) -> ModelErrors:
    from tqdm import tqdm

    records = []
    for path, (h, w), (boxes, scores, cls), labels in tqdm(
        stream, total=total, desc=f"errors {name}", unit="img"
    ):
        keep = scores >= conf
        gt_boxes, gt_cls = read_labels(path, w, h)
        boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
        labels = [lbl for lbl, k in zip(labels, keep, strict=True) if k]
        _, _, _, matches = match(boxes, cls, gt_boxes, gt_cls, iou, scores=scores)
        records.append(ImageErrors(path, gt_boxes, gt_cls, boxes, scores, cls, labels, matches))
    tp, fp, fn = (sum(getattr(r, k) for r in records) for k in ("tp", "fp", "fn"))
    return ModelErrors(name, tp, fp, fn, images=records)


# --- drawing ---------------------------------------------------------------------------------------


def draw_errors(img: np.ndarray, rec: ImageErrors, names: Sequence[str]) -> np.ndarray:
    """Draw truth (green; missed: magenta "missed"), matched predictions (orange), false positives (red)."""
    out = img.copy()
    matched = {p for p, _, _ in rec.matches}
    found = {g for _, g, _ in rec.matches}
    thick = max(1, round(max(out.shape[:2]) / 320))
    for j, (box, c) in enumerate(zip(rec.gt_boxes, rec.gt_cls, strict=True)):
        label = names[c] if 0 <= c < len(names) else str(c)
        if j in found:
            _box(out, box, GREEN, label, thick, above=False)
        else:  # a false negative: thicker, so a missed object stands out in the FN gallery
            _box(out, box, MAGENTA, f"missed {label}", thick + 1, above=False)
    for i, (box, score) in enumerate(zip(rec.pred_boxes, rec.pred_scores, strict=True)):
        _box(
            out, box, ORANGE if i in matched else RED, f"{rec.pred_labels[i]} {score:.2f}", thick, above=True
        )
    return out


def _box(
    img: np.ndarray, box: np.ndarray, color: tuple[int, int, int], label: str, thick: int, above: bool
) -> None:
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    cv2.rectangle(img, (x1, y1), (x2, y2), color, thick)
    scale = 0.4 * thick
    (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    # Truth labels sit inside the box's bottom, predictions above its top, so the two rarely overlap.
    y = max(th + 2, y1 - 2) if above else max(th + 2, y2 - 3)
    cv2.rectangle(img, (x1, y - th - 2), (x1 + tw + 2, y + 2), color, -1)
    cv2.putText(img, label, (x1 + 1, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def gallery(tiles: Sequence[tuple[np.ndarray, str]], out_png: Path, cols: int = 4, tile_w: int = 320) -> Path:
    """Write captioned tiles as one PNG grid; tiles keep their aspect ratio in ``tile_w``-wide cells."""
    cells = []
    for img, caption in tiles:
        h = round(img.shape[0] * tile_w / img.shape[1])
        cell = cv2.resize(img, (tile_w, h), interpolation=cv2.INTER_AREA)
        bar = np.full((22, tile_w, 3), 32, np.uint8)
        cv2.putText(
            bar, caption[:48], (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
        )
        cells.append(np.vstack([bar, cell]))
    cell_h = max(c.shape[0] for c in cells)
    cells = [np.pad(c, ((0, cell_h - c.shape[0]), (0, 0), (0, 0))) for c in cells]
    cells += [np.zeros_like(cells[0])] * (-len(cells) % cols)
    rows = [np.hstack(cells[i : i + cols]) for i in range(0, len(cells), cols)]
    cv2.imwrite(str(out_png), np.vstack(rows))
    return out_png


def _worst_gallery(
    model: ModelErrors, kind: str, names: Sequence[str], out_png: Path, top: int
) -> str | None:
    ranked = sorted((r for r in model.images if getattr(r, kind) > 0), key=lambda r: -getattr(r, kind))[:top]
    if not ranked:
        return None
    tiles = []
    for rec in ranked:
        img = cv2.imread(str(rec.image))
        tiles.append((draw_errors(img, rec, names), f"{rec.image.name}  FP {rec.fp}  FN {rec.fn}"))
    return str(gallery(tiles, out_png, cols=min(4, len(tiles))))


def _write_csv(models: Sequence[ModelErrors], out_csv: Path) -> Path:
    with out_csv.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "image", "gt", "pred", "tp", "fp", "fn"])
        for m in models:
            for r in m.images:
                w.writerow([m.name, str(r.image), len(r.gt_boxes), len(r.pred_boxes), r.tp, r.fp, r.fn])
    return out_csv


# --- entry point -----------------------------------------------------------------------------------


def _model_name(spec: Path | str | Predictor, i: int) -> str:
    if callable(spec):
        return getattr(spec, "__name__", f"model{i + 1}")
    path = Path(spec)
    # best.pt of two runs would collide; name by run folder when the file name is generic.
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "weights" else path.name


def _default_out(weights_list: Sequence[Path | str | Predictor], data_yaml: Path | str, split: str) -> Path:
    from train.evaluate import default_out, model_label

    labels = [
        getattr(w, "__name__", f"model{i + 1}") if callable(w) else model_label(Path(w))
        for i, w in enumerate(weights_list)
    ]
    return default_out("errors", labels, data_yaml, split)


def analyse(
    weights_list: Sequence[Path | str | Predictor],
    data_yaml: Path | str,
    split: str = "test",
    conf: float = 0.25,
    iou: float = 0.5,
    imgsz: int = 640,
    out_dir: Path | str | None = None,
    top: int = 12,
    device: str | None = None,
    nms_iou: float = 0.7,
    names: Sequence[str] | None = None,
) -> ErrorReport:
    """Run each model over a split and report TP/FP/FN, P/R/F1, galleries and a per-image CSV.

    Args:
        weights_list: ``.pt``/``.onnx`` paths or predictor callables (image → boxes, scores, class ids).
            The first is the reference for deltas (e.g. the baseline, then the fine-tuned model).
        data_yaml: YOLO dataset description.
        split: split to analyse.
        conf: confidence threshold: the operating point being judged.
        iou: IoU a prediction needs with a truth box of its class to count as a TP.
        imgsz: inference size for weights.
        out_dir: where ``errors.json``, ``errors.csv`` and the galleries go (default:
            ``runs/errors/<model versions>-<dataset>-<split>``, so another model, dataset or split
            does not overwrite it).
        top: images per gallery.
        device: Ultralytics device string or ``None``.
        nms_iou: NMS IoU for weights.
        names: display names of the models (default: from file names).

    Returns:
        The :class:`ErrorReport`.

    Raises:
        EvalError: missing weights, data.yaml, split or images.
    """
    if not weights_list:
        raise EvalError("errors: give at least one model")
    for spec in weights_list:
        if not callable(spec):
            _check_weights(Path(spec))
    out = Path(out_dir) if out_dir is not None else _default_out(weights_list, data_yaml, split)
    out.mkdir(parents=True, exist_ok=True)
    data_names = class_names(load_data(data_yaml))
    images = split_images(data_yaml, split)
    opts = {"conf": conf, "iou": nms_iou, "imgsz": imgsz, **({"device": device} if device else {})}
    models = []
    for i, spec in enumerate(weights_list):
        name = names[i] if names else _model_name(spec, i)
        stream = (
            _from_callable(spec, images, data_names)
            if callable(spec)
            else _from_weights(Path(spec), images, data_names, opts)
        )
        m = _analyse_model(stream, len(images), name, conf, iou)
        m.classes = class_errors(m.images, data_names)
        slug = f"{i + 1}_" + "".join(ch if ch.isalnum() else "_" for ch in name)
        m.fp_gallery = _worst_gallery(m, "fp", data_names, out / f"{slug}_fp.png", top)
        m.fn_gallery = _worst_gallery(m, "fn", data_names, out / f"{slug}_fn.png", top)
        models.append(m)
    report = ErrorReport(split, conf, iou, models, str(_write_csv(models, out / "errors.csv")))
    (out / "errors.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report

"""Hybrid labelling: a detector pre-labels images, people correct the result (the notebook's step 2.2).

Model classes are matched to the dataset's classes by NAME, so a COCO model can pre-label the
``apple``/``orange``/``banana`` of a grocery dataset while its ``person`` boxes are skipped (and counted
in the report). Three policies decide what happens to existing labels:

========  ===========================================================================================
keep      existing label files are left untouched; only images without one get the model's boxes
replace   the model's boxes replace an image's labels, except where the model finds nothing
merge     existing boxes plus the model's, minus model boxes that overlap an existing box of the same
          class (IoU >= ``iou``)
========  ===========================================================================================

An image where the model finds nothing and that has no label file stays without one, so that
``lanecount-train check`` lists it for a person to look at.

The labelled folder also gets ``autolabel.csv`` (every model box written, with its confidence: label
files have no room for it) and ``review.txt`` (images a person should check first: a model box below
``review_conf``, or no detection at all). A plain folder of images gets ``classes.txt``.
"""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from edge.detections import Detections, box_iou
from train.dataset import SPLITS, Box, DatasetError, label_path, list_images, load_layout, locate, read_labels
from train.layout import TEMP_EXTRACTIONS

__all__ = ["POLICIES", "AutolabelReport", "Predictor", "autolabel", "ultralytics_predictor"]

POLICIES = ("keep", "replace", "merge")
Predictor = Callable[[np.ndarray], Detections]
"""Detections (pixels, model class ids) of one BGR image."""


@dataclass
class AutolabelReport:
    """What :func:`autolabel` did.

    Attributes:
        root: the labelled dataset (``out``, or the source when labelling in place).
        policy: the policy used.
        written: label files written from model boxes (new or changed).
        kept: label files left as they were.
        added_boxes: model boxes written.
        unlabelled: images with no label file and no detections (left for a person).
        unknown_classes: model class names absent from the dataset, with how many boxes were skipped.
        notes: things about the input worth knowing (e.g. its data.yaml points at another folder).
        confidences: one row per model box written: image, class, confidence, cx, cy, w, h.
        review: images for a person to check first, with the reason.
        files: the side files written (``autolabel.csv``, ``review.txt``, ``classes.txt``).
    """

    root: Path
    policy: str
    written: int = 0
    kept: int = 0
    added_boxes: int = 0
    unlabelled: list[Path] = field(default_factory=list)
    unknown_classes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    confidences: list[tuple[str, str, float, float, float, float, float]] = field(default_factory=list)
    review: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def to_text(self) -> str:
        """A short summary for the command line."""
        lines = [f"note: {n}" for n in self.notes]
        lines += [
            f"autolabel ({self.policy}) → {self.root}",
            f"label files written: {self.written}, kept: {self.kept}, model boxes added: {self.added_boxes}",
        ]
        if self.unlabelled:
            lines.append(f"{len(self.unlabelled)} images with no detections left unlabelled (review them)")
        if self.unknown_classes:
            skipped = ", ".join(f"{k} ({v})" for k, v in sorted(self.unknown_classes.items()))
            lines.append(f"model classes not in the dataset, skipped: {skipped}")
        if self.review:
            lines.append(f"{len(self.review)} images to review first (low confidence or nothing found)")
        lines += [f"wrote {f}" for f in self.files]
        return "\n".join(lines)


def ultralytics_predictor(model_path: Path, conf: float = 0.25) -> tuple[Predictor, dict[int, str]]:
    """A predictor from an Ultralytics model (``.pt``, ``.onnx`` or a model ``.yaml``) and its names.

    Raises:
        DatasetError: when the model file does not exist.
    """
    path = Path(model_path)
    if not path.exists() and path.suffix not in (".yaml", ".yml"):
        raise DatasetError(f"{path}: model file not found")
    from ultralytics import YOLO  # lazily: the heavy import is needed only here

    model = YOLO(str(path), task="detect")

    def predict(image: np.ndarray) -> Detections:
        result: Any = model.predict(image, conf=conf, verbose=False)[0]  # type: ignore[index]
        boxes = result.boxes
        return Detections(boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(), boxes.cls.cpu().numpy())

    names = model.names
    return predict, {
        int(k): str(v) for k, v in (names.items() if isinstance(names, dict) else enumerate(names))
    }


def _sources(source: Path) -> tuple[Path, list[str] | None, list[Path], list[str]]:
    """Root, dataset names (None for a plain folder of images), the images to label, and notes.

    Paths resolve from the data.yaml in hand: a copied dataset whose ``path:`` still names the
    original is labelled where it is, and a note says so.
    """
    root, data_yaml = locate(source)
    if data_yaml is None:
        return root, None, list_images(root), []
    layout = load_layout(data_yaml)
    if layout.problems:
        raise DatasetError(layout.problems[0])
    notes = [f"{data_yaml}: {fix}" for fix in layout.fixes if ": path: " in fix]
    return root, layout.names, [p for s in SPLITS for p in layout.images[s]], notes


def _to_boxes(dets: Detections, shape: tuple[int, ...]) -> list[tuple[Box, float]]:
    """Normalised boxes inside the image, each with its confidence; empty boxes dropped."""
    h, w = shape[:2]
    xyxy = np.clip(dets.xyxy, 0, [w, h, w, h])
    out = []
    rows = zip(xyxy.tolist(), dets.class_id.tolist(), dets.confidence.tolist(), strict=True)
    for (x1, y1, x2, y2), c, score in rows:
        if x2 > x1 and y2 > y1:
            box = Box(0, int(c), (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
            out.append((box, float(score)))
    return out


def _map_classes(
    dets: Detections, model_names: Mapping[int, str], index: dict[str, int], unknown: Counter[str]
) -> Detections:
    """Model class ids → dataset class ids by name; boxes of unknown classes dropped and counted."""
    ids = []
    for c in dets.class_id.tolist():
        name = str(model_names.get(c, c)).strip().casefold()
        ids.append(index.get(name, -1))
        if name not in index:
            unknown[str(model_names.get(c, c))] += 1
    keep = np.array([i >= 0 for i in ids], bool)
    return Detections(dets.xyxy[keep], dets.confidence[keep], np.array(ids, np.int64)[keep])


def _merged(existing: tuple[Box, ...], model: list[Box], iou: float) -> list[Box]:
    """Model boxes not overlapping an existing box of the same class at IoU >= ``iou``."""
    if not existing or not model:
        return model
    ious = box_iou(np.array([b.xyxy() for b in model]), np.array([b.xyxy() for b in existing]))
    same = np.array([[m.class_id == e.class_id for e in existing] for m in model])
    return [m for m, hit in zip(model, ((ious >= iou) & same).any(axis=1), strict=True) if not hit]


def _decide(policy: str, existing: tuple[Box, ...] | None, model: list[Box], iou: float) -> list[Box] | None:
    """The boxes to write for one image, or None to leave its label file (or its absence) alone."""
    if existing is None:
        return model or None
    if policy == "keep" or not model:
        return None
    if policy == "replace":
        return model
    extra = _merged(existing, model, iou)
    return list(existing) + extra if extra else None


def autolabel(
    source: Path,
    model_path: Path | None = None,
    out: Path | None = None,
    conf: float = 0.25,
    policy: str = "keep",
    iou: float = 0.5,
    predict: Predictor | None = None,
    model_names: Mapping[int, str] | None = None,
    review_conf: float = 0.5,
) -> AutolabelReport:
    """Pre-label a dataset (or a folder of images) with a detector.

    Args:
        source: dataset folder/zip/data.yaml, or a plain folder of images.
        model_path: Ultralytics weights (``.pt``/``.onnx``); not needed when ``predict`` is given.
        out: write the labelled dataset here (images copied, labels written); ``None`` labels in place.
        conf: minimum confidence of a model box.
        policy: ``keep``, ``replace`` or ``merge`` (see the module docstring).
        iou: for ``merge``, the overlap at which a model box duplicates an existing one.
        predict: a :data:`Predictor` to use instead of loading ``model_path`` (tests, other runtimes).
        model_names: class names of ``predict``'s ids; required with ``predict``.
        review_conf: images with a model box below this confidence go to ``review.txt``.

    Returns:
        Counts of what was written and kept, and the model classes that had no match.

    Raises:
        DatasetError: unknown policy, missing model, or a dataset without images.
    """
    if policy not in POLICIES:
        raise DatasetError(f"autolabel: policy {policy!r} is not one of {', '.join(POLICIES)}")
    if predict is None:
        if model_path is None:
            raise DatasetError("autolabel: give a model file")
        predict, model_names = ultralytics_predictor(Path(model_path), conf)
    if model_names is None:
        raise DatasetError("autolabel: model_names are needed with a custom predictor")
    root, names, images, notes = _sources(source)
    if out is None and (root in TEMP_EXTRACTIONS or root.parent in TEMP_EXTRACTIONS):
        raise DatasetError(f"{source}: extracted to a temporary folder that is removed at exit; give --out")
    if not images:
        raise DatasetError(f"{root}: no images found")
    plain = names is None
    names = names if names is not None else [model_names[k] for k in sorted(model_names)]
    index = {n.strip().casefold(): i for i, n in enumerate(names)}
    dest = root if out is None else Path(out)
    report = AutolabelReport(dest, policy, notes=notes)
    unknown: Counter[str] = Counter()
    for image in images:
        _label_one(
            image, root, dest, names, index, (predict, model_names, conf, policy, iou), unknown, report
        )
        _flag_for_review(image, root, report, review_conf)
    report.unknown_classes = dict(unknown)
    if out is not None:
        _copy_yaml(root, dest, names)
    _write_side_files(dest, names, plain, report)
    return report


def _flag_for_review(image: Path, root: Path, report: AutolabelReport, review_conf: float) -> None:
    rel = _rel(image, root)
    scores = [row[2] for row in report.confidences if row[0] == rel]
    if scores and min(scores) < review_conf:
        report.review[rel] = f"lowest confidence {min(scores):.2f} < {review_conf:g}"
    elif report.unlabelled and report.unlabelled[-1] == image:
        report.review[rel] = "no detection, no label"


def _rel(image: Path, root: Path) -> str:
    try:
        return image.relative_to(root).as_posix()
    except ValueError:
        return str(image)


def _write_side_files(dest: Path, names: list[str], plain: bool, report: AutolabelReport) -> None:
    """``autolabel.csv`` (confidences), ``review.txt`` and, for a plain folder, ``classes.txt``."""
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "autolabel.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "class", "confidence", "cx", "cy", "w", "h"])
        for image, name, score, *box in report.confidences:
            writer.writerow([image, name, f"{score:.4f}", *(f"{v:.6f}" for v in box)])
    review = "".join(f"{image}\t{why}\n" for image, why in sorted(report.review.items()))
    (dest / "review.txt").write_text(review)
    report.files += [dest / "autolabel.csv", dest / "review.txt"]
    if plain:  # what split and check read the class names from when there is no data.yaml
        (dest / "classes.txt").write_text("".join(f"{n}\n" for n in names))
        report.files.append(dest / "classes.txt")


def _label_one(
    image: Path,
    root: Path,
    dest: Path,
    names: list[str],
    index: dict[str, int],
    how: tuple[Predictor, Mapping[int, str], float, str, float],
    unknown: Counter[str],
    report: AutolabelReport,
) -> None:
    predict, model_names, conf, policy, iou = how
    src_label = label_path(image)
    image_dest = image if dest == root else dest / _copy_path(image, root)
    target = label_path(image_dest)
    existing = read_labels(src_label, len(names)).boxes if src_label.exists() else None
    pixels = cv2.imread(str(image))
    boxes: list[Box] | None = None
    scored: list[tuple[Box, float]] = []
    if pixels is not None and not (policy == "keep" and existing is not None):
        dets = predict(pixels)
        dets = _map_classes(dets[dets.confidence >= conf], model_names, index, unknown)
        scored = _to_boxes(dets, pixels.shape)
        boxes = _decide(policy, existing, [b for b, _ in scored], iou)
    if image_dest != image:
        image_dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, image_dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    if boxes is not None:
        target.write_text("".join(f"{b.to_line()}\n" for b in boxes))
        score = {id(b): c for b, c in scored}
        rel = _rel(image, root)
        report.confidences += [
            (rel, names[b.class_id], score[id(b)], b.cx, b.cy, b.w, b.h) for b in boxes if id(b) in score
        ]
        report.written += 1
        report.added_boxes += len(boxes) - (len(existing) if existing and policy == "merge" else 0)
    elif existing is not None:
        if dest != root:
            shutil.copy2(src_label, target)
        report.kept += 1
    else:
        report.unlabelled.append(image)


def _copy_path(image: Path, root: Path) -> Path:
    """Where ``image`` goes in the labelled copy, relative to it."""
    try:
        rel_image = image.relative_to(root)
    except ValueError as exc:
        raise DatasetError(
            f"{image}: outside the dataset folder {root} (its data.yaml points there); "
            "label that folder instead"
        ) from exc
    if "images" not in rel_image.parts:  # a plain folder becomes images/ + labels/ in the copy
        rel_image = Path("images") / rel_image
    return rel_image


def _copy_yaml(root: Path, dest: Path, names: list[str]) -> None:
    """data.yaml for the copy: the source's (paths re-rooted) or a new one with the names."""
    _, data_yaml = locate(root)
    if data_yaml is not None:
        data = load_layout(data_yaml).data
        data["path"] = str(dest.resolve())
    else:
        data = {"path": str(dest.resolve()), "train": "images", "val": "images"}
    data["nc"], data["names"] = len(names), dict(enumerate(names))
    (dest / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

"""The slice of a YOLO dataset that export needs: a split's images and labels, read without Ultralytics.

``export`` installs without torch or Ultralytics (it may import only ``edge``), so the INT8 calibration
and the accuracy gate read ``data.yaml`` and the label files themselves: ``path`` plus ``train``/``val``
folders of images, labels in the sibling ``labels/`` folder, one ``cls cx cy w h`` row per box
(normalized), the layout ``lanecount-train synth`` and Ultralytics use.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from edge.errors import LanecountError

__all__ = ["DataError", "Sample", "balanced_by_class", "load_split"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DataError(LanecountError):
    """The dataset YAML or a split is missing or malformed."""


@dataclass(frozen=True)
class Sample:
    """One image and its ground truth (class ids, normalized ``cx, cy, w, h`` boxes)."""

    image: Path
    classes: npt.NDArray[np.int64]
    boxes: npt.NDArray[np.float32]


def read_names(data_yaml: Path) -> list[str]:
    """The class names of a dataset YAML (a list or an ``{id: name}`` mapping)."""
    names = _load(data_yaml).get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise DataError(f"{data_yaml}: names: expected a list or an {{id: name}} mapping")


def load_split(data_yaml: Path, split: str) -> list[Sample]:
    """The images of ``split`` (``train``/``val``/``test``) with their labels, sorted by file name.

    Raises:
        DataError: the YAML, the split or its images are missing, or a label row is malformed.
    """
    data = _load(data_yaml)
    if split not in data:
        raise DataError(f"{data_yaml}: no '{split}' split")
    root = Path(str(data.get("path") or data_yaml.parent))
    if not root.is_absolute():
        root = (data_yaml.parent / root).resolve()
    folder = root / str(data[split])
    images = (
        sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    )
    if not images:
        raise DataError(f"{data_yaml}: {split}: no images in {folder}")
    return [_sample(img) for img in images]


def _load(data_yaml: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(data_yaml.read_text())
    except FileNotFoundError:
        raise DataError(f"{data_yaml}: dataset YAML not found") from None
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{data_yaml}: unreadable dataset YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{data_yaml}: expected a mapping with path, train, val, names")
    return data


def _sample(image: Path) -> Sample:
    """Labels live in ``labels/`` beside ``images/`` (the last ``images`` path part is swapped)."""
    parts = list(image.with_suffix(".txt").parts)
    idx = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    if idx is None:
        return Sample(image, np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    parts[idx] = "labels"
    label = Path(*parts)
    rows: list[list[float]] = []
    if label.is_file():
        for n, line in enumerate(label.read_text().splitlines(), 1):
            if not line.strip():
                continue
            values = line.split()
            try:
                rows.append([float(v) for v in values[:5]])
            except ValueError:
                raise DataError(f"{label}:{n}: expected 'class cx cy w h'") from None
            if len(values) < 5:
                raise DataError(f"{label}:{n}: expected 'class cx cy w h'")
    arr = np.asarray(rows, np.float32).reshape(-1, 5)
    return Sample(image, arr[:, 0].astype(np.int64), arr[:, 1:5])


def balanced_by_class(samples: list[Sample], n: int, seed: int = 0) -> list[Sample]:
    """Pick ``n`` images so every class is about equally represented.

    Round-robin over the classes, rarest first: each turn takes, for the class with the fewest boxes
    picked so far, a not-yet-picked image containing it (in a seeded random order). Images without any
    box fill the rest, so the calibration also sees empty belts.
    """
    rng = np.random.default_rng(seed)
    order = [samples[i] for i in rng.permutation(len(samples))]
    if n >= len(order):
        return order
    picked: list[Sample] = []
    taken: set[Path] = set()
    counts: Counter[int] = Counter()
    classes = sorted({int(c) for s in order for c in s.classes})
    while len(picked) < n and classes:
        cls = min(classes, key=lambda c: (counts[c], c))
        pick = next((s for s in order if s.image not in taken and cls in s.classes), None)
        if pick is None:
            classes.remove(cls)
            continue
        picked.append(pick)
        taken.add(pick.image)
        counts.update(int(c) for c in pick.classes)
    picked += [s for s in order if s.image not in taken][: n - len(picked)]
    return picked

"""Dataset tools: find, check, repair, split and merge YOLO detection datasets (the notebook's steps 2.1–2.4).

A dataset is a folder (or a ``.zip`` of one) with a ``data.yaml`` and its images and labels in either
layout::

    images/train/a.jpg  labels/train/a.txt      (Ultralytics)
    train/images/a.jpg  train/labels/a.txt      (Roboflow export; "valid" for val)

A label file holds one ``class cx cy w h`` line per box, normalised to [0, 1]; its path is the image's
with the last ``images`` folder replaced by ``labels`` (the rule Ultralytics applies). An EMPTY label
file is a negative image (nothing to detect); a MISSING one is reported, because it usually means an
image nobody labelled.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from edge.errors import LanecountError

__all__ = [
    "IMAGE_EXTS",
    "SPLITS",
    "Box",
    "CheckReport",
    "DatasetError",
    "LabelFile",
    "Layout",
    "MergeResult",
    "SplitResult",
    "check",
    "label_path",
    "list_images",
    "load_layout",
    "locate",
    "merge",
    "read_labels",
    "resolve",
    "split",
    "validate_yaml",
]

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
_DUPLICATE_IOU = 0.95
_NEGATIVE = "(negative)"


class DatasetError(LanecountError):
    """A dataset cannot be found or read; the message names the file (and line)."""


# --- labels --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """One valid label line: 1-based ``line`` number, class id and normalised centre/size."""

    line: int
    class_id: int
    cx: float
    cy: float
    w: float
    h: float

    def xyxy(self) -> tuple[float, float, float, float]:
        """Normalised corners ``x1, y1, x2, y2``."""
        return (self.cx - self.w / 2, self.cy - self.h / 2, self.cx + self.w / 2, self.cy + self.h / 2)

    def to_line(self, class_id: int | None = None) -> str:
        """The YOLO text line of this box, optionally with another class id."""
        c = self.class_id if class_id is None else class_id
        return f"{c} {self.cx:.6f} {self.cy:.6f} {self.w:.6f} {self.h:.6f}"


@dataclass(frozen=True)
class LabelFile:
    """A parsed label file: its valid boxes and ``(line, problem)`` pairs for the rest."""

    boxes: tuple[Box, ...]
    problems: tuple[tuple[int, str], ...]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


_Parsed = tuple[int, float, float, float, float]


def _parse_line(text: str, nc: int | None) -> tuple[_Parsed | None, str | None]:
    fields = text.split()
    if len(fields) != 5:
        return None, f"expected 5 fields 'class cx cy w h', got {len(fields)}"
    try:
        values = [float(f) for f in fields]
    except ValueError:
        bad = next(f for f in fields if not _is_number(f))
        return None, f"not a number: {bad!r}"
    if not values[0].is_integer() or values[0] < 0:
        return None, f"class id must be a non-negative integer, got {fields[0]!r}"
    cls = int(values[0])
    if nc is not None and cls >= nc:
        return None, f"class id {cls} >= nc {nc}"
    cx, cy, w, h = values[1:]
    outside = [
        f"{k}={v:g}" for k, v in zip(("cx", "cy", "w", "h"), values[1:], strict=True) if not 0.0 <= v <= 1.0
    ]
    if w <= 0 or h <= 0:
        return None, f"zero or negative box size (w={w:g}, h={h:g})"
    if outside:
        return None, f"coordinate outside [0, 1]: {', '.join(outside)}"
    return (cls, cx, cy, w, h), None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_labels(path: Path, nc: int | None = None) -> LabelFile:
    """Parse a YOLO label file, keeping valid boxes and describing every bad line.

    Duplicates (same class and IoU > 0.95 with an earlier box) are reported and left out of ``boxes``,
    as Ultralytics drops them too.

    Args:
        path: the ``.txt`` file.
        nc: number of classes; class ids ``>= nc`` are problems. ``None`` skips that test.

    Returns:
        The valid boxes and ``(line, message)`` problems, lines counted from 1.
    """
    boxes: list[Box] = []
    problems: list[tuple[int, str]] = []
    for no, raw in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        parsed, problem = _parse_line(raw, nc)
        if parsed is None:
            problems.append((no, problem or "invalid line"))
            continue
        box = Box(no, *parsed)
        dup = next(
            (b for b in boxes if b.class_id == box.class_id and _iou(b.xyxy(), box.xyxy()) > _DUPLICATE_IOU),
            None,
        )
        if dup is not None:
            iou = _iou(dup.xyxy(), box.xyxy())
            problems.append((no, f"duplicate of line {dup.line} (class {box.class_id}, IoU {iou:.2f})"))
            continue
        boxes.append(box)
    return LabelFile(tuple(boxes), tuple(problems))


def label_path(image: Path) -> Path:
    """The label file of ``image``: the last ``images`` folder becomes ``labels``, the suffix ``.txt``.

    An image outside any ``images`` folder keeps its label beside it (``a.jpg`` → ``a.txt``).
    """
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


# --- finding a dataset ---------------------------------------------------------------------------------


def _extract(zip_path: Path) -> Path:
    """Extract next to the zip (``data.zip`` → ``data/``), or into a temp dir when that is taken."""
    target = zip_path.with_suffix("")
    marker = target / ".lanecount-extracted"
    stamp = f"{zip_path.resolve()} {zip_path.stat().st_size} {zip_path.stat().st_mtime_ns}"
    if marker.exists() and marker.read_text() == stamp:
        return target
    if target.exists() or not os.access(zip_path.parent, os.W_OK):
        target = Path(tempfile.mkdtemp(prefix=f"{zip_path.stem}-"))
        marker = target / ".lanecount-extracted"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for member in zf.namelist():
                dest = (target / member).resolve()
                if not dest.is_relative_to(target.resolve()):
                    raise DatasetError(f"{zip_path}: member {member!r} would extract outside the folder")
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{zip_path}: not a valid zip file ({exc})") from exc
    marker.write_text(stamp)
    return target


def _find_yaml(folder: Path) -> Path | None:
    for candidate in (folder / "data.yaml", folder / "data.yml"):
        if candidate.is_file():
            return candidate
    nested = sorted(folder.glob("*/data.yaml")) + sorted(folder.glob("*/data.yml"))
    if len(nested) == 1:  # a zip usually wraps the dataset in one top-level folder
        return nested[0]
    tops = sorted(p for p in folder.glob("*.y*ml") if "names" in p.read_text(errors="replace"))
    return tops[0] if len(tops) == 1 else None


def locate(path: Path) -> tuple[Path, Path | None]:
    """Like :func:`resolve`, but a folder without a data.yaml gives ``(folder, None)``."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() == ".zip":
        path = _extract(path)
    if path.is_file():
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise DatasetError(f"{path}: expected a folder, a .zip or a data.yaml")
        return path.parent.resolve(), path.resolve()
    found = _find_yaml(path)
    return (found.parent.resolve(), found.resolve()) if found else (path.resolve(), None)


def resolve(path: Path) -> tuple[Path, Path]:
    """Find a dataset's root folder and its data.yaml.

    Args:
        path: a dataset folder, a ``.zip`` of one (extracted next to it, into a folder named after it,
            or into a temp dir when that name is taken), or the data.yaml itself.

    Returns:
        ``(root, data_yaml)``, both absolute.

    Raises:
        DatasetError: when nothing is there or no data.yaml can be found.
    """
    root, data_yaml = locate(path)
    if data_yaml is None:
        raise DatasetError(f"{root}: no data.yaml found (expected {root / 'data.yaml'})")
    return root, data_yaml


# --- data.yaml -----------------------------------------------------------------------------------------


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise DatasetError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a mapping with train/val/names, got {type(data).__name__}")
    return data


def _key_line(path: Path, key: str) -> str:
    """``file:line`` of a top-level key, or just ``file`` when it is absent."""
    for no, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith(f"{key}:"):
            return f"{path.name}:{no}"
    return path.name


def _names(data: dict[str, Any], path: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            keyed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{_key_line(path, 'names')}: names: keys must be class ids") from exc
        return [keyed.get(i, str(i)) for i in range(max(keyed, default=-1) + 1)]
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(data.get("nc"), int):
        return [str(i) for i in range(data["nc"])]
    raise DatasetError(f"{_key_line(path, 'names')}: names: expected a list or a mapping of class names")


def _entries(data: dict[str, Any], split: str) -> tuple[str | None, list[str]]:
    """The yaml key holding ``split`` and its entries (a string or a list of strings)."""
    for key in _ALIASES[split]:
        value = data.get(key)
        if value:
            return key, [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return None, []


def _strip_up(entry: str) -> Path:
    return Path(*[p for p in Path(entry).parts if p not in ("..", ".")]) if entry else Path()


def _find_entry(root: Path, base: Path, entry: str, split: str) -> Path | None:
    candidates = [base / entry, root / entry, root / _strip_up(entry)]
    for alias in _ALIASES[split]:
        candidates += [root / "images" / alias, root / alias / "images"]
    return next((c.resolve() for c in candidates if c.exists() and c != root), None)


def list_images(source: Path) -> list[Path]:
    """Image files under a folder (recursively, sorted), or those named by a ``.txt`` list."""
    if source.is_file():  # a .txt list of image paths, relative to its folder
        lines = [ln.strip() for ln in source.read_text().splitlines() if ln.strip()]
        return [(source.parent / ln).resolve() for ln in lines]
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


@dataclass
class Layout:
    """Where a dataset's images are, after repairing the data.yaml's paths in memory.

    Attributes:
        root: dataset root folder.
        data_yaml: its data.yaml.
        names: class names by id.
        sources: per split, the folders (or .txt lists) holding its images.
        images: per split, the image files.
        fixes: what was (or would be) changed in data.yaml, one line each.
        problems: data.yaml errors that could not be repaired.
        data: the data.yaml content with repaired paths.
    """

    root: Path
    data_yaml: Path
    names: list[str]
    sources: dict[str, list[Path]] = field(default_factory=dict)
    images: dict[str, list[Path]] = field(default_factory=dict)
    fixes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def rel(self, path: Path) -> str:
        """``path`` relative to the root (posix), or as given when outside it."""
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def _base(data: dict[str, Any], root: Path, data_yaml: Path, fixes: list[str]) -> Path:
    given = data.get("path")
    if not given:
        return root
    base = Path(str(given))
    base = base if base.is_absolute() else data_yaml.parent / base
    if base.exists():
        return base.resolve()
    fixes.append(f"{_key_line(data_yaml, 'path')}: path: {given!r} does not exist here → {root}")
    return root


def load_layout(data_yaml: Path) -> Layout:
    """Read a data.yaml and find each split's images, repairing wrong paths in memory.

    Paths that point elsewhere (``path:`` from another machine, Roboflow's ``../train/images``, a
    missing ``val:`` whose folder exists) are looked up under the root in both layouts; each repair is
    described in ``Layout.fixes``. Nothing is written.

    Raises:
        DatasetError: when the data.yaml cannot be parsed or has no class names.
    """
    data = _load_yaml(data_yaml)
    root = data_yaml.parent.resolve()
    layout = Layout(root, data_yaml, _names(data, data_yaml), data=dict(data))
    base = _base(data, root, data_yaml, layout.fixes)
    if base != root or "path" in data:
        layout.data["path"] = str(base)
    for split in SPLITS:
        key, entries = _entries(data, split)
        found_all: list[Path] = []
        for entry in entries or [""]:
            found = _find_entry(root, base, entry, split)
            if found is None:
                if entry or split != "test":
                    what = repr(entry) if entry else "missing"
                    layout.problems.append(
                        f"{_key_line(data_yaml, key or split)}: {split}: {what}, no images found"
                    )
                continue
            if not entry or (base / entry).resolve() != found:
                shown = layout.rel(found)
                layout.fixes.append(
                    f"{_key_line(data_yaml, key or split)}: {split}: {entry or 'missing'!r} → {shown}"
                )
            found_all.append(found)
        layout.sources[split] = found_all
        layout.images[split] = sorted({p for src in found_all for p in list_images(src)})
        if found_all:
            layout.data.pop(key or split, None)
            rels = [layout.rel(p) for p in found_all]
            layout.data[split] = rels[0] if len(rels) == 1 else rels
    if layout.fixes:
        layout.data["path"] = str(root)
    if "nc" in data and data["nc"] != len(layout.names):
        layout.problems.append(
            f"{_key_line(data_yaml, 'nc')}: nc: {data['nc']} but {len(layout.names)} names"
        )
    return layout


def _write_fixed(layout: Layout) -> None:
    backup = layout.data_yaml.with_name(layout.data_yaml.name + ".bak")
    if not backup.exists():  # keep the very first original, not an earlier repair
        shutil.copy2(layout.data_yaml, backup)
    layout.data["nc"] = len(layout.names)
    layout.data_yaml.write_text(yaml.safe_dump(layout.data, sort_keys=False, allow_unicode=True))


def validate_yaml(data_yaml: Path) -> list[str]:
    """One line per problem that would stop Ultralytics training on ``data_yaml`` as it is.

    Paths are resolved the way Ultralytics does (``path:`` or the yaml's folder, then a ``../``
    entry retried without it); a wrong path that ``check`` could repair says so.
    """
    data_yaml = Path(data_yaml)
    layout = load_layout(data_yaml)
    data = _load_yaml(data_yaml)
    given = Path(str(data.get("path") or data_yaml.parent))
    base = given if given.is_absolute() else data_yaml.parent / given
    broken = []
    for split in SPLITS:
        key, entries = _entries(data, split)
        for entry in entries:
            if not (base / entry).exists() and not (entry.startswith("../") and (base / entry[3:]).exists()):
                where = _key_line(data_yaml, key or split)
                broken.append(f"{where}: {split}: {entry!r} not found from {base}")
    hint = " (lanecount-train check repairs it)" if not layout.problems else ""
    return layout.problems + [f"{b}{hint}" for b in broken]


# --- check ---------------------------------------------------------------------------------------------


@dataclass
class CheckReport:
    """What :func:`check` found.

    Attributes:
        root: dataset root.
        data_yaml: its data.yaml.
        names: class names by id.
        counts: per split: ``images``, ``labels``, ``negatives``, ``instances``.
        class_counts: per class name: instances over all splits.
        split_class_counts: per split, per class name: instances.
        errors: ``file:line: problem`` lines (paths relative to the root).
        warnings: things worth a look that do not stop training.
        fixes: repairs made to data.yaml (or proposed, with ``fix=False``).
        plots: ``class_distribution`` and ``samples`` PNG paths.
    """

    root: Path
    data_yaml: Path
    names: list[str]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    class_counts: dict[str, int] = field(default_factory=dict)
    split_class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    plots: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when there are no errors."""
        return not self.errors

    def to_text(self, max_lines: int = 50) -> str:
        """Human-readable tables: counts per split, instances per class, then the problems."""
        out = [f"dataset: {self.root}  ({self.data_yaml.name}, {len(self.names)} classes)", ""]
        out += _table(
            ["split", "images", "labels", "negatives", "instances"],
            [
                [
                    s,
                    *(
                        self.counts.get(s, {}).get(k, 0)
                        for k in ("images", "labels", "negatives", "instances")
                    ),
                ]
                for s in SPLITS
            ],
        )
        out.append("")
        total = sum(self.class_counts.values()) or 1
        rows = [
            [n, self.class_counts.get(n, 0), f"{100 * self.class_counts.get(n, 0) / total:.1f}%"]
            + [self.split_class_counts.get(s, {}).get(n, 0) for s in SPLITS]
            for n in self.names
        ]
        out += _table(["class", "instances", "share", *SPLITS], rows)
        out += ["", self.distribution_summary()]
        for title, items in (("repairs", self.fixes), ("errors", self.errors), ("warnings", self.warnings)):
            if items:
                out += ["", f"{title} ({len(items)}):"] + [f"  {x}" for x in items[:max_lines]]
                if len(items) > max_lines:
                    out.append(f"  ... and {len(items) - max_lines} more")
        if self.plots:
            out += ["", *(f"{k}: {v}" for k, v in self.plots.items())]
        return "\n".join(out)

    def distribution_summary(self) -> str:
        """Most and least frequent class and the average number of instances per class."""
        if not self.class_counts:
            return "no classes"
        most = max(self.names, key=lambda n: self.class_counts.get(n, 0))
        least = min(self.names, key=lambda n: self.class_counts.get(n, 0))
        avg = sum(self.class_counts.values()) / len(self.names)
        return (
            f"most frequent: {most} ({self.class_counts[most]}), least frequent: {least} "
            f"({self.class_counts[least]}), average per class: {avg:.1f}"
        )


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*r) for r in cells]


def _image_ok(path: Path) -> str | None:
    if path.stat().st_size == 0:
        return "empty image file"
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
    except ImportError:
        return None
    except Exception as exc:  # PIL raises many types for corrupt files; any of them means unreadable
        return f"unreadable image ({type(exc).__name__})"
    return None


def _check_split(layout: Layout, split: str, report: CheckReport) -> dict[Path, LabelFile]:
    nc = len(layout.names)
    counts = Counter({"images": len(layout.images[split])})
    per_class: Counter[str] = Counter()
    labels: dict[Path, LabelFile] = {}
    for image in layout.images[split]:
        problem = _image_ok(image)
        if problem:
            report.errors.append(f"{layout.rel(image)}: {problem}")
        lbl = label_path(image)
        if not lbl.exists():
            report.errors.append(f"{layout.rel(image)}: missing label file {layout.rel(lbl)}")
            continue
        parsed = read_labels(lbl, nc)
        labels[image] = parsed
        counts["labels"] += 1
        counts["negatives"] += not parsed.boxes and not parsed.problems
        counts["instances"] += len(parsed.boxes)
        per_class.update(layout.names[b.class_id] for b in parsed.boxes)
        report.errors += [f"{layout.rel(lbl)}:{no}: {msg}" for no, msg in parsed.problems]
    report.errors += _orphans(layout, split)
    report.counts[split] = {k: counts[k] for k in ("images", "labels", "negatives", "instances")}
    report.split_class_counts[split] = {n: per_class[n] for n in layout.names}
    return labels


def _orphans(layout: Layout, split: str) -> list[str]:
    """Label files with no image of the same stem next door."""
    images = {label_path(p).resolve() for p in layout.images[split]}
    dirs = {label_path(src / "x.jpg").parent for src in layout.sources[split] if src.is_dir()}
    out = []
    for d in sorted(dirs):
        for lbl in sorted(d.rglob("*.txt")) if d.is_dir() else []:
            if lbl.resolve() not in images and lbl.name != "classes.txt":
                out.append(f"{layout.rel(lbl)}: label file without an image")
    return out


def check(path: Path, out_dir: Path | None = None, fix: bool = True, plots: bool = True) -> CheckReport:
    """Check a dataset: structure, data.yaml paths, counts, class distribution and every label line.

    Args:
        path: dataset folder, ``.zip`` or data.yaml (see :func:`resolve`).
        out_dir: where the plots go; default ``<root>/check``.
        fix: write a repaired data.yaml (the original kept as ``data.yaml.bak``). With ``False`` the
            needed repairs are reported as errors.
        plots: draw ``class_distribution.png`` and ``samples.png``.

    Returns:
        The report; ``report.errors`` is empty for a dataset that is ready to train on.

    Example:
        >>> report = check(Path("datasets/groceries.zip"))  # doctest: +SKIP
        >>> print(report.to_text())  # doctest: +SKIP
    """
    root, data_yaml = resolve(path)
    layout = load_layout(data_yaml)
    report = CheckReport(root, data_yaml, layout.names, fixes=list(layout.fixes))
    report.errors += layout.problems
    if layout.fixes and fix and not layout.problems:
        _write_fixed(layout)
        report.warnings.append(f"{data_yaml.name} repaired (original kept as {data_yaml.name}.bak)")
    elif layout.fixes:
        report.errors += [f"{f} (not repaired)" for f in layout.fixes]
    labels: dict[Path, LabelFile] = {}
    for split in SPLITS:
        labels.update(_check_split(layout, split, report))
    report.class_counts = {n: sum(report.split_class_counts[s][n] for s in SPLITS) for n in layout.names}
    report.warnings += _distribution_warnings(report)
    if plots:
        out = Path(out_dir) if out_dir else root / "check"
        out.mkdir(parents=True, exist_ok=True)
        report.plots["class_distribution"] = _plot_distribution(report, out / "class_distribution.png")
        report.plots["samples"] = _sample_grid(layout, labels, out / "samples.png")
    return report


def _distribution_warnings(report: CheckReport) -> list[str]:
    out = [f"class {n!r} has no instances" for n, c in report.class_counts.items() if c == 0]
    out += [f"split {s!r} has no images" for s in ("train", "val") if not report.counts[s]["images"]]
    present = [c for c in report.class_counts.values() if c]
    if present and max(present) > 10 * min(present):
        out.append(f"class imbalance: the largest class has {max(present) / min(present):.0f}x the smallest")
    return out


# --- plots ---------------------------------------------------------------------------------------------


def _plot_distribution(report: CheckReport, path: Path) -> Path:
    """Bar plot of instances per class, stacked by split, with the average as a dashed line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = report.names
    fig = Figure(figsize=(max(6.0, 0.7 * len(names) + 2), 4.5), dpi=100)
    FigureCanvasAgg(fig)  # no pyplot: no global state, no display needed
    ax = fig.add_subplot()
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for s in SPLITS:
        values = np.array([report.split_class_counts[s][n] for n in names], float)
        ax.bar(x, values, bottom=bottom, label=s)
        bottom += values
    if names:
        ax.axhline(bottom.mean(), color="black", linestyle="--", linewidth=1, label="average")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("instances")
    ax.set_title(f"{report.root.name}: instances per class")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def _color(class_id: int) -> tuple[int, int, int]:
    hue = (class_id * 47) % 180  # spread hues so neighbouring ids differ
    bgr = cv2.cvtColor(np.array([[[hue, 220, 230]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def _tile(image: Path, boxes: tuple[Box, ...], names: list[str], size: tuple[int, int]) -> np.ndarray | None:
    img = cv2.imread(str(image))
    if img is None:
        return None
    tw, th = size
    scale = min(tw / img.shape[1], th / img.shape[0])
    w, h = max(int(img.shape[1] * scale), 1), max(int(img.shape[0] * scale), 1)
    tile = np.full((th, tw, 3), 40, np.uint8)
    ox, oy = (tw - w) // 2, (th - h) // 2
    tile[oy : oy + h, ox : ox + w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for b in boxes:
        x1, y1, x2, y2 = b.xyxy()
        p1 = (ox + int(x1 * w), oy + int(y1 * h))
        p2 = (ox + int(x2 * w), oy + int(y2 * h))
        color = _color(b.class_id)
        cv2.rectangle(tile, p1, p2, color, 2)
        text = names[b.class_id]
        (tw_, th_), _ = cv2.getTextSize(text, font, 0.4, 1)
        cv2.rectangle(tile, (p1[0], p1[1] - th_ - 4), (p1[0] + tw_ + 2, p1[1]), color, -1)
        cv2.putText(tile, text, (p1[0] + 1, p1[1] - 3), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(tile, image.name, (4, th - 6), font, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _sample_grid(
    layout: Layout,
    labels: dict[Path, LabelFile],
    path: Path,
    rows: int = 3,
    size: tuple[int, int] = (320, 240),
) -> Path:
    """A ``rows x rows`` grid of labelled images spread over the dataset, boxes and names drawn."""
    pool = [p for s in SPLITS for p in layout.images[s] if p in labels and labels[p].boxes]
    pool = pool or [p for s in SPLITS for p in layout.images[s]]
    picks = sorted(set(np.linspace(0, len(pool) - 1, rows * rows).round().astype(int))) if pool else []
    grid = np.full((rows * size[1], rows * size[0], 3), 25, np.uint8)
    slot = 0
    for i in picks:
        tile = _tile(pool[i], labels[pool[i]].boxes if pool[i] in labels else (), layout.names, size)
        if tile is None:
            continue  # unreadable: already reported by the image check
        r, c = divmod(slot, rows)
        grid[r * size[1] : (r + 1) * size[1], c * size[0] : (c + 1) * size[0]] = tile
        slot += 1
    cv2.imwrite(str(path), grid)
    return path


# --- split ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    image: Path
    label: Path | None
    boxes: tuple[Box, ...]
    split: str = "train"


def _gather(src: Path) -> tuple[list[str], list[_Item], Path]:
    """All images of a dataset (any splits) or of a plain folder with ``classes.txt``."""
    root, data_yaml = locate(src)
    if data_yaml is not None:
        layout = load_layout(data_yaml)  # its problems (e.g. no val yet) are check's business, not ours
        names, pairs = layout.names, [(p, s) for s in SPLITS for p in layout.images[s]]
    else:
        classes = root / "classes.txt"
        if not classes.exists():
            raise DatasetError(f"{root}: no data.yaml or classes.txt to take the class names from")
        names = [ln.strip() for ln in classes.read_text().splitlines() if ln.strip()]
        pairs = [(p, "train") for p in list_images(root)]
    items = []
    for image, split_name in pairs:
        lbl = label_path(image)
        parsed = read_labels(lbl, len(names)) if lbl.exists() else None
        items.append(_Item(image, lbl if parsed else None, parsed.boxes if parsed else (), split_name))
    return names, items, root


def _group_key(item: _Item, freq: Counter[int]) -> str:
    if item.label is None:
        return "(unlabelled)"
    if not item.boxes:
        return _NEGATIVE
    return str(min({b.class_id for b in item.boxes}, key=lambda c: (freq[c], c)))


def _assign(groups: dict[str, list[_Item]], fractions: tuple[float, float, float]) -> dict[str, list[_Item]]:
    """Give each item the split furthest behind its share, within its group then overall."""
    out: dict[str, list[_Item]] = {s: [] for s in SPLITS}
    for key in sorted(groups):
        taken = dict.fromkeys(SPLITS, 0)
        for i, item in enumerate(groups[key], start=1):
            total = sum(len(v) for v in out.values()) + 1
            need = {
                s: (f * i - taken[s], f * total - len(out[s])) if f > 0 else (-1e9, -1e9)
                for s, f in zip(SPLITS, fractions, strict=True)
            }
            best = max(SPLITS, key=need.__getitem__)
            taken[best] += 1
            out[best].append(item)
    return out


def _place(file: Path, dest: Path, link: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(file, dest)
            return
        except OSError:
            pass  # another filesystem or no hardlinks: fall back to a copy
    shutil.copy2(file, dest)


def _fresh_out(out: Path) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out}: output folder is not empty")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_yaml(out: Path, names: list[str]) -> Path:
    for s in SPLITS:  # every listed split must exist, even when empty
        (out / "images" / s).mkdir(parents=True, exist_ok=True)
        (out / "labels" / s).mkdir(parents=True, exist_ok=True)
    data = {
        "path": str(out.resolve()),
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "nc": len(names),
        "names": dict(enumerate(names)),
    }
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return out / "data.yaml"


@dataclass
class SplitResult:
    """Output of :func:`split`: its data.yaml, images and instances per class per split."""

    data_yaml: Path
    images: dict[str, int]
    instances: dict[str, dict[str, int]]
    negatives: dict[str, int]


def _unique(name: str, used: set[str]) -> str:
    stem, suffix, k = Path(name).stem, Path(name).suffix, 1
    while name.lower() in used:
        k += 1
        name = f"{stem}_{k}{suffix}"
    used.add(name.lower())
    return name


def split(
    src: Path,
    out: Path,
    fractions: tuple[float, float, float] = (0.7, 0.2, 0.1),
    seed: int = 0,
    link: bool = False,
) -> SplitResult:
    """Re-split a dataset into train/val/test, stratified by each image's rarest class.

    Every image of ``src`` (all its splits, or a plain folder with ``classes.txt``) is grouped by the
    rarest class it contains; negatives (empty label files) form their own group, so they are spread
    over the splits too. Each group is shuffled with ``seed`` and dealt out to the split furthest
    behind its share, which keeps rare classes present in val and test.

    Args:
        src: dataset folder, zip or data.yaml.
        out: new, empty folder for ``images/{train,val,test}``, ``labels/...`` and ``data.yaml``.
        fractions: train, val, test shares; they must sum to 1.
        seed: shuffle seed; the same seed gives the same split.
        link: hardlink images instead of copying them (labels are always copied).

    Returns:
        What went where.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DatasetError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    names, items, _ = _gather(src)
    if not items:
        raise DatasetError(f"{src}: no images found")
    freq = Counter(b.class_id for it in items for b in it.boxes)
    groups: dict[str, list[_Item]] = {}
    for item in sorted(items, key=lambda it: str(it.image)):
        groups.setdefault(_group_key(item, freq), []).append(item)
    rng = np.random.default_rng(seed)
    for key in sorted(groups):
        order = rng.permutation(len(groups[key]))
        groups[key] = [groups[key][i] for i in order]
    out = _fresh_out(out)
    result = SplitResult(out / "data.yaml", {}, {}, {})
    used: set[str] = set()
    for split_name, chosen in _assign(groups, fractions).items():
        per_class: Counter[str] = Counter()
        for item in chosen:
            name = _unique(item.image.name, used)
            _place(item.image, out / "images" / split_name / name, link)
            if item.label is not None:
                _place(item.label, out / "labels" / split_name / Path(name).with_suffix(".txt"), False)
            per_class.update(names[b.class_id] for b in item.boxes)
        result.images[split_name] = len(chosen)
        result.instances[split_name] = {n: per_class[n] for n in names}
        result.negatives[split_name] = sum(1 for it in chosen if it.label is not None and not it.boxes)
    _write_yaml(out, names)
    return result


# --- merge ---------------------------------------------------------------------------------------------


@dataclass
class MergeResult:
    """Output of :func:`merge`.

    Attributes:
        data_yaml: the merged dataset's data.yaml.
        names: the union of class names, in first-seen order.
        mapping: per source (by its prefix): old class id → new class id.
        images: per split: number of images.
        dropped: ``file:line: problem`` for label lines that could not be carried over.
    """

    data_yaml: Path
    names: list[str]
    mapping: dict[str, dict[int, int]]
    images: dict[str, int]
    dropped: list[str]


def _union(all_names: Iterable[list[str]]) -> tuple[list[str], list[dict[int, int]]]:
    names: list[str] = []
    index: dict[str, int] = {}
    maps = []
    for source_names in all_names:
        mapping = {}
        for old, name in enumerate(source_names):
            key = name.strip().casefold()  # "Apple" and "apple " are the same product
            if key not in index:
                index[key] = len(names)
                names.append(name.strip())
            mapping[old] = index[key]
        maps.append(mapping)
    return names, maps


def merge(sources: list[Path], out: Path, link: bool = False) -> MergeResult:
    """Merge several datasets into one, matching classes by NAME.

    Class names are united in first-seen order (case-insensitive) and every label's class id is
    rewritten. Each file is prefixed with its dataset's folder name, so equal names cannot collide.
    Splits stay as they were (a source's val goes to val).

    Args:
        sources: datasets (folders, zips or data.yaml files), each with a data.yaml.
        out: new, empty output folder.
        link: hardlink images instead of copying them.

    Returns:
        The merged data.yaml, names and the per-source class mapping.
    """
    if not sources:
        raise DatasetError("merge: give at least one dataset")
    gathered = []
    for src in sources:
        _, data_yaml = resolve(src)  # names must come from a data.yaml here
        gathered.append(_gather(data_yaml))
    names, maps = _union(g[0] for g in gathered)
    out = _fresh_out(out)
    result = MergeResult(out / "data.yaml", names, {}, dict.fromkeys(SPLITS, 0), [])
    used_prefixes: set[str] = set()
    used_files: set[str] = set()
    for (_, items, root), mapping in zip(gathered, maps, strict=True):
        prefix = _unique(root.name, used_prefixes)
        result.mapping[prefix] = mapping
        for item in items:
            name = _unique(f"{prefix}_{item.image.name}", used_files)
            _place(item.image, out / "images" / item.split / name, link)
            result.images[item.split] += 1
            if item.label is None:
                continue
            parsed = read_labels(item.label, len(mapping))
            rel = item.label.relative_to(root).as_posix()
            result.dropped += [f"{prefix}/{rel}:{no}: {msg}" for no, msg in parsed.problems]
            text = "".join(f"{b.to_line(mapping[b.class_id])}\n" for b in parsed.boxes)
            (out / "labels" / item.split).mkdir(parents=True, exist_ok=True)
            (out / "labels" / item.split / Path(name).with_suffix(".txt")).write_text(text)
    _write_yaml(out, names)
    return result

"""Checking a dataset: counts per split and class, every label line, and two plots.

See :func:`check`; the dataset layouts it accepts are described in :mod:`train.layout`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from train.labels import Box, LabelFile, label_path, read_labels
from train.layout import SPLITS, TEMP_EXTRACTIONS, DatasetError, Layout, load_layout, resolve, write_fixed

__all__ = ["CheckReport", "check", "image_problem", "require_clean"]


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
        fixes: repairs written to data.yaml.
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
    pending: list[str] = field(default_factory=list)
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

    def to_markdown(self, rel_to: Path | None = None, max_lines: int = 50) -> str:
        """Markdown: counts per split and instances per class as tables, problems as lists, the plots.

        Args:
            rel_to: folder the Markdown file will live in; image links are relative to it.
            max_lines: most problems listed per kind.
        """
        import os

        out = [f"Dataset `{self.root}` (`{self.data_yaml.name}`, {len(self.names)} classes)", ""]
        out += ["| split | images | labels | negatives | instances |", "|---|---:|---:|---:|---:|"]
        for s in SPLITS:
            c = self.counts.get(s, {})
            out.append(f"| {s} | " + " | ".join(str(c.get(k, 0)) for k in _COUNT_KEYS) + " |")
        total = sum(self.class_counts.values()) or 1
        out += ["", "| class | instances | share | " + " | ".join(SPLITS) + " |"]
        out.append("|---|---:|---:|" + "---:|" * len(SPLITS))
        for n in self.names:
            k = self.class_counts.get(n, 0)
            per_split = " | ".join(str(self.split_class_counts.get(s, {}).get(n, 0)) for s in SPLITS)
            out.append(f"| {n} | {k} | {100 * k / total:.1f}% | {per_split} |")
        out += ["", self.distribution_summary() + "."]
        for title, items in (("Repairs", self.fixes), ("Errors", self.errors), ("Warnings", self.warnings)):
            if items:
                out += ["", f"**{title} ({len(items)})**", ""] + [f"- `{x}`" for x in items[:max_lines]]
                if len(items) > max_lines:
                    out.append(f"- ... and {len(items) - max_lines} more")
        for name, path in self.plots.items():
            link = os.path.relpath(Path(path).resolve(), rel_to.resolve()) if rel_to else str(path)
            out += ["", f"![{name}]({Path(link).as_posix()})"]
        return "\n".join(out) + "\n"

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


_COUNT_KEYS = ("images", "labels", "negatives", "instances")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*r) for r in cells]


def image_problem(path: Path) -> str | None:
    """Why an image file cannot be used (empty, unreadable), or ``None`` when it opens."""
    if path.stat().st_size == 0:
        return "empty image file"
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(path) as im:
            im.verify()
    # PIL raises many types for corrupt files; any of them means unreadable. That includes an ImportError:
    # Ultralytics patches Image.open to retry unidentified files with an optional HEIF plugin.
    except Exception as exc:
        return f"unreadable image ({type(exc).__name__})"
    return None


def _check_split(layout: Layout, split: str, report: CheckReport) -> dict[Path, LabelFile]:
    nc = len(layout.names)
    counts = Counter({"images": len(layout.images[split])})
    per_class: Counter[str] = Counter()
    labels: dict[Path, LabelFile] = {}
    for image in layout.images[split]:
        problem = image_problem(image)
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
    report = CheckReport(root, data_yaml, layout.names)
    report.errors += layout.problems
    if layout.fixes and fix and not layout.problems:
        write_fixed(layout)
        report.fixes = list(layout.fixes)
        report.warnings.append(f"{data_yaml.name} repaired (original kept as {data_yaml.name}.bak)")
    elif layout.fixes:
        why = "not repaired: --no-fix" if not fix else "not repaired while data.yaml has errors"
        report.pending = [f"{f} ({why})" for f in layout.fixes]
        report.errors += report.pending
    labels: dict[Path, LabelFile] = {}
    for split in SPLITS:
        labels.update(_check_split(layout, split, report))
    report.class_counts = {n: sum(report.split_class_counts[s][n] for s in SPLITS) for n in layout.names}
    report.warnings += _distribution_warnings(report)
    if plots:
        zip_path = TEMP_EXTRACTIONS.get(root) or TEMP_EXTRACTIONS.get(root.parent)
        default = zip_path.with_name(f"{zip_path.stem}-check") if zip_path else root / "check"
        out = Path(out_dir) if out_dir else default  # never inside a temp extraction removed at exit
        out.mkdir(parents=True, exist_ok=True)
        report.plots["class_distribution"] = _plot_distribution(report, out / "class_distribution.png")
        report.plots["samples"] = _sample_grid(layout, labels, out / "samples.png")
    return report


def require_clean(path: Path, force: bool, action: str) -> CheckReport:
    """Check a dataset before ``action`` (fit, split) uses it; refuse on errors unless ``force``.

    Ultralytics silently skips bad images and labels, and a split copies them on; both hide the
    problem from the person who could fix it. Path repairs that ``check`` would write are not errors
    here: the tools make them in memory.

    Raises:
        DatasetError: the check found errors and ``force`` is off; names the first ones.
    """
    report = check(path, fix=False, plots=False)
    errors = [e for e in report.errors if e not in report.pending]
    if errors and not force:
        shown = "; ".join(errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise DatasetError(
            f"{report.data_yaml}: {len(errors)} dataset error(s): {shown}{more}. "
            f"Fix them (lanecount-train check lists all) or {action} with --force"
        )
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

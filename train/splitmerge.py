"""Re-splitting a dataset into train/val/test (stratified) and merging datasets by class name."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.model import file_sha256
from train.check import image_problem
from train.labels import Box, label_path, read_labels
from train.layout import SPLITS, DatasetError, list_images, load_layout, locate, resolve, write_data_yaml

__all__ = ["MergeResult", "SplitResult", "merge", "split"]

_NEGATIVE = "(negative)"


# --- split ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    image: Path
    label: Path | None
    boxes: tuple[Box, ...]
    split: str = "train"
    problems: tuple[str, ...] = ()
    readable: bool = True


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
        problems = [f"{_rel(lbl, root)}:{no}: {msg}" for no, msg in parsed.problems] if parsed else []
        bad_image = image_problem(image)
        if bad_image:
            problems.insert(0, f"{_rel(image, root)}: {bad_image}")
        boxes = parsed.boxes if parsed else ()
        item = _Item(image, lbl if parsed else None, boxes, split_name, tuple(problems), not bad_image)
        items.append(item)
    return names, items, root


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _refuse_problems(src: Path, items: list[_Item], force: bool) -> None:
    """Stop before copying bad images or label lines on, unless ``force``."""
    problems = [p for it in items for p in it.problems]
    if problems and not force:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise DatasetError(
            f"{src}: {len(problems)} dataset error(s): {shown}. "
            "Fix them (lanecount-train check lists all) or split with --force"
        )


def _copy_label(item: _Item, dest: Path) -> None:
    """Copy a label file unchanged; a forced split writes only its valid lines."""
    if item.label is None:
        return
    if not item.problems:
        _place(item.label, dest, False)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(f"{b.to_line()}\n" for b in item.boxes))


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
    force: bool = False,
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
        force: split even when images are unreadable or label lines invalid (they are left out:
            unreadable images are not copied, invalid label lines are dropped).

    Returns:
        What went where.

    Raises:
        DatasetError: bad fractions, no images, a non-empty output, or dataset errors without ``force``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DatasetError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    names, items, _ = _gather(src)
    if not items:
        raise DatasetError(f"{src}: no images found")
    _refuse_problems(src, items, force)
    items = [it for it in items if it.readable]
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
                _copy_label(item, out / "labels" / split_name / Path(name).with_suffix(".txt"))
            per_class.update(names[b.class_id] for b in item.boxes)
        result.images[split_name] = len(chosen)
        result.instances[split_name] = {n: per_class[n] for n in names}
        result.negatives[split_name] = sum(1 for it in chosen if it.label is not None and not it.boxes)
    write_data_yaml(out, names)
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
        duplicates: ``image: same content as other`` for images left out because an identical file
            (byte for byte) was already merged.
    """

    data_yaml: Path
    names: list[str]
    mapping: dict[str, dict[int, int]]
    images: dict[str, int]
    dropped: list[str]
    duplicates: list[str] = field(default_factory=list)


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
    Splits stay as they were (a source's val goes to val). An image identical by content to one
    already merged (the same dataset given twice, or a photo in two exports) is left out and listed
    in ``duplicates``: a copy would count twice, or leak from train into val.

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
    seen: dict[str, str] = {}
    for (_, items, root), mapping in zip(gathered, maps, strict=True):
        prefix = _unique(root.name, used_prefixes)
        result.mapping[prefix] = mapping
        for item in items:
            shown = f"{prefix}/{_rel(item.image, root)}"
            first = seen.setdefault(file_sha256(item.image), shown)
            if first != shown:
                result.duplicates.append(f"{shown}: same content as {first}")
                continue
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
    write_data_yaml(out, names)
    return result

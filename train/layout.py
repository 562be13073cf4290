"""Finding a dataset and reading its data.yaml, repairing paths that point elsewhere.

A dataset is a folder (or a ``.zip`` of one) with a ``data.yaml`` and its images and labels in either
layout::

    images/train/a.jpg  labels/train/a.txt      (Ultralytics)
    train/images/a.jpg  train/labels/a.txt      (Roboflow export; "valid" for val)
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge.errors import LanecountError

__all__ = [
    "IMAGE_EXTS",
    "SPLITS",
    "DatasetError",
    "Layout",
    "list_images",
    "load_layout",
    "locate",
    "resolve",
    "validate_yaml",
    "write_data_yaml",
    "write_fixed",
]

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


class DatasetError(LanecountError):
    """A dataset cannot be found or read; the message names the file (and line)."""


# Zips extracted into a temp dir (their own name was taken): extracted folder → the zip. Removed at exit.
TEMP_EXTRACTIONS: dict[Path, Path] = {}


# --- finding a dataset ---------------------------------------------------------------------------------


def _extract(zip_path: Path) -> Path:
    """Extract next to the zip (``data.zip`` → ``data/``), or into a temp dir when that is taken."""
    target = zip_path.with_suffix("")
    marker = target / ".lanecount-extracted"
    stamp = f"{zip_path.resolve()} {zip_path.stat().st_size} {zip_path.stat().st_mtime_ns}"
    if marker.exists() and marker.read_text() == stamp:
        return target
    if target.exists() or not os.access(zip_path.parent, os.W_OK):
        target = Path(tempfile.mkdtemp(prefix=f"{zip_path.stem}-")).resolve()
        marker = target / ".lanecount-extracted"
        TEMP_EXTRACTIONS[target] = zip_path.resolve()
        atexit.register(shutil.rmtree, target, ignore_errors=True)  # not left behind in /tmp
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


def _own_images(data: dict[str, Any], root: Path) -> bool:
    """True when the folder of the data.yaml holds the train or val images itself."""
    for split in ("train", "val"):
        _, entries = _entries(data, split)
        for entry in entries:
            if (root / entry).exists() or (root / _strip_up(entry)).exists():
                return True
        if any((root / "images" / a).is_dir() or (root / a / "images").is_dir() for a in _ALIASES[split]):
            return True
    return False


def _elsewhere(data: dict[str, Any], root: Path, data_yaml: Path) -> Path | None:
    """The folder ``path:`` names when it lies outside the dataset in hand, which has its own images.

    A copied or zipped dataset keeps the ``path:`` of the original; checking or labelling the original
    instead of the files in hand would report on (or write to) the wrong dataset.
    """
    given = data.get("path")
    if not given:
        return None
    base = Path(str(given))
    base = (base if base.is_absolute() else data_yaml.parent / base).resolve()
    if not base.exists() or base == root or base.is_relative_to(root):
        return None
    return base if _own_images(data, root) else None


def _base(data: dict[str, Any], root: Path, data_yaml: Path, fixes: list[str]) -> Path:
    given = data.get("path")
    if not given:
        return root
    other = _elsewhere(data, root, data_yaml)
    if other is not None:
        fixes.append(
            f"{_key_line(data_yaml, 'path')}: path: {given!r} points at another folder; "
            f"using the files in hand → {root}"
        )
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


def write_fixed(layout: Layout) -> None:
    """Write the repaired data.yaml, keeping the very first original as ``data.yaml.bak``."""
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
    other = _elsewhere(data, layout.root, data_yaml)
    if other is not None:
        where = _key_line(data_yaml, "path")
        broken.insert(0, f"{where}: path: points at {other}, not at this dataset's own images")
    hint = " (lanecount-train check repairs it)" if not layout.problems else ""
    return layout.problems + [f"{b}{hint}" for b in broken]


def write_data_yaml(out: Path, names: list[str] | tuple[str, ...]) -> Path:
    """Create the standard ``images/{split}`` + ``labels/{split}`` folders and their ``data.yaml``.

    Every listed split exists, even when empty, so Ultralytics accepts the file as written.
    """
    for s in SPLITS:
        (out / "images" / s).mkdir(parents=True, exist_ok=True)
        (out / "labels" / s).mkdir(parents=True, exist_ok=True)
    data = {
        "path": str(out.resolve()),
        **{s: f"images/{s}" for s in SPLITS},
        "nc": len(names),
        "names": dict(enumerate(names)),
    }
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path

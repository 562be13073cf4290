"""A tiny real test set: three Debian opencv-doc photos of fruit with hand-drawn labels.

The demo model learned from synthetic scenes only; these photos say how far that carries to real
pictures. The labels ship in ``train/realphotos/`` (see its README); the images stay in Debian's
``opencv-doc`` package and are copied into the dataset built here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from train.layout import DatasetError, write_data_yaml
from train.synth import CLASSES

__all__ = ["DEBIAN_DIR", "LABELS_DIR", "PHOTOS", "build_real_test_set", "missing_photos"]

DEBIAN_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
LABELS_DIR = Path(__file__).resolve().parent / "realphotos"
PHOTOS = ("fruits", "apple", "orange")


def missing_photos(source: Path = DEBIAN_DIR) -> list[Path]:
    """The photos that are not on this machine (empty when the set can be built)."""
    return [source / f"{p}.jpg" for p in PHOTOS if not (source / f"{p}.jpg").is_file()]


def build_real_test_set(out: Path, source: Path = DEBIAN_DIR) -> Path:
    """Write ``out/images/test`` (the photos), ``out/labels/test`` (the labels) and ``out/data.yaml``.

    Class names and ids are the demo model's (:data:`train.synth.CLASSES`); train and val stay empty.

    Raises:
        DatasetError: a photo is missing (``apt-get install opencv-doc``).
    """
    missing = missing_photos(source)
    if missing:
        raise DatasetError(f"{missing[0]}: photo not found (install Debian's opencv-doc package)")
    data_yaml = write_data_yaml(Path(out), CLASSES)
    for stem in PHOTOS:
        shutil.copy2(source / f"{stem}.jpg", Path(out) / "images" / "test" / f"{stem}.jpg")
        shutil.copy2(LABELS_DIR / f"{stem}.txt", Path(out) / "labels" / "test" / f"{stem}.txt")
    return data_yaml

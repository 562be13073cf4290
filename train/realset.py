"""A small real test set: photos that Debian and PyPI packages ship, with labels drawn by hand.

The demo model learns from synthetic scenes; these photos say how far that carries to real pictures.
The labels ship in ``train/realphotos/`` (see its README: every photo, its source and licence, and what
is labelled in it). The images stay in their packages: Debian's ``opencv-doc`` (installed by
``make test``) and the ``scikit-image`` wheel (one file, pip-downloaded and checked by sha256). Photos
with nothing of the 6 classes in them (an espresso cup, sweets) are negatives: a box there is a false
positive. None of these photos is used to make training scenes (:mod:`train.photoreal` keeps to others).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from train.layout import DatasetError, write_data_yaml
from train.synth import CLASSES

__all__ = ["DEBIAN_DIR", "LABELS_DIR", "PHOTOS", "RealPhoto", "build_real_test_set", "missing_photos"]

DEBIAN_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
LABELS_DIR = Path(__file__).resolve().parent / "realphotos"
SKIMAGE_WHEEL = "scikit-image==0.26.0"


@dataclass(frozen=True)
class RealPhoto:
    """One photo: its name in the set, where it comes from, and its sha256 (the file that was labelled)."""

    stem: str
    file: str  # file name in the package
    sha256: str
    wheel_member: str = ""  # set: the file is this member of the SKIMAGE_WHEEL wheel, not a Debian file

    @property
    def suffix(self) -> str:
        """The image's file suffix (``.jpg``, ``.png``)."""
        return Path(self.file).suffix


PHOTOS: tuple[RealPhoto, ...] = (
    RealPhoto("fruits", "fruits.jpg", "9c031d80a1c52da5eca790db896baffec6a7e52bf786cdb7bbfca5c7f880e6a1"),
    RealPhoto("apple", "apple.jpg", "e86879de3d9a807dedc742a8f464f39e6b74bbb531a1fba3583155d94997d1cd"),
    RealPhoto("orange", "orange.jpg", "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079"),
    RealPhoto("box", "box.png", "1094629c1e2ebbc8a9ae2c9c63e18c1dff0f5f1481146e02f3b11a3d30feb20a"),
    RealPhoto(
        "box_in_scene", "box_in_scene.png", "8b0225ff76244a42bd1400c0904f8b7afea7d97b7d8115495e42e98ad347bd51"
    ),
    RealPhoto("smarties", "smarties.png", "ad3f751c053fdcf432687c1bc0e56a61a9119d2bb2ae29365f8aa6534fc77417"),
    RealPhoto(
        "coffee",
        "coffee.png",
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        wheel_member="skimage/data/coffee.png",
    ),
)


def missing_photos(source: Path = DEBIAN_DIR) -> list[Path]:
    """The Debian photos that are not on this machine (empty when the set can be built)."""
    return [source / p.file for p in PHOTOS if not p.wheel_member and not (source / p.file).is_file()]


def build_real_test_set(out: Path, source: Path = DEBIAN_DIR, wheel: Path | None = None) -> Path:
    """Write ``out/images/test`` (the photos), ``out/labels/test`` (the labels) and ``out/data.yaml``.

    Class names and ids are the demo model's (:data:`train.synth.CLASSES`); train and val stay empty.
    ``wheel`` is a local copy of the scikit-image wheel (else pip downloads it when needed).

    Raises:
        DatasetError: a Debian photo is missing (``apt-get install opencv-doc``), or the scikit-image
            photo cannot be had (pip's reason in one line).
    """
    from train.pipget import PipGetError, fetch_member, sha256_of

    missing = missing_photos(source)
    if missing:
        raise DatasetError(f"{missing[0]}: photo not found (install Debian's opencv-doc package)")
    out = Path(out)
    data_yaml = write_data_yaml(out, CLASSES)
    images, labels = out / "images" / "test", out / "labels" / "test"
    for photo in PHOTOS:
        target = images / f"{photo.stem}{photo.suffix}"
        if photo.wheel_member:
            try:
                fetch_member(SKIMAGE_WHEEL, photo.wheel_member, target, photo.sha256, wheel=wheel)
            except PipGetError as exc:
                raise DatasetError(str(exc)) from exc
        else:
            if sha256_of(source / photo.file) != photo.sha256:
                raise DatasetError(f"{source / photo.file}: not the photo that was labelled (sha256 differs)")
            shutil.copy2(source / photo.file, target)
        shutil.copy2(LABELS_DIR / f"{photo.stem}.txt", labels / f"{photo.stem}.txt")
    return data_yaml

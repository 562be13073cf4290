"""Dataset tools: find, check, repair, split and merge YOLO detection datasets (the notebook's steps 2.1–2.4).

A dataset is a folder (or a ``.zip`` of one) with a ``data.yaml`` and its images and labels in either
layout::

    images/train/a.jpg  labels/train/a.txt      (Ultralytics)
    train/images/a.jpg  train/labels/a.txt      (Roboflow export; "valid" for val)

A label file holds one ``class cx cy w h`` line per box, normalised to [0, 1]; its path is the image's
with the last ``images`` folder replaced by ``labels`` (the rule Ultralytics applies). An EMPTY label
file is a negative image (nothing to detect); a MISSING one is reported, because it usually means an
image nobody labelled.

The tools live in cohesive modules and are re-exported here, so ``from train.dataset import check``
keeps working: :mod:`train.labels` (label files), :mod:`train.layout` (finding a dataset, data.yaml
repair), :mod:`train.check` (the check report and its plots) and :mod:`train.splitmerge`.
"""

from train.check import CheckReport, check
from train.labels import Box, LabelFile, label_path, read_labels
from train.layout import (
    IMAGE_EXTS,
    SPLITS,
    DatasetError,
    Layout,
    list_images,
    load_layout,
    locate,
    resolve,
    validate_yaml,
)
from train.splitmerge import MergeResult, SplitResult, merge, split

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

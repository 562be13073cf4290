"""Signed model bundles for tests, made by the project's own signing code (export/bundle.py).

``make_bundle`` takes arbitrary file contents and class names, which the tests of the model store need
(tampered, incompatible, large); `lanecount-export bundle` builds the same thing from an exported model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from export.bundle import BundleInput, Variant, build_manifest, generate_keys, write_bundle

NAMES = ["apple", "orange", "banana", "milk_carton", "soda_can", "cereal_box"]


def keygen(dest: Path, stem: str = "signing") -> tuple[Path, Path]:
    """A new key pair in ``dest/stem/``: ``(signing.key, signing.pub)``."""
    return generate_keys(dest / stem)


def make_bundle(
    out: Path,
    private_key: Path,
    version: str,
    *,
    files: dict[str, bytes] | None = None,
    names: list[str] | None = None,
    imgsz: int = 320,
    metrics: dict[str, float] | None = None,
) -> Path:
    """A bundle ``out`` holding ``files`` (default: a small fake ONNX blob) as fp32 ONNX variants."""
    files = files if files is not None else {"model.onnx": f"onnx model {version}\n".encode() * 64}
    names = names or NAMES
    info = BundleInput(
        name="demo",
        version=version,
        names=names,
        imgsz=imgsz,
        input={"name": "images", "shape": [1, 3, imgsz, imgsz], "dtype": "float32"},
        output={"name": "output0", "shape": [1, 4 + len(names), 2100], "layout": "yolov8 (1, 4+nc, anchors)"},
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
            paths.append(Path(tmp) / name)
        extra: dict[str, Any] = {
            "metrics": {"map50_95": 0.61, "map50": 0.9, "split": "val", **(metrics or {})}
        }
        variants = [Variant(p, "onnx", "fp32", extra) for p in paths]
        return write_bundle(out, build_manifest(info, variants), paths, private_key)

"""Build signed model bundles for tests, byte for byte as /work/notes/bundle-contract.md specifies."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

NAMES = ["apple", "orange", "banana", "milk_carton", "soda_can", "cereal_box"]


def keygen(dest: Path, stem: str = "signing") -> tuple[Path, Path]:
    """Write ``stem.key`` (PEM, PKCS8) and ``stem.pub`` (PEM, SubjectPublicKeyInfo)."""
    key = Ed25519PrivateKey.generate()
    priv = dest / f"{stem}.key"
    pub = dest / f"{stem}.pub"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub


def make_bundle(
    out: Path,
    private_key: Path,
    version: str,
    *,
    files: dict[str, bytes] | None = None,
    names: list[str] | None = None,
    imgsz: int = 320,
    variants: list[dict[str, Any]] | None = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """A bundle ``out`` holding ``files`` (default: a small fake ONNX blob), signed with ``private_key``."""
    files = files if files is not None else {"model.onnx": f"onnx model {version}\n".encode() * 64}
    first = next(iter(files))
    variants = variants or [
        {
            "file": first,
            "kind": "onnx",
            "precision": "fp32",
            "metrics": {"map50_95": 0.61, "map50": 0.9, "split": "val", **(metrics or {})},
        }
    ]
    manifest = {
        "format": "lanecount-bundle/1",
        "name": "demo",
        "version": version,
        "created_at": "2026-12-01T00:00:00Z",
        "names": names or NAMES,
        "imgsz": imgsz,
        "input": {"name": "images", "shape": [1, 3, imgsz, imgsz], "dtype": "float32"},
        "output": {
            "name": "output0",
            "shape": [1, 4 + len(names or NAMES), 2100],
            "layout": "yolov8 (1, 4+nc, anchors)",
        },
        "weights_sha256": None,
        "tools": {"lanecount": "0.1.0"},
        "files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in files.items()},
        "variants": variants,
    }
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    sig = key.sign(body)  # type: ignore[union-attr]
    members = [("manifest.json", body), ("manifest.sig", sig)] + [(f"files/{n}", b) for n, b in files.items()]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out

"""Signed model bundles (``.lcb``): TEMPORARY stand-in written against /work/notes/bundle-contract.md.

The export helper's edge/bundle.py (branch wip-export) replaces this file on merge; only the contract's
API is implemented here, so that the model store can be built and tested in parallel.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ModelError

__all__ = ["Bundle", "BundleError", "DeviceGPU", "local_gpu", "read_bundle", "select_variant"]


class BundleError(ModelError):
    """A bundle is unsigned, tampered, incomplete or unusable here; one line naming the file."""


@dataclass(frozen=True)
class DeviceGPU:
    """This device's GPU and TensorRT version."""

    name: str
    compute_capability: str
    tensorrt: str


@dataclass
class Bundle:
    """A verified bundle (not extracted)."""

    path: Path
    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes

    @property
    def version(self) -> str:
        """The manifest's version."""
        return str(self.manifest["version"])

    @property
    def names(self) -> list[str]:
        """Class names."""
        return list(self.manifest["names"])

    @property
    def imgsz(self) -> int:
        """Network input size."""
        return int(self.manifest["imgsz"])

    @property
    def variants(self) -> list[dict[str, Any]]:
        """Model variants."""
        return list(self.manifest["variants"])

    def extract(self, dest_dir: Path) -> Path:
        """Write manifest.json, manifest.sig and files/ into ``dest_dir``, fsynced."""
        (dest_dir / "files").mkdir(parents=True, exist_ok=True)
        _write(dest_dir / "manifest.json", self.manifest_bytes)
        _write(dest_dir / "manifest.sig", self.signature)
        with tarfile.open(self.path, "r:") as tar:
            for name in self.manifest["files"]:
                f = tar.extractfile(f"files/{name}")
                assert f is not None
                _write(dest_dir / "files" / name, f.read())
        for d in (dest_dir / "files", dest_dir):
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return dest_dir


def _write(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_bundle(path: str | os.PathLike[str], public_key: Path) -> Bundle:
    """Open and verify a bundle: signature, then every file's sha256 and size."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    p = Path(path)
    try:
        key = load_pem_public_key(Path(public_key).read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{public_key}: cannot read the public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{public_key}: not an ed25519 public key")
    try:
        with tarfile.open(p, "r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
            data = {n: tar.extractfile(m).read() for n, m in members.items() if m.isfile()}  # type: ignore[union-attr]
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{p}: not a readable bundle: {exc}") from None
    if "manifest.json" not in data or "manifest.sig" not in data:
        raise BundleError(f"{p}: manifest.json or manifest.sig missing")
    try:
        key.verify(data["manifest.sig"], data["manifest.json"])
    except InvalidSignature:
        raise BundleError(f"{p}: bad signature (tampered, or signed with another key)") from None
    manifest = json.loads(data["manifest.json"])
    files = manifest["files"]
    extra = set(data) - {"manifest.json", "manifest.sig"} - {f"files/{n}" for n in files}
    if extra:
        raise BundleError(f"{p}: unexpected members: {', '.join(sorted(extra))}")
    for name, entry in files.items():
        blob = data.get(f"files/{name}")
        if blob is None:
            raise BundleError(f"{p}: files/{name} missing")
        if len(blob) != entry["size"] or hashlib.sha256(blob).hexdigest() != entry["sha256"]:
            raise BundleError(f"{p}: files/{name}: sha256 mismatch")
    return Bundle(p, manifest, data["manifest.json"], data["manifest.sig"])


def select_variant(
    bundle_or_manifest: Bundle | dict[str, Any], *, precision: str | None, gpu: DeviceGPU | None
) -> tuple[dict[str, Any], str]:
    """Engine for this GPU+TensorRT, else int8 ONNX when asked for, else fp32 ONNX."""
    m = bundle_or_manifest.manifest if isinstance(bundle_or_manifest, Bundle) else bundle_or_manifest
    variants = m["variants"]
    if gpu is not None:
        for v in variants:
            if (
                v["kind"] == "engine"
                and v.get("compute_capability") == gpu.compute_capability
                and v.get("tensorrt") == gpu.tensorrt
            ):
                return v, "engine built for this GPU"
    onnx = [v for v in variants if v["kind"] == "onnx"]
    want = "int8" if precision == "int8" else "fp32"
    for v in onnx:
        if v["precision"] == want:
            return v, f"{want} ONNX"
    if onnx:
        return onnx[0], "ONNX"
    raise BundleError(f"{m.get('name')}: no engine for this GPU/TensorRT and no ONNX to rebuild it from")


def local_gpu() -> DeviceGPU | None:
    """This device's GPU, None without TensorRT."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return None
    return None

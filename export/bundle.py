"""The signing side of model bundles: a key pair, and a signed ``.lcb`` from model files.

The format and the verifying side are :mod:`edge.bundle`; this module only writes. The private key never
goes to a device: ``keygen`` writes ``signing.key`` (mode 0600, PKCS#8 PEM) and ``signing.pub`` (the
public half, PEM), and only ``signing.pub`` is installed with the daemon (``model.public_key``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge import __version__
from edge.bundle import FILES_PREFIX, FORMAT, MANIFEST, SIGNATURE, canonical_json
from edge.errors import LanecountError
from edge.model import file_sha256

__all__ = ["BundleInput", "Variant", "generate_keys", "load_private_key", "write_bundle"]

KEY_NAME, PUB_NAME = "signing.key", "signing.pub"


class SigningError(LanecountError):
    """A signing key is missing, unreadable or would be overwritten."""


def generate_keys(out_dir: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new ed25519 key pair: ``out_dir/signing.key`` (0600) and ``out_dir/signing.pub``.

    Raises:
        SigningError: a key already exists there (unless ``force``): replacing it would orphan every
            device that trusts the old public key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_path, pub_path = out_dir / KEY_NAME, out_dir / PUB_NAME
    if not force and (key_path.exists() or pub_path.exists()):
        raise SigningError(f"{key_path}: a signing key exists already (pass --force to replace it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_path.unlink(missing_ok=True)
    # Created 0600 from the start: never world-readable, not even for an instant.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    pub_path.write_bytes(public)
    return key_path, pub_path


def load_private_key(path: Path) -> Any:
    """Read an ed25519 private key written by :func:`generate_keys`.

    Raises:
        SigningError: missing, unreadable, or not an ed25519 private key.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise SigningError(
            f"{path}: signing key not found (create one with `lanecount-export keygen`)"
        ) from None
    except OSError as exc:
        raise SigningError(f"{path}: cannot read signing key: {exc.strerror or exc}") from None
    except (ValueError, TypeError):
        raise SigningError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an ed25519 private key ({type(key).__name__})")
    return key


@dataclass(frozen=True)
class Variant:
    """One model file in a bundle and what it is (see ``variants`` in the manifest)."""

    path: Path
    kind: str  # "onnx" | "engine"
    precision: str  # "fp32" | "fp16" | "int8"
    extra: dict[str, Any] = field(default_factory=dict)  # gpu, compute_capability, tensorrt, metrics


@dataclass(frozen=True)
class BundleInput:
    """Everything a manifest says besides the files."""

    name: str
    version: str
    names: list[str]
    imgsz: int
    input: dict[str, Any]
    output: dict[str, Any]
    weights_sha256: str | None = None
    tools: dict[str, str] = field(default_factory=dict)


def build_manifest(info: BundleInput, variants: list[Variant]) -> dict[str, Any]:
    """The manifest for ``variants`` (hashing every file).

    Raises:
        SigningError: two variants would have the same file name in the bundle.
    """
    files: dict[str, dict[str, Any]] = {}
    entries = []
    for v in variants:
        name = v.path.name
        if name in files:
            raise SigningError(f"{v.path}: two model files are named {name}; rename one")
        files[name] = {"sha256": file_sha256(v.path), "size": v.path.stat().st_size}
        entries.append({"file": name, "kind": v.kind, "precision": v.precision, **v.extra})
    return {
        "format": FORMAT,
        "name": info.name,
        "version": info.version,
        "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "names": list(info.names),
        "imgsz": info.imgsz,
        "input": info.input,
        "output": info.output,
        "weights_sha256": info.weights_sha256,
        "tools": {"lanecount": __version__, **info.tools},
        "files": files,
        "variants": entries,
    }


def write_bundle(out: Path, manifest: dict[str, Any], files: list[Path], key_path: Path) -> Path:
    """Sign ``manifest`` with the private key and write the bundle ``out`` (atomically).

    Args:
        out: the ``.lcb`` to write.
        manifest: from :func:`build_manifest`; its ``files`` must name exactly ``files``.
        files: the model files, in the order they go into the archive.
        key_path: ``signing.key``.

    Returns:
        ``out``.
    """
    key = load_private_key(key_path)
    raw = canonical_json(manifest)
    sig = key.sign(raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MANIFEST, raw), (SIGNATURE, sig)):
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
        for path in files:
            with path.open("rb") as f:
                tar.addfile(_info(FILES_PREFIX + path.name, path.stat().st_size), f)
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(out)
    return out


def _info(name: str, size: int) -> tarfile.TarInfo:
    """A plain file member with no owner or time: the same inputs give the same archive bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


def bundle_models(
    onnx_path: Path,
    out: Path,
    key_path: Path,
    *,
    int8: Path | None = None,
    engines: tuple[Path, ...] = (),
    version: str | None = None,
    weights_sha256: str | None = None,
) -> dict[str, Any]:
    """Bundle an FP32 ONNX model with its INT8 model and engines; return the signed manifest.

    Names, imgsz and version come from the ONNX model's metadata JSON (``M.json``); each file's own
    sidecar JSON (``M.int8.json`` from ``int8``, ``E.json`` from ``engine``) adds its metrics and, for an
    engine, the GPU and TensorRT version it was built for.

    Raises:
        SigningError: the key is unusable. ModelError: a model file or its metadata is missing.
    """
    from edge.config import ModelConfig
    from edge.model import load_model_info

    info = load_model_info(ModelConfig(path=str(onnx_path)))
    meta = _sidecar(onnx_path)
    gate = _sidecar(_existing(int8)) if int8 is not None else {}
    if int8 is not None and not gate.get("gate", {}).get("passed"):
        raise SigningError(
            f"{int8.with_suffix('.json')}: no passed accuracy gate recorded: run `lanecount-export int8` "
            "and bundle only a model that passes it"
        )
    # The INT8 gate measured both models on the val split; the FP32 row is the ONNX model's metrics.
    fp32_metrics = _metrics(meta) or _metrics({"metrics": gate.get("metrics_fp32")})
    variants = [Variant(info.path, "onnx", "fp32", fp32_metrics)]
    if int8 is not None:
        variants.append(Variant(int8, "onnx", "int8", _metrics(gate)))
    for engine in engines:
        extra = _sidecar(_existing(engine))
        if "precision" not in extra or "compute_capability" not in extra:
            raise SigningError(f"{engine.with_suffix('.json')}: engine metadata (precision, GPU) not found")
        target: dict[str, Any] = {
            k: extra[k] for k in ("gpu", "compute_capability", "tensorrt") if k in extra
        }
        variants.append(Variant(engine, "engine", extra["precision"], {**target, **_metrics(extra)}))
    inp, outp = _io_layout(info.path)
    bundle_input = BundleInput(
        name=str(meta.get("name") or onnx_path.stem),
        version=version or info.version,
        names=list(info.names),
        imgsz=info.imgsz,
        input=inp,
        output=outp,
        weights_sha256=weights_sha256 or meta.get("weights_sha256"),
        tools=_tool_versions(),
    )
    manifest = build_manifest(bundle_input, variants)
    write_bundle(out, manifest, [v.path for v in variants], key_path)
    return manifest


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise SigningError(f"{path}: model file not found")
    return path


def _sidecar(path: Path) -> dict[str, Any]:
    import json

    side = path.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise SigningError(f"{side}: unreadable metadata: {exc}") from None
    return data if isinstance(data, dict) else {}


def _metrics(meta: dict[str, Any]) -> dict[str, Any]:
    m = meta.get("metrics")
    return {"metrics": m} if isinstance(m, dict) else {}


def _io_layout(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    i, o = session.get_inputs()[0], session.get_outputs()[0]
    dtype = {"tensor(float)": "float32", "tensor(float16)": "float16"}.get(i.type, i.type)
    return (
        {"name": i.name, "shape": list(i.shape), "dtype": dtype},
        {"name": o.name, "shape": list(o.shape), "layout": "yolov8 (1, 4+nc, anchors)"},
    )


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    tools = {}
    for dist in ("onnx", "onnxruntime", "tensorrt"):
        with contextlib.suppress(PackageNotFoundError):
            tools[dist] = version(dist)
    return tools

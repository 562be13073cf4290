"""What the daemon must know about a model file: class names, input size, version and checksum.

The metadata comes from, in order of precedence:

1. the config (``model.names``, ``model.imgsz``);
2. a JSON file next to the model (``demo.onnx`` → ``demo.json``, or ``model.meta``) with the keys
   ``names`` (a list, or a ``{id: name}`` mapping), ``imgsz`` and ``version``;
3. what Ultralytics embedded in the model: the ONNX ``metadata_props`` (read through ONNX Runtime), or
   the JSON header it writes in front of a TensorRT plan.

``model.path`` may also be a signed bundle (``.lcb``, :mod:`edge.bundle`): it is verified with
``model.public_key``, the variant for this device is chosen (an engine built for this GPU and TensorRT
version, else the INT8 ONNX model when ``backend.precision`` is ``int8``, else the FP32 ONNX model), the
choice and its reason are logged, and the bundle is extracted under ``<state_dir>/models`` (or a
temporary directory removed at exit when no config says where). :class:`ModelInfo` then points at the
extracted variant and carries the manifest's version.

Example:
    >>> info = load_model_info(ModelConfig(path="edge/models/demo.onnx"))
    >>> info.names[:2], info.imgsz
    (('apple', 'orange'), 320)
"""

from __future__ import annotations

import ast
import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import ModelConfig
from edge.errors import ModelError

__all__ = ["DEFAULT_MODEL", "ModelInfo", "file_sha256", "load_model_info", "split_engine_header"]

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "demo.onnx"
BUNDLE_SUFFIX = ".lcb"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """A model file and its metadata.

    Attributes:
        path: the model file (absolute).
        names: class names, indexed by class id.
        imgsz: square network input size in pixels.
        version: the model's version (metadata ``version``; else the first 12 hex digits of ``sha256``).
        sha256: checksum of the model file, reported in the device status.
        bundle: the ``.lcb`` the model came from, if any.
        variant: the bundle variant chosen, e.g. ``onnx int8``, and why.
    """

    path: Path
    names: tuple[str, ...]
    imgsz: int
    version: str
    sha256: str
    bundle: Path | None = None
    variant: str | None = None

    @property
    def nc(self) -> int:
        """Number of classes."""
        return len(self.names)


def load_model_info(cfg: ModelConfig, base_dir: str | Path | None = None) -> ModelInfo:
    """Resolve the model file and gather its metadata.

    Args:
        cfg: the ``model`` section of the config.
        base_dir: directory relative paths are resolved against (the config file's); default: cwd.

    Returns:
        The model's :class:`ModelInfo`.

    Raises:
        ModelError: one line naming the file when the model or its metadata is missing, unreadable or
            incomplete.
    """
    path = _resolve(cfg.path, base_dir)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    if path.suffix.lower() == BUNDLE_SUFFIX:
        return _load_bundle(cfg, path, base_dir)
    meta_path = _resolve(cfg.meta, base_dir) if cfg.meta else path.with_suffix(".json")
    if cfg.meta and not meta_path.is_file():
        raise ModelError(f"{meta_path}: model metadata file not found")
    meta = _read_json_meta(meta_path) if meta_path.is_file() else _embedded_meta(path)
    names = _parse_names(cfg.names if cfg.names is not None else meta.get("names"), path)
    imgsz = _parse_imgsz(cfg.imgsz if cfg.imgsz is not None else meta.get("imgsz"), path)
    digest = file_sha256(path)
    version = str(meta.get("version") or digest[:12])
    return ModelInfo(path=path, names=names, imgsz=imgsz, version=version, sha256=digest)


def _load_bundle(cfg: ModelConfig, path: Path, base_dir: str | Path | None) -> ModelInfo:
    """Verify the bundle, choose this device's variant, extract it; the manifest is the metadata."""
    from edge.bundle import BundleError, local_gpu, read_bundle, select_variant

    if not cfg.public_key:
        raise BundleError(
            f"{path}: model.public_key is required to run a bundle (the signing.pub it is signed with)"
        )
    bundle = read_bundle(path, _resolve(cfg.public_key, base_dir))
    backend, precision, state = cfg._bundle_context or ("onnxruntime", "fp32", None)
    # Only the TensorRT backend runs engines; ONNX Runtime never gets one.
    gpu = local_gpu() if backend == "tensorrt" else None
    variant, reason = select_variant(bundle, precision=precision, gpu=gpu)
    if backend == "tensorrt" and variant["kind"] != "engine":
        raise BundleError(f"{path}: backend.type tensorrt needs an engine for this GPU, but: {reason}")
    dest = _extract_dir(bundle.manifest_bytes, bundle.name, bundle.version, state)
    model_path = dest / "files" / variant["file"]
    sha = bundle.manifest["files"][variant["file"]]["sha256"]
    if not _extracted(dest, bundle.manifest_bytes, model_path, sha):
        _extract(bundle, dest)
    label = f"{variant['kind']} {variant['precision']}"
    log.info(
        "model bundle %s version %s: running %s (%s)", path.name, bundle.version, variant["file"], reason
    )
    names = _parse_names(cfg.names if cfg.names is not None else bundle.names, path)
    imgsz = _parse_imgsz(cfg.imgsz if cfg.imgsz is not None else bundle.imgsz, path)
    return ModelInfo(
        path=model_path,
        names=names,
        imgsz=imgsz,
        version=bundle.version,
        sha256=sha,
        bundle=path,
        variant=f"{label}: {reason}",
    )


def _extract_dir(manifest: bytes, name: str, version: str, state: str | None) -> Path:
    """``<state>/models/<name>--<version>-<manifest digest>``: one directory per signed manifest."""
    digest = hashlib.sha256(manifest).hexdigest()[:12]
    root = Path(state) / "models" if state else _temp_root()
    return root / f"{_safe(name)}--{_safe(version)}-{digest}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text).lstrip(".") or "_"


_TEMP_ROOT: list[Path] = []


def _temp_root() -> Path:
    """A process-wide temporary directory for bundles loaded without a config, removed at exit."""
    if not _TEMP_ROOT:
        _TEMP_ROOT.append(Path(tempfile.mkdtemp(prefix="lanecount-models-")))
        atexit.register(shutil.rmtree, _TEMP_ROOT[0], True)
    return _TEMP_ROOT[0]


def _extracted(dest: Path, manifest: bytes, model_path: Path, sha256: str) -> bool:
    """Whether an earlier extraction of this very manifest is intact (re-hashes the model file)."""
    try:
        return (dest / "manifest.json").read_bytes() == manifest and file_sha256(model_path) == sha256
    except OSError:
        return False


def _extract(bundle: Any, dest: Path) -> None:
    """Extract beside ``dest`` and rename into place, so a crash never leaves half a model there."""
    from edge.bundle import BundleError

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as exc:
        raise BundleError(
            f"{bundle.path}: cannot extract into {dest.parent}: {exc.strerror or exc}"
        ) from None
    try:
        bundle.extract(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Older extractions of this model are caches of other bundles: a rollback re-extracts from its .lcb.
    # (A detector still using one keeps its open file or the bytes it already read.)
    name = dest.name.split("--", 1)[0]
    for old in dest.parent.glob(f"{name}--*"):
        if old != dest and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
            log.info("removed the extraction of an older bundle: %s", old)


def split_engine_header(data: bytes) -> tuple[dict[str, Any] | None, bytes]:
    """Split Ultralytics' metadata header off a TensorRT engine file.

    Ultralytics writes a 4-byte little-endian length and a JSON document in front of the plan, which
    plain TensorRT cannot deserialize. A plain plan is returned unchanged with ``None`` metadata.

    Args:
        data: the bytes of an ``.engine``/``.plan`` file.

    Returns:
        ``(metadata or None, plan bytes)``.
    """
    if len(data) < 4:
        return None, data
    n = int.from_bytes(data[:4], byteorder="little", signed=True)
    if not 2 <= n <= len(data) - 4 or data[4:5] != b"{":
        return None, data
    try:
        meta = json.loads(data[4 : 4 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, data
    return (meta, data[4 + n :]) if isinstance(meta, dict) else (None, data)


def _resolve(p: str, base_dir: str | Path | None) -> Path:
    path = Path(p).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path.resolve()


def _read_json_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model metadata: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: model metadata is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: model metadata must be a JSON object with names, imgsz, version")
    return data


def _embedded_meta(path: Path) -> dict[str, Any]:
    """Metadata Ultralytics put inside the model file; empty when there is none."""
    if path.suffix.lower() == ".onnx":
        return _onnx_meta(path)
    if path.suffix.lower() in (".engine", ".plan"):
        with path.open("rb") as f:
            head = f.read(4)
            n = int.from_bytes(head, "little", signed=True) if len(head) == 4 else 0
            meta, _ = split_engine_header(head + f.read(max(0, min(n, 1 << 20))))
        return meta or {}
    return {}


def _onnx_meta(path: Path) -> dict[str, Any]:
    """Ultralytics' ONNX ``metadata_props``: strings holding Python literals (names dict, imgsz list)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a corrupt file
        raise ModelError(f"{path}: not a valid ONNX model: {_first_line(exc)}") from None
    props = session.get_modelmeta().custom_metadata_map
    meta: dict[str, Any] = {}
    for key in ("names", "imgsz"):
        if key in props:
            try:
                meta[key] = ast.literal_eval(props[key])
            except (ValueError, SyntaxError):
                raise ModelError(
                    f"{path}: ONNX metadata {key!r} is not a Python literal: {props[key][:60]}"
                ) from None
    if "imgsz" not in meta:
        shape = session.get_inputs()[0].shape
        if len(shape) == 4 and isinstance(shape[2], int):
            meta["imgsz"] = [shape[2], shape[3]]
    return meta


def _parse_names(raw: Any, path: Path) -> tuple[str, ...]:
    if raw is None:
        raise ModelError(
            f"{path}: no class names: write {path.with_suffix('.json').name} with 'names' or set model.names"
        )
    if isinstance(raw, dict):
        try:
            items = sorted((int(k), str(v)) for k, v in raw.items())
        except ValueError:
            raise ModelError(f"{path}: class names mapping must have integer ids as keys") from None
        if [k for k, _ in items] != list(range(len(items))):
            raise ModelError(f"{path}: class ids must be 0..{len(items) - 1} without gaps")
        names = tuple(v for _, v in items)
    elif isinstance(raw, (list, tuple)):
        names = tuple(str(v) for v in raw)
    else:
        raise ModelError(
            f"{path}: class names must be a list or an {{id: name}} mapping, got {type(raw).__name__}"
        )
    if not names:
        raise ModelError(f"{path}: the list of class names is empty")
    return names


def _parse_imgsz(raw: Any, path: Path) -> int:
    if raw is None:
        raise ModelError(f"{path}: no input size: add 'imgsz' to the metadata or set model.imgsz")
    sizes = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ModelError(f"{path}: imgsz must be a positive integer or [h, w], got {raw!r}")
    if len(sizes) > 2 or len(set(sizes)) != 1:
        raise ModelError(f"{path}: only square inputs are supported, got imgsz {raw!r}")
    return int(sizes[0])


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (models are tens of MB)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__

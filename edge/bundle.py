"""Signed model bundles (``.lcb``): read, verify, extract, and choose the variant this device runs.

A bundle is an uncompressed POSIX tar whose members come in this order (models are already dense, and a
fixed order lets a reader refuse anything else without unpacking it)::

    manifest.json   canonical UTF-8 JSON (sorted keys, no spaces): the signed bytes
    manifest.sig    raw 64-byte ed25519 signature over exactly the bytes of manifest.json
    files/<name>    every model file the manifest lists, and nothing else

The manifest (format ``lanecount-bundle/1``) names the model, its version, class names, input size, the
sha256 and size of every file, and the variants (``onnx``/``engine`` × ``fp32``/``fp16``/``int8``) with
the GPU and TensorRT version an engine was built for. :func:`read_bundle` checks the signature against
the operator's public key *before* trusting a single manifest field, then every file's size and sha256.
It does not extract; :meth:`Bundle.extract` writes the files, hashing them again as it copies, so a
bundle swapped on disk between the two calls is still refused.

The signing side (``lanecount-export keygen`` / ``bundle``) lives in :mod:`export.bundle`: a device
only ever needs the public key.

Example:
    >>> bundle = read_bundle(Path("demo.lcb"), public_key=Path("keys/signing.pub"))
    >>> variant, why = select_variant(bundle, precision="int8", gpu=local_gpu())
    >>> model_dir = bundle.extract(Path("/var/lib/lanecount/models/demo-1.0"))
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edge.errors import ModelError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "SIGNATURE",
    "Bundle",
    "BundleError",
    "DeviceGPU",
    "canonical_json",
    "load_public_key",
    "local_gpu",
    "read_bundle",
    "select_variant",
]

FORMAT = "lanecount-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FILES_PREFIX = "files/"
# A file name inside files/: no directories, no dot-files, nothing a path could be made of.
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
_MANIFEST_MAX = 1 << 20  # a manifest is a few KB; refuse to read a huge one into memory
_CHUNK = 1 << 20
KINDS = ("onnx", "engine")
PRECISIONS = ("fp32", "fp16", "int8")
_REQUIRED = ("format", "name", "version", "names", "imgsz", "files", "variants")


class BundleError(ModelError):
    """A bundle is unreadable, unsigned, tampered with, or has no variant this device can run."""


@dataclass(frozen=True)
class DeviceGPU:
    """The GPU and TensorRT version a TensorRT engine must have been built for to run here.

    Attributes:
        name: the GPU's name, e.g. ``Orin`` (``cudaGetDeviceProperties``).
        compute_capability: ``major.minor``, e.g. ``8.7`` for Jetson Orin.
        tensorrt: the TensorRT version, e.g. ``10.3.0``.
    """

    name: str
    compute_capability: str
    tensorrt: str


def canonical_json(obj: Any) -> bytes:
    """The canonical bytes of a manifest: sorted keys, no whitespace, UTF-8 (what gets signed)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def load_public_key(path: Path) -> Any:
    """Read an ed25519 public key (PEM ``SubjectPublicKeyInfo``, as ``lanecount-export keygen`` writes).

    Raises:
        BundleError: the file is missing or is not an ed25519 public key.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise BundleError(f"{path}: cannot read public key: {exc.strerror or exc}") from None
    except ValueError:
        raise BundleError(f"{path}: not a PEM public key (expected signing.pub from keygen)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: not an ed25519 public key ({type(key).__name__})")
    return key


@dataclass(frozen=True)
class _Member:
    name: str  # the file name inside files/
    offset: int  # of the data in the tar
    size: int


class Bundle:
    """A verified bundle: its manifest, trusted, and where its files lie in the archive.

    Attributes:
        path: the ``.lcb`` file.
        manifest: the verified manifest.
        manifest_bytes: the signed bytes of ``manifest.json``.
        signature: the 64-byte signature.
    """

    def __init__(
        self, path: Path, manifest: dict[str, Any], raw: bytes, sig: bytes, members: dict[str, _Member]
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.manifest_bytes = raw
        self.signature = sig
        self._members = members

    @property
    def name(self) -> str:
        """The model's name."""
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        """The model's version, as the device reports it."""
        return str(self.manifest["version"])

    @property
    def names(self) -> tuple[str, ...]:
        """Class names, indexed by class id."""
        return tuple(self.manifest["names"])

    @property
    def imgsz(self) -> int:
        """Square network input size in pixels."""
        return int(self.manifest["imgsz"])

    @property
    def variants(self) -> list[dict[str, Any]]:
        """The model files' variants (``file``, ``kind``, ``precision``, engine target, metrics)."""
        return list(self.manifest["variants"])

    def extract(self, dest_dir: Path) -> Path:
        """Write ``files/*``, ``manifest.json`` and ``manifest.sig`` into ``dest_dir`` and fsync them.

        Every file is hashed again while it is copied: a bundle replaced on disk after
        :func:`read_bundle` is refused rather than half-trusted.

        Returns:
            ``dest_dir``.

        Raises:
            BundleError: the archive changed since it was verified, or ``dest_dir`` is not writable.
        """
        files = dest_dir / "files"
        try:
            files.mkdir(parents=True, exist_ok=True)
            with self.path.open("rb") as src:
                for member in self._members.values():
                    self._copy_checked(src, member, files / member.name)
            for name, data in ((MANIFEST, self.manifest_bytes), (SIGNATURE, self.signature)):
                with (dest_dir / name).open("wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            _fsync_dir(files)
            _fsync_dir(dest_dir)
        except OSError as exc:
            raise BundleError(f"{self.path}: cannot extract into {dest_dir}: {exc.strerror or exc}") from None
        return dest_dir

    def _copy_checked(self, src: IO[bytes], member: _Member, dest: Path) -> None:
        entry = self.manifest["files"][member.name]
        h = hashlib.sha256()
        src.seek(member.offset)
        left = member.size
        with dest.open("wb") as out:
            while left:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    break
                h.update(chunk)
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if left or h.hexdigest() != entry["sha256"]:
            dest.unlink(missing_ok=True)
            raise BundleError(f"{self.path}: files/{member.name} changed since the bundle was verified")


def read_bundle(path: Path, public_key: Path) -> Bundle:
    """Open and verify a bundle: signature first, then the manifest, then every file's size and sha256.

    Args:
        path: the ``.lcb`` file.
        public_key: the operator's ed25519 public key (PEM, ``signing.pub``).

    Returns:
        The verified :class:`Bundle` (nothing extracted).

    Raises:
        BundleError: one line naming the bundle and what is wrong (not a bundle, unsigned, signature
            does not match this key, manifest invalid, a file missing, extra, resized or changed).
    """
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key)
    try:
        with tarfile.open(path, mode="r:") as tar:
            raw, sig, members = _scan(path, tar)
    except BundleError:
        raise
    except FileNotFoundError:
        raise BundleError(f"{path}: bundle file not found") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read bundle: {exc.strerror or exc}") from None
    except tarfile.TarError as exc:
        raise BundleError(f"{path}: not a bundle (tar archive): {exc}") from None
    try:
        key.verify(sig, raw)
    except InvalidSignature:
        raise BundleError(
            f"{path}: signature does not match {public_key.name}: the manifest was changed "
            "or signed with another key"
        ) from None
    manifest = _parse_manifest(path, raw)
    _check_files(path, manifest, members)
    return Bundle(path, manifest, raw, sig, members)


def _scan(path: Path, tar: tarfile.TarFile) -> tuple[bytes, bytes, dict[str, _Member]]:
    """Walk the members in their fixed order; return the manifest, signature and file members."""
    raw = sig = None
    members: dict[str, _Member] = {}
    for i, info in enumerate(tar):
        if not info.isfile():
            raise BundleError(f"{path}: member {info.name!r} is not a regular file")
        if i == 0 or i == 1:
            want = MANIFEST if i == 0 else SIGNATURE
            if info.name != want:
                raise BundleError(
                    f"{path}: unsigned or malformed: member {i + 1} is {info.name!r}, not {want}"
                )
            if info.size > _MANIFEST_MAX:
                raise BundleError(f"{path}: {want} is {info.size} bytes, too large")
            f = tar.extractfile(info)
            data = f.read() if f is not None else b""
            raw, sig = (data, sig) if i == 0 else (raw, data)
            continue
        name = info.name[len(FILES_PREFIX) :] if info.name.startswith(FILES_PREFIX) else ""
        if not _FILE_NAME.fullmatch(name) or ".." in name:
            raise BundleError(f"{path}: unexpected member {info.name!r} (only files/<name> may follow)")
        if name in members:
            raise BundleError(f"{path}: member {info.name!r} appears twice")
        members[name] = _Member(name, info.offset_data, info.size)
    if raw is None:
        raise BundleError(f"{path}: empty archive, not a bundle")
    if sig is None:
        raise BundleError(f"{path}: unsigned: no {SIGNATURE}")
    if len(sig) != 64:
        raise BundleError(f"{path}: {SIGNATURE} is {len(sig)} bytes, not a 64-byte ed25519 signature")
    return raw, sig, members


def _parse_manifest(path: Path, raw: bytes) -> dict[str, Any]:
    """Parse the (already authenticated) manifest and check its shape, so later code can index it."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: manifest.json is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: manifest.json must be a JSON object")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"{path}: manifest.json lacks {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise BundleError(f"{path}: manifest format {manifest['format']!r} is not {FORMAT!r}")
    names, imgsz = manifest["names"], manifest["imgsz"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise BundleError(f"{path}: manifest names must be a non-empty list of strings")
    if not isinstance(imgsz, int) or isinstance(imgsz, bool) or imgsz <= 0:
        raise BundleError(f"{path}: manifest imgsz must be a positive integer, got {imgsz!r}")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("size"), int)
        for e in files.values()
    ):
        raise BundleError(f"{path}: manifest files must map each name to {{sha256, size}}")
    variants = manifest["variants"]
    if not isinstance(variants, list) or not variants:
        raise BundleError(f"{path}: manifest lists no variants")
    for v in variants:
        if not isinstance(v, dict) or v.get("file") not in files:
            raise BundleError(f"{path}: variant {v!r} names a file the manifest does not list")
        if v.get("kind") not in KINDS or v.get("precision") not in PRECISIONS:
            raise BundleError(f"{path}: variant {v['file']}: kind/precision must be {KINDS} / {PRECISIONS}")
    return manifest


def _check_files(path: Path, manifest: dict[str, Any], members: dict[str, _Member]) -> None:
    """Every listed file present with its size and sha256; nothing unlisted."""
    listed = manifest["files"]
    extra = sorted(set(members) - set(listed))
    if extra:
        raise BundleError(f"{path}: files/{extra[0]} is in the archive but not in the signed manifest")
    missing = sorted(set(listed) - set(members))
    if missing:
        raise BundleError(f"{path}: files/{missing[0]} is listed in the manifest but missing")
    with path.open("rb") as f:
        for name, member in members.items():
            entry = listed[name]
            if member.size != entry["size"]:
                raise BundleError(
                    f"{path}: files/{name} is {member.size} bytes, the manifest says {entry['size']}"
                )
            if _sha256_range(f, member.offset, member.size) != entry["sha256"]:
                raise BundleError(f"{path}: files/{name}: sha256 does not match the manifest (tampered)")


def _sha256_range(f: IO[bytes], offset: int, size: int) -> str:
    h = hashlib.sha256()
    f.seek(offset)
    while size:
        chunk = f.read(min(_CHUNK, size))
        if not chunk:
            break
        h.update(chunk)
        size -= len(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- choosing the variant ------------------------------------------------------------------------


def select_variant(
    bundle_or_manifest: Bundle | dict[str, Any], *, precision: str | None, gpu: DeviceGPU | None
) -> tuple[dict[str, Any], str]:
    """Pick the variant this device should run, and say why.

    In order: a TensorRT engine built for this GPU and TensorRT version; else the INT8 ONNX model when
    ``precision == "int8"``; else the FP32 ONNX model. Engines built for another GPU or TensorRT version
    are passed over, and the reason says how to rebuild one.

    Args:
        bundle_or_manifest: a :class:`Bundle` or its manifest.
        precision: ``backend.precision`` (``fp32``, ``fp16``, ``int8``) or ``None`` for the default.
        gpu: :func:`local_gpu` (``None`` where TensorRT is not available: no engine is chosen).

    Returns:
        ``(variant, reason)``: the manifest's variant entry and one sentence for the log.

    Raises:
        BundleError: no variant can run here (e.g. only engines, all for another GPU).
    """
    manifest = bundle_or_manifest.manifest if isinstance(bundle_or_manifest, Bundle) else bundle_or_manifest
    variants: list[dict[str, Any]] = list(manifest["variants"])
    engines = [v for v in variants if v["kind"] == "engine"]
    refused = ""
    if engines and gpu is not None:
        fits = [v for v in engines if _engine_fits(v, gpu)]
        if fits:
            best = _prefer(fits, precision)
            return best, (
                f"TensorRT engine built for this GPU ({gpu.name}, compute {gpu.compute_capability}, "
                f"TensorRT {gpu.tensorrt}), precision {best['precision']}"
            )
        refused = "; " + _refusal(engines[0], gpu, manifest)
    elif engines:
        refused = "; engines skipped: TensorRT is not available here"
    onnx = {v["precision"]: v for v in variants if v["kind"] == "onnx"}
    if precision == "int8" and "int8" in onnx:
        return onnx["int8"], "INT8 ONNX model on ONNX Runtime, as backend.precision is int8" + refused
    if "fp32" in onnx:
        why = "FP32 ONNX model on ONNX Runtime"
        if precision == "int8":
            why += " (backend.precision is int8 but the bundle has no INT8 ONNX model)"
        return onnx["fp32"], why + refused
    if onnx:
        v = next(iter(onnx.values()))
        return v, f"{v['precision'].upper()} ONNX model (the only ONNX variant)" + refused
    name = (
        bundle_or_manifest.path if isinstance(bundle_or_manifest, Bundle) else manifest.get("name", "bundle")
    )
    if gpu is None:
        raise BundleError(
            f"{name}: the bundle holds only TensorRT engines and TensorRT is not available here"
        )
    raise BundleError(f"{name}: no variant runs here: {refused.lstrip('; ')}")


def _engine_fits(v: dict[str, Any], gpu: DeviceGPU) -> bool:
    """An engine runs only on the compute capability, GPU and TensorRT version it was built with."""
    return (
        str(v.get("compute_capability")) == gpu.compute_capability
        and _trt_version(str(v.get("tensorrt"))) == _trt_version(gpu.tensorrt)
        and (not v.get("gpu") or str(v["gpu"]) == gpu.name)
    )


def _trt_version(version: str) -> str:
    """Major.minor.patch: TensorRT plans are tied to it (the build number does not matter)."""
    return ".".join(version.split(".")[:3])


def _prefer(variants: list[dict[str, Any]], precision: str | None) -> dict[str, Any]:
    """The variant of the requested precision, else the fastest: int8, then fp16, then fp32."""
    for v in variants:
        if v["precision"] == precision:
            return v
    order = {"int8": 0, "fp16": 1, "fp32": 2}
    return min(variants, key=lambda v: order[v["precision"]])


def _refusal(v: dict[str, Any], gpu: DeviceGPU, manifest: dict[str, Any]) -> str:
    onnx = next((x["file"] for x in manifest["variants"] if x["kind"] == "onnx"), "MODEL.onnx")
    precision = v["precision"] if v["precision"] != "fp32" else "fp16"
    return (
        f"engine {v['file']} was built for {v.get('gpu', '?')} (compute {v.get('compute_capability', '?')}, "
        f"TensorRT {v.get('tensorrt', '?')}), this device is {gpu.name} (compute {gpu.compute_capability}, "
        f"TensorRT {gpu.tensorrt}): rebuild it here with `lanecount-export engine {onnx} --precision "
        f"{precision}` and re-bundle, or let provisioning build it at install"
    )


def local_gpu() -> DeviceGPU | None:
    """This device's GPU and TensorRT version; ``None`` without TensorRT or a CUDA device."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef,unused-ignore]
        except ImportError:
            return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if err != cudart.cudaError_t.cudaSuccess:
        return None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return DeviceGPU(name.strip("\x00 "), f"{props.major}.{props.minor}", str(trt.__version__))

"""The device's model store: verified bundles under ``releases/``, the active one behind ``current``.

Layout (root default ``/var/lib/lanecount/models``)::

    releases/<version>/manifest.json, manifest.sig, files/...   the bundle, verified, extracted
    releases/<version>/model.onnx | model.engine                the variant chosen for this device
    releases/<version>/model.json                               names, imgsz, version (edge/model.py's format)
    current  -> releases/<version>                              what the daemon runs
    history.json                                                versions activated, oldest first, and
                                                                the versions rolled back from
    .staging/                                                   half-written releases (removed on next use)

The config points at a stable name inside ``current`` (``model.path:
/var/lib/lanecount/models/current/model.onnx``), so a SIGHUP makes the daemon load the new release.

Crash safety: a release is written and fsynced under ``.staging/`` and becomes visible by one
``rename`` into ``releases/``; ``current`` is switched by renaming a new symlink over it. A kill at any
moment therefore leaves ``current`` pointing at a complete release, the old one or the new one.
``rollback`` returns to the version activated before the active one in ``history.json``, which is
replaced (also by rename) *before* ``current``, so a kill between the two leaves a history whose entry
before the active version is still the right rollback target. A version that was rolled back from
is never a rollback target again (until it is installed or activated by name), so ``rollback`` after
a rollout's automatic rollback goes further back instead of returning to the bad model.
``LANECOUNT_MODELSTORE_CRASH_AT=N`` kills the process (SIGKILL) at the N-th step boundary: the tests
use it to kill an install at every step.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge.config import EdgeConfig
from edge.errors import ModelError
from edge.model import file_sha256

__all__ = [
    "DEFAULT_RELOAD",
    "DEFAULT_STORE",
    "ModelStore",
    "Release",
    "check_compatible",
    "model_filename",
]

DEFAULT_STORE = Path("/var/lib/lanecount/models")
DEFAULT_RELOAD = "systemctl try-reload-or-restart lanecount-edge.service"
CRASH_ENV = "LANECOUNT_MODELSTORE_CRASH_AT"
_HISTORY = 50  # activations remembered in history.json
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$")


@dataclass(frozen=True)
class Release:
    """One installed release.

    Attributes:
        version: the bundle's version (the directory name under ``releases/``).
        path: the release directory.
        active: whether ``current`` points at it.
        previous: whether it is the target of ``rollback``.
        installed_at: ISO-8601 UTC time of the install.
        sha256: checksum of the model file the daemon loads.
        variant: the manifest's variant entry chosen for this device.
    """

    version: str
    path: Path
    active: bool
    previous: bool
    installed_at: str
    sha256: str
    variant: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        """The chosen variant's metrics from the manifest (empty when it has none)."""
        return dict(self.variant.get("metrics") or {})


def model_filename(cfg: EdgeConfig) -> str:
    """The stable file name inside a release that the config's ``model.path`` names."""
    return "model.engine" if cfg.backend.type == "tensorrt" else "model.onnx"


def check_compatible(bundle_name: str, names: list[str], imgsz: int, cfg: EdgeConfig) -> None:
    """Refuse a model the config cannot run: class names its lines and alerts use, imgsz, class ids.

    Raises:
        ModelError: one line naming the bundle and the first mismatch.
    """
    known = set(names)
    used: list[tuple[str, str]] = []
    for line in cfg.counting.lines:
        used += [(f"counting.lines[{line.name}].classes", c) for c in line.classes or []]
    used += [("alerts.depletion.product", r.product) for r in cfg.alerts.depletion]
    used += [("alerts.occupancy.product", r.product) for r in cfg.alerts.occupancy]
    missing = [(where, name) for where, name in used if name not in known]
    if missing:
        where, name = missing[0]
        raise ModelError(
            f"{bundle_name}: incompatible with the config: {where} uses class {name!r}, "
            f"which the model does not have (it has: {', '.join(names)})"
        )
    if cfg.model is not None and cfg.model.imgsz is not None and cfg.model.imgsz != imgsz:
        raise ModelError(
            f"{bundle_name}: incompatible with the config: model.imgsz is {cfg.model.imgsz}, "
            f"the model's input is {imgsz}"
        )
    too_big = [c for c in cfg.backend.classes or [] if c >= len(names)]
    if too_big:
        raise ModelError(
            f"{bundle_name}: incompatible with the config: backend.classes has id {too_big[0]}, "
            f"the model has {len(names)} classes"
        )


class ModelStore:
    """Install, list, switch and check the releases under one root directory."""

    def __init__(self, root: Path = DEFAULT_STORE, *, keep: int = 3) -> None:
        """Open (not create) the store at ``root``; ``keep`` releases survive an install's clean-up."""
        self.root = Path(root)
        self.keep = max(2, keep)
        self.releases = self.root / "releases"
        self.current = self.root / "current"
        self.staging = self.root / ".staging"
        self._steps = 0

    # --- queries -------------------------------------------------------------------------------------

    def active_version(self) -> str | None:
        """Version ``current`` points at, None before the first install."""
        return self._link_version(self.current)

    def installed(self) -> list[Release]:
        """Every installed release, oldest install first."""
        if not self.releases.is_dir():
            return []
        active, prev = self.active_version(), self.rollback_target()
        out = []
        for d in self.releases.iterdir():
            meta = _read_json(d / "model.json")
            if meta is None:
                continue
            out.append(
                Release(
                    version=d.name,
                    path=d,
                    active=d.name == active,
                    previous=d.name == prev,
                    installed_at=str(meta.get("installed_at", "")),
                    sha256=str(meta.get("sha256", "")),
                    variant=dict(meta.get("variant") or {}),
                )
            )
        return sorted(out, key=lambda r: (r.installed_at, r.version))

    def verify(self, public_key: Path, version: str | None = None) -> Release:
        """Check a release (default: the active one) again: signature, every sha256, the model file.

        Raises:
            ModelError: one line naming what is wrong.
        """
        version = version or self.active_version()
        if version is None:
            raise ModelError(f"{self.root}: no model installed (no 'current' link)")
        release = self._release(version)
        _verify_extracted(release.path, public_key)
        meta = _read_json(release.path / "model.json") or {}
        model = release.path / str(meta.get("model_file", ""))
        if not model.is_file() or file_sha256(model) != release.sha256:
            raise ModelError(f"{release.path}: {model.name}: sha256 does not match model.json")
        return release

    # --- changes -------------------------------------------------------------------------------------

    def install(
        self,
        bundle_path: Path,
        cfg: EdgeConfig,
        public_key: Path,
        *,
        precision: str | None = None,
    ) -> tuple[Release, bool]:
        """Verify a bundle, stage it, switch ``current`` to it, clean up old releases.

        Returns:
            ``(release, changed)``: ``changed`` is False when this version was already active.

        Raises:
            ModelError: the bundle is unsigned, tampered, incompatible, or does not fit on disk; the
                active model is untouched.
        """
        try:
            return self._install(bundle_path, cfg, public_key, precision)
        except ModelError as exc:
            active = self.active_version()
            stays = f"; model {active} stays active" if active else ""
            raise type(exc)(f"{exc}{stays}") from None

    def _install(
        self, bundle_path: Path, cfg: EdgeConfig, public_key: Path, precision: str | None
    ) -> tuple[Release, bool]:
        from edge.bundle import read_bundle

        bundle = read_bundle(bundle_path, public_key)
        version = bundle.version
        if not _VERSION_RE.match(version):
            raise ModelError(f"{bundle_path}: version {version!r} is not usable as a directory name")
        check_compatible(str(bundle_path), list(bundle.names), bundle.imgsz, cfg)
        with self._locked():
            target = self.releases / version
            if target.exists():
                installed = _read_json(target / "manifest.json")
                if installed != bundle.manifest:
                    raise ModelError(
                        f"{bundle_path}: version {version} is already installed with different contents; "
                        "bump the version"
                    )
                changed = self.active_version() != version
                if changed:
                    self._switch(version)
                return self._release(version), changed
            self._stage(bundle, cfg, precision, bundle_path)
            self._switch(version)
            self._gc()
            return self._release(version), True

    def activate(self, version: str) -> Release:
        """Make an installed release the active one (``previous`` becomes the one that was active).

        Raises:
            ModelError: when the version is not installed.
        """
        with self._locked():
            self._release(version)
            if self.active_version() != version:
                self._switch(version)
            return self._release(version)

    def rollback(self) -> Release:
        """Return to the release that was active before the current one.

        Raises:
            ModelError: when there is nothing to roll back to.
        """
        prev = self.rollback_target()
        if prev is None:
            raise ModelError(f"{self.root}: nothing to roll back to (no previous release)")
        with self._locked():
            self._switch(prev, rolled_back_from=self.active_version())
            return self._release(prev)

    def rollback_target(self) -> str | None:
        """The installed version activated before the active one (what ``rollback`` switches to)."""
        active, (history, bad) = self.active_version(), self._history()
        if active is None or active not in history:
            return None
        before = history[: len(history) - 1 - history[::-1].index(active)]
        for version in reversed(before):
            if (
                version != active
                and version not in bad
                and (self.releases / version / "model.json").is_file()
            ):
                return version
        return None

    def gc(self) -> list[str]:
        """Remove releases beyond the newest ``keep`` (never current or previous) and stale staging."""
        with self._locked():
            return self._gc()

    # --- steps ---------------------------------------------------------------------------------------

    def _stage(self, bundle: Any, cfg: EdgeConfig, precision: str | None, bundle_path: Path) -> None:
        """Write the release under .staging/, fsync it, rename it into releases/."""
        from edge.bundle import local_gpu, select_variant

        self._clear_staging()
        work = self.staging / f"{bundle.version}.{os.getpid()}"
        try:
            work.mkdir(parents=True)
            self._step("staging created")
            bundle.extract(work)
            self._step("bundle extracted")
            gpu = local_gpu() if cfg.backend.type == "tensorrt" else None
            variant, reason = select_variant(bundle, precision=precision or cfg.backend.precision, gpu=gpu)
            model = work / model_filename(cfg)
            if cfg.backend.type == "tensorrt" and variant["kind"] != "engine":
                variant = _build_engine(work / "files" / variant["file"], model, variant, gpu, bundle_path)
            elif cfg.backend.type != "tensorrt" and variant["kind"] != "onnx":
                raise ModelError(
                    f"{bundle_path}: backend {cfg.backend.type} needs an ONNX variant ({reason})"
                )
            else:
                os.link(work / "files" / variant["file"], model)
            meta = {
                "names": list(bundle.names),
                "imgsz": bundle.imgsz,
                "version": bundle.version,
                "bundle": bundle_path.name,
                "model_file": model.name,
                "sha256": file_sha256(model),
                "variant": variant,
                "installed_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            _write_durably(work / "model.json", json.dumps(meta, indent=2, sort_keys=True).encode())
            _fsync_dir(work)
            self._step("model.json written")
            self.releases.mkdir(exist_ok=True)
            os.rename(work, self.releases / bundle.version)
            self._step("release renamed")
            _fsync_dir(self.releases)
            self._step("releases fsynced")
        except OSError as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise ModelError(
                f"{bundle_path}: cannot install into {self.root}: {exc.strerror or exc}"
            ) from None
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _switch(self, version: str, rolled_back_from: str | None = None) -> None:
        """Append ``version`` to the history, then point ``current`` at it; each step is one rename."""
        active, (history, bad) = self.active_version(), self._history()
        if active is not None and not history:
            history = [active]
        marked = sorted(v for v in bad if v != version and v in history[-_HISTORY:])
        marked += [rolled_back_from] if rolled_back_from else []
        state = {"activations": [*history, version][-_HISTORY:], "rolled_back": marked}
        tmp = self.root / ".history.json.tmp"
        _write_durably(tmp, json.dumps(state).encode())
        self._step("history written")
        os.rename(tmp, self.root / "history.json")
        _fsync_dir(self.root)
        self._step("history switched")
        link = self.root / ".current.tmp"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        os.symlink(f"releases/{version}", link)
        self._step("current link written")
        os.rename(link, self.current)
        _fsync_dir(self.root)
        self._step("current switched")

    def _history(self) -> tuple[list[str], set[str]]:
        """(versions activated, oldest first; versions rolled back from)."""
        data = _read_json(self.root / "history.json") or {}
        return [str(v) for v in data.get("activations", [])], {str(v) for v in data.get("rolled_back", [])}

    def _gc(self) -> list[str]:
        self._clear_staging()
        protected = {self.active_version(), self.rollback_target()} - {None}
        others = [r for r in reversed(self.installed()) if r.version not in protected]  # newest first
        removed = []
        for rel in others[max(0, self.keep - len(protected)) :]:
            shutil.rmtree(rel.path)
            removed.append(rel.version)
        # Directories without model.json are releases an old crash left behind mid-delete.
        for d in self.releases.iterdir() if self.releases.is_dir() else []:
            if not (d / "model.json").is_file() and d.name not in protected:
                shutil.rmtree(d, ignore_errors=True)
        return removed

    def _clear_staging(self) -> None:
        if self.staging.is_dir():
            for d in self.staging.iterdir():
                shutil.rmtree(d, ignore_errors=True)

    def _step(self, name: str) -> None:
        """A step boundary: where the crash-test hook may kill the process."""
        self._steps += 1
        at = os.environ.get(CRASH_ENV)
        if at and int(at) == self._steps:
            os.kill(os.getpid(), signal.SIGKILL)

    # --- helpers -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (Ansible and a person at the console)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise ModelError(f"{self.root}: cannot open the model store: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _link_version(self, link: Path) -> str | None:
        try:
            target = os.readlink(link)
        except OSError:
            return None
        return Path(target).name

    def _release(self, version: str) -> Release:
        for rel in self.installed():
            if rel.version == version:
                return rel
        raise ModelError(
            f"{self.root}: version {version!r} is not installed (see `lanecount-edge model list`)"
        )


def reload_daemon(command: str) -> str | None:
    """Ask the daemon to reload (default: systemd, which sends SIGHUP); returns an error line or None."""
    if not command.strip():
        return None
    try:
        proc = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"reload command {command!r} failed: {exc}"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return f"reload command {command!r} exited {proc.returncode}: {tail[-1] if tail else ''}"
    return None


def _build_engine(
    onnx: Path, out: Path, variant: dict[str, Any], gpu: Any, bundle_path: Path
) -> dict[str, Any]:
    """Build a TensorRT engine on this device with trtexec (JetPack); untested here (no TensorRT)."""
    if gpu is None:
        raise ModelError(
            f"{bundle_path}: backend tensorrt but TensorRT is not installed here, and the bundle has no "
            "engine for this device"
        )
    trtexec = shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    cmd = [trtexec, f"--onnx={onnx}", f"--saveEngine={out}"]
    if variant.get("precision") in ("fp16", "fp32"):
        cmd.append("--fp16")
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ModelError(
            f"{bundle_path}: building the engine failed: {tail[-1] if tail else proc.returncode}"
        )
    return {
        **variant,
        "kind": "engine",
        "built_on_device": True,
        "built_from": variant["file"],
        "build_s": round(time.monotonic() - started, 1),
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "tensorrt": gpu.tensorrt,
    }


def _verify_extracted(release: Path, public_key: Path) -> None:
    """The signature over manifest.json and every listed file's sha256 and size, as installed."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(public_key).read_bytes())
        body = (release / "manifest.json").read_bytes()
        sig = (release / "manifest.sig").read_bytes()
    except (OSError, ValueError) as exc:
        raise ModelError(f"{release}: cannot verify: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ModelError(f"{public_key}: not an ed25519 public key")
    try:
        key.verify(sig, body)
    except InvalidSignature:
        raise ModelError(f"{release}: manifest signature does not verify with {public_key}") from None
    files = json.loads(body).get("files", {})
    for name, entry in files.items():
        path = release / "files" / name
        if not path.is_file() or path.stat().st_size != entry["size"] or file_sha256(path) != entry["sha256"]:
            raise ModelError(f"{path}: missing or sha256 mismatch with manifest.json")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

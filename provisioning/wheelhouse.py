"""Build the wheelhouse the Ansible controller ships to devices (they never download from the internet).

Writes into ``--out``: lanecount's own wheel, every binary wheel of the edge extra for the target
platform and Python (``pip download --only-binary=:all:``), ``requirements.txt`` (what to install from
it) and ``SHA256SUMS``. What JetPack provides is left out on purpose and comes from apt/JetPack through
the venv's ``--system-site-packages``: TensorRT (``tensorrt``), python3-systemd (``systemd-python``, which
has no wheels) and, by default, OpenCV (JetPack's build has GStreamer for CSI cameras; a pip
``opencv-python`` would shadow it). ``--with-opencv`` adds the pip OpenCV for hosts without JetPack.

Usage:
    python provisioning/wheelhouse.py --platform manylinux_2_35_aarch64 --python 3.10 --out wheelhouse/jetson
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
FROM_JETPACK = {"systemd-python", "tensorrt"}
# Pure-Python dependencies published only as sdists: built into platform-independent wheels here.
PURE_SDISTS = ["filterpy>=1.4.5,<2"]  # norfair 2.2-2.3 need < 2


def edge_requirements(with_opencv: bool) -> list[str]:
    """The core dependencies plus the edge extra, less what JetPack provides."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    skip = FROM_JETPACK | (set() if with_opencv else {"opencv-python"})
    out = []
    for req in project["dependencies"] + project["optional-dependencies"]["edge"]:
        req = req.split("#")[0].strip()
        name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower()
        if name not in skip:
            out.append(req.split(";")[0].strip())
    return out


def platform_tags(platform: str) -> list[str]:
    """``manylinux_2_35_aarch64`` and every older manylinux tag it runs (pip does not expand them)."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    glibc, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 16, -1)]
    return [*tags, f"manylinux2014_{arch}", f"linux_{arch}"]


def main() -> int:
    """Build the wheelhouse; returns pip's exit code on failure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--platform", default="manylinux_2_35_aarch64", help="pip platform tag (glibc of the device)"
    )
    ap.add_argument("--python", default="3.10", help="device Python (JetPack 6: 3.10)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--with-opencv", action="store_true", help="include opencv-python (hosts without JetPack)"
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("lanecount-*.whl"):
        old.unlink()
    reqs = edge_requirements(args.with_opencv)
    (args.out / "requirements.txt").write_text("\n".join(reqs) + "\n")
    pip = [sys.executable, "-m", "pip"]
    steps = [
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(args.out), str(ROOT)],
        [*pip, "wheel", "--no-deps", "-q", "-w", str(args.out), *PURE_SDISTS],
        [*pip, "download", "-q", "--only-binary=:all:",
         *(f"--platform={t}" for t in platform_tags(args.platform)),
         "--python-version", args.python, "--implementation", "cp", "-d", str(args.out),
         "--find-links", str(args.out),
         "-r", str(args.out / "requirements.txt")],
    ]  # fmt: skip
    for cmd in steps:
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"wheelhouse: {' '.join(cmd[:4])} failed with exit code {rc}", file=sys.stderr)
            return rc
    wheels = sorted(args.out.glob("*.whl"))
    sums = "".join(f"{hashlib.sha256(w.read_bytes()).hexdigest()}  {w.name}\n" for w in wheels)
    (args.out / "SHA256SUMS").write_text(sums)
    size = sum(w.stat().st_size for w in wheels) / 1e6
    print(f"{args.out}: {len(wheels)} wheels, {size:.0f} MB ({args.platform}, CPython {args.python})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

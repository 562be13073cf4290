"""A synthetic checkout-conveyor video with ground truth: tracks (MOTChallenge) and line crossings.

A top-down camera looks at a belt moving left to right. Products ride across; some stop on the
counting line, some are pulled back across it and pushed on again, some travel as close pairs, some
are briefly hidden by a cashier's hand. Products never collide: each one's whole trajectory is
planned before it is placed, and a product whose path would overlap another's is delayed.

Outputs in ``--out``: ``video.mp4``, ``gt.txt`` (``frame,id,left,top,width,height,1,class,visibility``,
frames from 1, class = 0-based id of :data:`train.synth.CLASSES`), ``crossings.json`` (true crossings
per class and direction, same shape as ``lanecount-edge replay``'s ``counts.json``), and ``edge.yaml``
(the video as source, the demo model, the counting line, MQTT off, tracks to ``run/tracks.txt``), which
``lanecount-edge run --config DIR/edge.yaml`` runs as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from train.synth import CLASSES, HEIGHT, WIDTH, conveyor, occluder, paste, render_product, transform

__all__ = ["LINE", "Product", "crossings_from_boxes", "plan", "render_video"]

FPS = 15
SPEED = 7.0  # belt speed, px per frame
RAIL = max(HEIGHT // 12, 8)
_LINE_X = WIDTH // 2
LINE = {"name": "lane", "start": [_LINE_X, HEIGHT], "end": [_LINE_X, 0]}  # left→right is "in"
KINDS = ("normal", "stop", "pullback", "pair", "occluded")
KIND_P = (0.5, 0.14, 0.14, 0.1, 0.12)


@dataclass
class Product:
    """One product's plan: sprite, lane (cy), start frame and x-centre per frame of its life."""

    pid: int
    class_id: int
    kind: str
    sprite: np.ndarray
    cy: float
    start: int
    xs: np.ndarray
    hand: tuple[int, int] | None = None  # frames [a, b) during which a hand covers it
    boxes: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)

    def x_at(self, frame: int) -> float | None:
        """Centre x at ``frame`` or None when the product is not in the video then."""
        i = frame - self.start
        return float(self.xs[i]) if 0 <= i < len(self.xs) else None


def _trajectory(kind: str, half_w: float, rng: np.random.Generator) -> np.ndarray:
    """x-centre per frame from entering at the left edge to leaving at the right."""
    x0, x_end, line = -half_w + 2, WIDTH + half_w - 2, WIDTH / 2
    if kind == "stop":
        rest = line + float(rng.choice([-3.0, -2.0, 2.0, 3.0]))
        legs = [(x0, rest, SPEED), ("hold", int(rng.integers(15, 30))), (rest, x_end, SPEED)]
    elif kind == "pullback":
        past, back = float(rng.uniform(40, 60)), float(rng.uniform(40, 60))
        legs = [(x0, line + past, SPEED), ("hold", 3), (line + past, line - back, -SPEED * 0.8), ("hold", 3)]
        legs.append((line - back, x_end, SPEED))
    else:
        legs = [(x0, x_end, SPEED)]
    xs: list[float] = []
    for leg in legs:
        if leg[0] == "hold":
            xs.extend([xs[-1]] * int(leg[1]))
            continue
        a, b, v = float(leg[0]), float(leg[1]), float(leg[2])
        n = max(int(abs(b - a) / abs(v)), 1)
        xs.extend(np.linspace(a, b, n + 1)[1 if xs else 0 :].tolist())
    return np.asarray(xs, np.float32)


def _collides(p: Product, others: list[Product], margin: float = 10.0) -> bool:
    ph, pw = p.sprite.shape[:2]
    for o in others:
        oh, ow = o.sprite.shape[:2]
        if abs(p.cy - o.cy) >= (ph + oh) / 2 + margin:
            continue
        lo, hi = max(p.start, o.start), min(p.start + len(p.xs), o.start + len(o.xs))
        if lo >= hi:
            continue
        dx = np.abs(p.xs[lo - p.start : hi - p.start] - o.xs[lo - o.start : hi - o.start])
        if np.any(dx < (pw + ow) / 2 + margin):
            return True
    return False


def _new_product(pid: int, kind: str, rng: np.random.Generator) -> Product:
    cls = int(rng.integers(len(CLASSES)))
    sprite = transform(render_product(cls, rng), float(rng.uniform(-180, 180)), float(rng.uniform(0.6, 0.85)))
    xs = _trajectory("normal" if kind in ("pair", "occluded") else kind, sprite.shape[1] / 2, rng)
    return Product(pid, cls, kind, sprite, 0.0, 0, xs)


def _lane(p: Product, rng: np.random.Generator) -> float:
    h = p.sprite.shape[0]
    return float(rng.uniform(RAIL + h / 2 + 4, HEIGHT - RAIL - h / 2 - 4))


def plan(frames: int, rng: np.random.Generator) -> list[Product]:
    """Schedule products over ``frames`` frames without collisions; every product leaves the video."""
    products: list[Product] = []
    t = 0
    while True:
        kind = str(rng.choice(KINDS, p=KIND_P))
        p = _new_product(len(products) + 1, kind, rng)
        placed = False
        for delay in range(0, 60, 3):
            p.start = t + delay
            if p.start + len(p.xs) > frames:
                break
            for _ in range(6):
                p.cy = _lane(p, rng)
                if not _collides(p, products):
                    placed = True
                    break
            if placed:
                break
        if not placed:
            if t + 60 >= frames:
                return products
            t += 10
            continue
        products.append(p)
        if kind == "pair":  # a partner riding alongside, across the belt
            q = _new_product(len(products) + 1, "normal", rng)
            q.start, q.xs = p.start, p.xs + float(rng.uniform(-8, 8))
            gap = float(rng.uniform(4, 14))
            below = p.cy + (p.sprite.shape[0] + q.sprite.shape[0]) / 2 + gap
            above = p.cy - (p.sprite.shape[0] + q.sprite.shape[0]) / 2 - gap
            for cy in (below, above):
                q.cy = cy
                inside = RAIL + q.sprite.shape[0] / 2 <= cy <= HEIGHT - RAIL - q.sprite.shape[0] / 2
                if inside and not _collides(q, products):
                    products.append(q)
                    break
        if kind == "occluded":  # a hand passes over it near the line
            near = np.nonzero(np.abs(p.xs - WIDTH / 2) < 40)[0]
            a = p.start + int(near[0]) if len(near) else p.start + len(p.xs) // 2
            p.hand = (a, a + int(rng.integers(4, 9)))
        t = p.start + int(rng.integers(8, 20))


def _camera(rng: np.random.Generator) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """Fixed lighting for the whole video (no flicker) plus per-frame sensor noise."""
    gain, gamma, cast = rng.uniform(0.85, 1.15), rng.uniform(0.9, 1.1), 1 + rng.uniform(-0.04, 0.04, 3)
    lut = np.stack([np.clip(((np.arange(256) / 255) ** gamma) * gain * c * 255, 0, 255) for c in cast], 1)
    lut = lut.astype(np.uint8)
    kernel = np.full((1, 3), 1 / 3, np.float32)  # slight motion blur along the belt

    def shoot(img: np.ndarray, frame_rng: np.random.Generator) -> np.ndarray:
        out = np.stack([cv2.LUT(img[..., c], lut[:, c]) for c in range(3)], -1)
        out = cv2.filter2D(out, -1, kernel)
        noise = frame_rng.normal(0, 3, out.shape).astype(np.float32)
        return np.clip(out + noise, 0, 255).astype(np.uint8)

    return shoot


def _side(x: float, line_x: float) -> int:
    return int(np.sign(x - line_x))


def crossings_from_boxes(
    tracks: dict[int, list[tuple[int, tuple[float, float, float, float]]]], line_x: float
) -> list[tuple[int, int, str]]:
    """(frame, id, direction) for every change of side of a box's bottom-centre about a vertical line."""
    events = []
    for pid, seq in tracks.items():
        side = 0
        for frame, (x1, _, x2, _) in sorted(seq):
            s = _side((x1 + x2) / 2, line_x)
            if s == 0:
                continue
            if side and s != side:
                events.append((frame, pid, "in" if s > 0 else "out"))
            side = s
    return sorted(events)


def render_video(out: Path, seconds: float, seed: int, progress: bool = False) -> dict[str, object]:
    """Render the video and its ground truth into ``out``; returns the crossings summary."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0xC0FFEE])
    frames = round(seconds * FPS)
    products = plan(frames, rng)
    tone = float(rng.uniform(50, 80))
    shoot = _camera(rng)
    hand = occluder(rng)
    writer = cv2.VideoWriter(str(out / "video.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError(f"{out / 'video.mp4'}: OpenCV cannot write MP4 here")
    gt_lines: list[str] = []
    it = range(frames)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="rendering video", unit="frame")
    for f in it:
        canvas = conveyor(rng, offset=-f * SPEED, tone=tone)
        visible = []
        for p in products:
            x = p.x_at(f)
            if x is None:
                continue
            box = paste(canvas, p.sprite, x, p.cy)
            if box is not None:
                p.boxes[f] = box
                visible.append((p, box))
        for p, box in visible:
            vis = 1.0
            if p.hand and p.hand[0] <= f < p.hand[1]:
                hx, hy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                hbox = paste(canvas, hand, hx, hy)
                vis = _visibility(box, hbox)
            x1, y1, x2, y2 = box
            gt_lines.append(
                f"{f + 1},{p.pid},{x1:.0f},{y1:.0f},{x2 - x1:.0f},{y2 - y1:.0f},1,{p.class_id},{vis:.2f}"
            )
        writer.write(shoot(canvas, np.random.default_rng([seed, f])))
    writer.release()
    (out / "gt.txt").write_text("\n".join(gt_lines) + "\n")
    return _write_truth(out, products, frames)


def _visibility(box: tuple[float, ...], cover: tuple[float, ...] | None) -> float:
    if cover is None:
        return 1.0
    iw = max(0.0, min(box[2], cover[2]) - max(box[0], cover[0]))
    ih = max(0.0, min(box[3], cover[3]) - max(box[1], cover[1]))
    return 1.0 - iw * ih / max((box[2] - box[0]) * (box[3] - box[1]), 1.0)


def _write_truth(out: Path, products: list[Product], frames: int) -> dict[str, object]:
    by_id = {p.pid: p for p in products}
    tracks = {p.pid: sorted(p.boxes.items()) for p in products}
    events = crossings_from_boxes(tracks, _LINE_X)
    counts: dict[str, dict[str, int]] = {"in": {}, "out": {}}
    for _, pid, d in events:
        name = CLASSES[by_id[pid].class_id]
        counts[d][name] = counts[d].get(name, 0) + 1
    summary: dict[str, object] = {
        "fps": FPS,
        "frames": frames,
        "size": [WIDTH, HEIGHT],
        "products": len(products),
        "kinds": {k: sum(p.kind == k for p in products) for k in KINDS},
        "anchor": "bottom_center",
        "line": LINE,
        "lines": {LINE["name"]: counts},
        "events": [
            {"frame": f + 1, "id": pid, "class": CLASSES[by_id[pid].class_id], "direction": d}
            for f, pid, d in events
        ],
    }
    (out / "crossings.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "edge.yaml").write_text(yaml.safe_dump(_edge_config(out), sort_keys=False))
    return summary


def _edge_config(out: Path) -> dict[str, object]:
    """An edge.yaml that ``lanecount-edge run --config`` accepts as is: the demo model, no broker.

    Paths are absolute so the file works wherever the command runs; outputs land next to the video.
    """
    from edge.model import DEFAULT_MODEL

    folder = out.resolve()
    return {
        "state_dir": str(folder / "state"),
        "source": {"type": "file", "path": str(folder / "video.mp4"), "loop": False},
        "model": {"path": str(DEFAULT_MODEL)},
        "counting": {"lines": [LINE]},
        "mqtt": {"enabled": False},
        "output": {"tracks": str(folder / "run" / "tracks.txt")},
    }

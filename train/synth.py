"""Procedural grocery scenes: the project's own data for the demo, the tests and the benchmarks.

Nothing can be downloaded here, so products are drawn with OpenCV and numpy: shaded fruit, printed
cartons, cans and boxes, randomly scaled, rotated, partly occluded, blurred, noisy and lit, on conveyor
belts, shelves and clutter. The same :func:`render_product` and :func:`paste` serve the still images
(:func:`write_dataset`) and the conveyor videos (:mod:`train.synth_video`), so a model trained on the
images detects the products in the videos.

Everything is deterministic for a given seed (one ``numpy.random.Generator`` per image).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from train.layout import write_data_yaml

__all__ = [
    "CLASSES",
    "Placed",
    "Scene",
    "background",
    "degrade",
    "paste",
    "render_product",
    "render_scene",
    "write_dataset",
]

CLASSES: tuple[str, ...] = ("apple", "orange", "banana", "milk_carton", "soda_can", "cereal_box")
BACKGROUNDS = ("conveyor", "shelf", "clutter")
WIDTH, HEIGHT = 640, 480
PHOTO_SHARE = 0.5  # share of a photo=True dataset drawn by train.photoreal (the rest: as without it)

Rng = np.random.Generator


@dataclass(frozen=True)
class Placed:
    """A product drawn into an image: its class and its tight box (pixels, xyxy, clipped to the image)."""

    class_id: int
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Scene:
    """One rendered image and the products in it."""

    image: np.ndarray
    objects: tuple[Placed, ...]


# --- products --------------------------------------------------------------------------------------


def _jitter_color(rng: Rng, bgr: tuple[int, int, int], amount: int = 18) -> np.ndarray:
    return np.clip(np.array(bgr, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _shade_ellipse(h: int, w: int, color: np.ndarray, rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    """A lit ellipse: radial shading from a light spot, with a specular highlight. Returns (bgr, alpha)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    nx, ny = (xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2)
    r2 = nx**2 + ny**2
    alpha = np.clip((1.0 - r2) * max(w, h) / 3, 0, 1)
    lx, ly = rng.uniform(-0.5, 0.1), rng.uniform(-0.5, 0.1)
    light = np.clip(1.0 - 0.55 * np.sqrt((nx - lx) ** 2 + (ny - ly) ** 2), 0.35, 1.0)
    img = color[None, None, :] * light[..., None]
    spec = np.exp(-((nx - lx) ** 2 + (ny - ly) ** 2) / 0.02)[..., None] * 120
    return np.clip(img + spec, 0, 255), alpha


def _fruit(rng: Rng, kind: str) -> np.ndarray:
    size = int(rng.uniform(64, 84))
    h, w = (size, int(size * rng.uniform(0.95, 1.08))) if kind == "apple" else (size, size)
    base = (
        _jitter_color(rng, (40, 40, 200) if rng.random() < 0.75 else (60, 180, 120), 25)
        if kind == "apple"
        else _jitter_color(rng, (20, 140, 250), 15)
    )
    bgr, alpha = _shade_ellipse(h, w, base, rng)
    if kind == "orange":  # dimpled peel and a navel
        dimples = rng.normal(0, 10, (h, w, 1)).astype(np.float32)
        bgr = np.clip(bgr + cv2.GaussianBlur(dimples, (3, 3), 0)[..., None], 0, 255)
        cv2.circle(
            bgr, (w // 2 + int(rng.integers(-4, 5)), h // 2 + int(rng.integers(-4, 5))), 3, (10, 90, 170), -1
        )
    else:  # streaks, a stem and a leaf
        for _ in range(6):
            x = int(rng.integers(w // 5, 4 * w // 5))
            cv2.line(bgr, (x, h // 5), (x + int(rng.integers(-6, 7)), 4 * h // 5), (base * 0.8).tolist(), 1)
        cv2.line(bgr, (w // 2, h // 6), (w // 2 + 4, 0), (20, 50, 90), 3)
        cv2.ellipse(bgr, (w // 2 + 10, h // 8), (9, 4), -20, 0, 360, (40, 150, 50), -1)
        cv2.ellipse(alpha, (w // 2 + 10, h // 8), (9, 4), -20, 0, 360, (1.0,), -1)
        cv2.line(alpha, (w // 2, h // 6), (w // 2 + 4, 0), (1.0,), 3)
    return np.dstack([bgr, alpha * 255]).astype(np.uint8)


def _banana(rng: Rng) -> np.ndarray:
    w, h = int(rng.uniform(120, 150)), int(rng.uniform(55, 70))
    bgr = np.zeros((h, w, 3), np.float32)
    alpha: np.ndarray = np.zeros((h, w), np.float32)
    color = _jitter_color(rng, (40, 215, 240), 15)
    # A crescent: the difference of two ellipse arcs, thick at the middle and thin at the tips.
    outer = cv2.ellipse2Poly((w // 2, -int(h * 0.9)), (w // 2 - 4, int(h * 1.85)), 0, 20, 160, 4)
    inner = np.asarray(
        cv2.ellipse2Poly((w // 2, -int(h * 0.9)), (w // 2 - 14, int(h * 1.35)), 0, 20, 160, 4)
    )[::-1]
    poly = np.concatenate([outer, inner]).astype(np.int32)
    cv2.fillPoly(alpha, [poly], (1.0,))
    cv2.fillPoly(bgr, [poly], color.tolist())
    yy = np.mgrid[0:h, 0:w][0].astype(np.float32) / h
    bgr *= (0.65 + 0.45 * (1 - np.abs(yy - 0.55)))[..., None]
    for tip in (poly[0], poly[len(outer) - 1]):
        cv2.circle(bgr, (int(tip[0]), int(tip[1])), 5, (20, 50, 70), -1)
    cv2.polylines(bgr, [inner.astype(np.int32)], False, (30, 150, 190), 2)
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0)
    return np.dstack([np.clip(bgr, 0, 255), alpha * 255]).astype(np.uint8)


def _printed_box(rng: Rng, w: int, h: int, body: np.ndarray, band: np.ndarray, text: str) -> np.ndarray:
    """A printed package: body colour with a side gradient, a label band, text and a border."""
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    bgr = np.ones((h, w, 3), np.float32) * body * (0.75 + 0.35 * np.sin(np.pi * xx))
    y0 = int(h * rng.uniform(0.35, 0.5))
    cv2.rectangle(bgr, (0, y0), (w, y0 + h // 4), band.tolist(), -1)
    scale = w / 150
    # Text goes through a uint8 mask: OpenCV 5 refuses putText on float images.
    ink = np.zeros((h, w), np.uint8)
    cv2.putText(ink, text, (int(w * 0.08), y0 + h // 6), cv2.FONT_HERSHEY_DUPLEX, scale, (255,), 2)
    bgr[ink > 0] = 255
    cv2.rectangle(bgr, (0, 0), (w - 1, h - 1), (body * 0.5).tolist(), 2)
    return bgr


def _carton(rng: Rng) -> np.ndarray:
    w, h = int(rng.uniform(66, 80)), int(rng.uniform(120, 140))
    bgr = _printed_box(
        rng, w, h, _jitter_color(rng, (235, 235, 235), 12), _jitter_color(rng, (170, 90, 20)), "MILK"
    )
    gable = h // 6
    bgr[:gable] = (bgr[:gable] * 0.8).astype(np.float32)
    cv2.line(bgr, (0, gable), (w, gable), (120, 120, 120), 2)
    cv2.circle(bgr, (w // 2, int(h * 0.78)), w // 6, (200, 120, 40), -1)  # a cow-ish blue emblem
    alpha = np.full((h, w), 255, np.float32)
    return np.dstack([bgr, alpha]).astype(np.uint8)


def _can(rng: Rng) -> np.ndarray:
    w, h = int(rng.uniform(56, 66)), int(rng.uniform(104, 118))
    body = _jitter_color(rng, (30, 30, 190) if rng.random() < 0.6 else (160, 60, 20), 20)
    bgr = _printed_box(rng, w, h, body, body * 0.6, "COLA")
    xx = np.linspace(-1, 1, w, dtype=np.float32)
    bgr += (np.exp(-((xx - 0.35) ** 2) / 0.02) * 90)[None, :, None]  # metallic highlight
    bgr[:6] = bgr[-6:] = 190  # rims
    alpha = np.full((h, w), 255, np.float32)
    for y in (0, h - 1):  # rounded ends
        cv2.ellipse(alpha, (w // 2, y), (w // 2, 5), 0, 0, 360, (0,), -1)
    return np.dstack([np.clip(bgr, 0, 255), alpha]).astype(np.uint8)


def _cereal(rng: Rng) -> np.ndarray:
    w, h = int(rng.uniform(100, 118)), int(rng.uniform(140, 160))
    body = _jitter_color(rng, (30, 200, 250) if rng.random() < 0.5 else (40, 60, 220), 20)
    bgr = _printed_box(rng, w, h, body, _jitter_color(rng, (200, 40, 120)), "CEREAL")
    cx, cy = w // 2, int(h * 0.8)
    cv2.ellipse(bgr, (cx, cy), (w // 3, h // 10), 0, 0, 180, (250, 250, 250), -1)  # a bowl
    for _ in range(8):
        cv2.circle(
            bgr,
            (cx + int(rng.integers(-w // 4, w // 4)), cy - int(rng.integers(0, 8))),
            4,
            (40, 120, 200),
            -1,
        )
    alpha = np.full((h, w), 255, np.float32)
    return np.dstack([bgr, alpha]).astype(np.uint8)


def render_product(class_id: int, rng: Rng) -> np.ndarray:
    """Draw one product of ``class_id`` at its natural size; returns a BGRA sprite (uint8)."""
    name = CLASSES[class_id]
    if name in ("apple", "orange"):
        sprite = _fruit(rng, name)
    elif name == "banana":
        sprite = _banana(rng)
    elif name == "milk_carton":
        sprite = _carton(rng)
    elif name == "soda_can":
        sprite = _can(rng)
    else:
        sprite = _cereal(rng)
    noise = rng.normal(0, 4, (*sprite.shape[:2], 3))
    sprite[..., :3] = np.clip(sprite[..., :3] + noise, 0, 255).astype(np.uint8)
    return sprite


def transform(sprite: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """Rotate (degrees) and scale a sprite into a canvas just big enough to hold it."""
    h, w = sprite.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(h * sin + w * cos)) + 2, int(np.ceil(h * cos + w * sin)) + 2
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(sprite, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))


def paste(
    canvas: np.ndarray, sprite: np.ndarray, cx: float, cy: float
) -> tuple[float, float, float, float] | None:
    """Alpha-blend ``sprite`` centred at ``(cx, cy)``; return its tight visible box, or None if off-image."""
    h, w = sprite.shape[:2]
    x0, y0 = round(cx - w / 2), round(cy - h / 2)
    H, W = canvas.shape[:2]
    ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if ax0 >= ax1 or ay0 >= ay1:
        return None
    crop = sprite[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0]
    alpha = crop[..., 3:4].astype(np.float32) / 255
    region = canvas[ay0:ay1, ax0:ax1].astype(np.float32)
    canvas[ay0:ay1, ax0:ax1] = (region * (1 - alpha) + crop[..., :3] * alpha).astype(np.uint8)
    ys, xs = np.nonzero(crop[..., 3] > 127)
    if len(xs) == 0:
        return None
    return (
        float(ax0 + xs.min()),
        float(ay0 + ys.min()),
        float(ax0 + xs.max() + 1),
        float(ay0 + ys.max() + 1),
    )


# --- backgrounds and degradations --------------------------------------------------------------------


def conveyor(
    rng: Rng, w: int = WIDTH, h: int = HEIGHT, offset: float = 0.0, tone: float | None = None
) -> np.ndarray:
    """A dark rubber belt with ribs across it, steel rails at the edges; ``offset`` scrolls the ribs."""
    tone = float(rng.uniform(45, 85)) if tone is None else tone
    xx = np.arange(w, dtype=np.float32)
    ribs = 8 * np.sin((xx + offset) * 2 * np.pi / 23) + 4 * np.sin((xx + offset) * 2 * np.pi / 7)
    img = np.full((h, w, 3), tone, np.float32) + ribs[None, :, None]
    rail = max(h // 12, 8)
    img[:rail] = img[-rail:] = tone + 90
    img[rail - 3 : rail] = img[h - rail : h - rail + 3] = tone * 0.5
    return np.clip(img, 0, 255).astype(np.uint8)


def _shelf(rng: Rng, w: int, h: int) -> np.ndarray:
    wood = _jitter_color(rng, (70, 120, 170), 25)
    img = np.ones((h, w, 3), np.float32) * wood
    img += (rng.normal(0, 1, (1, w, 1)) * 10).astype(np.float32)  # grain
    for y in range(int(rng.integers(60, 120)), h, int(rng.integers(140, 200))):
        cv2.rectangle(img, (0, y), (w, y + 14), (wood * 0.55).tolist(), -1)
        cv2.rectangle(img, (0, y + 14), (w, y + 22), (230, 230, 230), -1)  # price-tag rail
    return np.clip(img, 0, 255).astype(np.uint8)


def _clutter(rng: Rng, w: int, h: int) -> np.ndarray:
    """Grey, low-saturation shapes and lines: busy, but nothing that looks like a product."""
    img = np.full((h, w, 3), rng.uniform(90, 180), np.float32)
    for _ in range(int(rng.integers(15, 35))):
        g = float(rng.uniform(40, 220))
        color = (g + rng.uniform(-12, 12), g, g + rng.uniform(-12, 12))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            p2 = (p1[0] + int(rng.integers(-150, 150)), p1[1] + int(rng.integers(-150, 150)))
            cv2.rectangle(img, p1, p2, color, -1 if rng.random() < 0.6 else 3)
        else:
            cv2.line(
                img, p1, (int(rng.integers(0, w)), int(rng.integers(0, h))), color, int(rng.integers(1, 6))
            )
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def background(kind: str, rng: Rng, w: int = WIDTH, h: int = HEIGHT) -> np.ndarray:
    """A background of ``kind``: ``conveyor``, ``shelf`` or ``clutter``."""
    if kind == "conveyor":
        return conveyor(rng, w, h, offset=float(rng.uniform(0, 100)))
    if kind == "shelf":
        return _shelf(rng, w, h)
    if kind == "clutter":
        return _clutter(rng, w, h)
    raise ValueError(f"unknown background {kind!r}; expected one of {BACKGROUNDS}")


def occluder(rng: Rng) -> np.ndarray:
    """A cashier's hand-and-sleeve shape (not a product) used to occlude products partially."""
    w, h = int(rng.uniform(50, 80)), int(rng.uniform(90, 140))
    img = np.zeros((h, w, 4), np.uint8)
    skin = _jitter_color(rng, (120, 160, 210), 25).tolist()
    cv2.ellipse(img, (w // 2, h // 3), (w // 2 - 2, h // 3), 0, 0, 360, (*skin, 255), -1)
    cv2.rectangle(img, (4, h // 2), (w - 4, h - 1), (*_jitter_color(rng, (90, 60, 40), 30).tolist(), 255), -1)
    return img


def degrade(img: np.ndarray, rng: Rng, strength: float = 1.0) -> np.ndarray:
    """Lighting (gain, gamma, colour cast, vignette-like gradient), blur and sensor noise."""
    out: np.ndarray = img.astype(np.float32) / 255
    out = out ** rng.uniform(0.8, 1.25) * rng.uniform(0.7, 1.25)
    out *= 1 + strength * rng.uniform(-0.06, 0.06, 3)[None, None, :]
    h, w = out.shape[:2]
    gx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    gy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    out *= (1 + strength * 0.15 * (rng.uniform(-1, 1) * gx + rng.uniform(-1, 1) * gy))[..., None]
    out = np.clip(out * 255, 0, 255).astype(np.uint8)
    r = rng.random()
    if r < 0.25 * strength:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.6, 1.6))
    elif r < 0.4 * strength:  # horizontal motion blur, as on a moving belt
        k = int(rng.integers(3, 8))
        out = cv2.filter2D(out, -1, np.full((1, k), 1 / k, np.float32))
    noise = rng.normal(0, rng.uniform(1, 7) * strength, out.shape)
    return np.clip(out + noise, 0, 255).astype(np.uint8)


# --- scenes and datasets -----------------------------------------------------------------------------


def _overlap(
    box: tuple[float, float, float, float], others: list[tuple[float, float, float, float]]
) -> float:
    """Largest fraction of ``box``'s area covered by any one of ``others``."""
    x1, y1, x2, y2 = box
    area = max((x2 - x1) * (y2 - y1), 1.0)
    best = 0.0
    for a1, b1, a2, b2 in others:
        iw, ih = min(x2, a2) - max(x1, a1), min(y2, b2) - max(y1, b1)
        if iw > 0 and ih > 0:
            best = max(best, iw * ih / area)
    return best


def render_scene(
    rng: Rng, negative: bool = False, w: int = WIDTH, h: int = HEIGHT, scene: str = "mixed"
) -> Scene:
    """Render one still image: background, 1 to 8 products, an occasional hand, degradations.

    ``scene`` is a background of :data:`BACKGROUNDS`, or ``mixed`` for one drawn at random (the
    stream the demo model was trained on). A fixed scene draws its background from a generator of its
    own, so a given ``rng`` places the same products on every fixed background.
    """
    kind = str(rng.choice(BACKGROUNDS))
    if scene == "mixed":
        canvas = background(kind, rng, w, h)
    else:
        canvas = background(scene, np.random.default_rng(int(rng.integers(2**62))), w, h)
    placed: list[Placed] = []
    n = 0 if negative else int(rng.integers(1, 9))
    for _ in range(n * 4):  # bounded retries to find places with little overlap
        if len(placed) == n:
            break
        cls = int(rng.integers(len(CLASSES)))
        sprite = transform(render_product(cls, rng), rng.uniform(-180, 180), rng.uniform(0.6, 1.3))
        sh, sw = sprite.shape[:2]
        cx, cy = rng.uniform(sw * 0.3, w - sw * 0.3), rng.uniform(sh * 0.3, h - sh * 0.3)
        guess = (cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2)
        # Keep occlusion partial: the new sprite may cover at most 30% of an earlier one, and vice versa.
        if _overlap(guess, [p.box for p in placed]) > 0.3 or any(
            _overlap(p.box, [guess]) > 0.3 for p in placed
        ):
            continue
        box = paste(canvas, sprite, cx, cy)
        if box is not None and (box[2] - box[0]) >= 12 and (box[3] - box[1]) >= 12:
            placed.append(Placed(cls, box))
    if placed and rng.random() < 0.2:  # a hand over part of one product
        target = placed[int(rng.integers(len(placed)))].box
        hand = occluder(rng)
        paste(canvas, hand, target[2] + hand.shape[1] * 0.15, (target[1] + target[3]) / 2)
    return Scene(degrade(canvas, rng), tuple(placed))


def yolo_lines(objects: tuple[Placed, ...], w: int, h: int) -> list[str]:
    """YOLO label lines ``class cx cy w h`` (normalised) for the objects of an image."""
    lines = []
    for p in objects:
        x1, y1, x2, y2 = p.box
        cx, cy = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
        lines.append(f"{p.class_id} {cx:.6f} {cy:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return lines


def _splits(n: int, fractions: tuple[float, float, float]) -> Iterator[str]:
    n_train = round(n * fractions[0])
    n_val = round(n * fractions[1])
    for i in range(n):
        yield "train" if i < n_train else "val" if i < n_train + n_val else "test"


def _render_one(args: tuple[Path, int, int, float, str, str, bool]) -> list[int]:
    """Render and write image ``i``; returns its class ids (for the instance counts)."""
    out, seed, i, negatives, split, kind, photo = args
    rng = np.random.default_rng([seed, i])
    negative = rng.random() < negatives
    # The choice has a generator of its own: the classic images of a --photo dataset are the same bytes.
    if photo and np.random.default_rng([seed, i, 1]).random() < PHOTO_SHARE:
        from train.photoreal import load_kit, render_photo_scene

        scene = render_photo_scene(rng, load_kit(CLASSES), negative)
    else:
        scene = render_scene(rng, negative=negative, scene=kind)
    stem = f"{split}_{i:05d}"
    cv2.imwrite(str(out / "images" / split / f"{stem}.jpg"), scene.image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    lines = yolo_lines(scene.objects, WIDTH, HEIGHT)
    (out / "labels" / split / f"{stem}.txt").write_text("".join(f"{ln}\n" for ln in lines))
    return [p.class_id for p in scene.objects]


def write_dataset(
    out: Path,
    images: int,
    seed: int,
    negatives: float = 0.08,
    fractions: tuple[float, float, float] = (0.7, 0.2, 0.1),
    progress: bool = False,
    jobs: int = 1,
    scene: str = "mixed",
    photo: bool = False,
) -> Path:
    """Write a YOLO-format dataset (images/, labels/, data.yaml with train/val/test) and return data.yaml.

    Image ``i`` is rendered from ``default_rng([seed, i])``, so any image can be reproduced alone and
    the output does not depend on how many images are asked for, nor on ``jobs`` (processes).
    ``scene`` is ``conveyor``, ``shelf``, ``clutter`` or ``mixed`` (each image draws one). ``photo``
    draws about half the images with photographed fruit, real surfaces and camera artefacts
    (:mod:`train.photoreal`; ``scene`` then applies to the other half).

    Raises:
        ValueError: an unknown ``scene``.
        DatasetError: ``photo`` and the Debian packages it takes its photos from are missing.
    """
    if scene not in (*BACKGROUNDS, "mixed"):
        raise ValueError(f"scene must be one of {', '.join((*BACKGROUNDS, 'mixed'))}, got {scene!r}")
    if photo:
        from train.photoreal import load_kit

        load_kit(CLASSES)  # one line naming the missing package before any image is written
    out = Path(out)
    split_of = list(_splits(images, fractions))
    data_yaml = write_data_yaml(out, CLASSES)
    work = [(out, seed, i, negatives, split_of[i], scene, photo) for i in range(images)]
    counts = [0] * len(CLASSES)
    with _pool(jobs) as pool:
        results: Iterator[list[int]] = (
            pool.imap(_render_one, work, chunksize=8) if pool else map(_render_one, work)
        )
        if progress:
            from tqdm import tqdm

            results = iter(tqdm(results, total=images, desc="rendering", unit="img"))
        for class_ids in results:
            for c in class_ids:
                counts[c] += 1
    meta = {
        "generator": "lanecount synth",
        "seed": seed,
        "scene": scene,
        "photo": photo,
        "images": images,
        "instances": dict(zip(CLASSES, counts, strict=True)),
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    return data_yaml


@contextmanager
def _pool(jobs: int) -> Iterator[Any]:
    """A process pool when ``jobs`` > 1, else None (render in this process)."""
    if jobs <= 1:
        yield None
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        yield pool

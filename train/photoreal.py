"""Photographic material for the synthetic scenes: real fruit, real surfaces, a real camera's flaws.

Sprites drawn with OpenCV teach a detector shapes and colours, not what a photographed apple looks like;
the demo model trained on them alone found no fruit on real photos. This module mixes in things nobody
here made, all from Debian packages:

* **products**: photographed fruit cut out with an alpha channel, from Tux Paint's stamps
  (``tuxpaint-stamps-default``, GPL-2): 5 apples, 4 oranges (mandarin, Seville, a slice), a banana;
* **distractors**: other photographed fruit and vegetables (lemon, lime, kiwi, pear, tomato, ...)
  pasted *unlabelled*, so that "round and coloured" is not enough to be an apple or an orange;
* **surfaces**: crops of OpenCV's sample photos (``opencv-doc``: a desk, a wall, a board, ...) as
  backgrounds, never one of the photos of the real test set (:mod:`train.realset`);
* **camera**: drop shadows, colour jitter, a lower resolution, JPEG compression, and close-ups where
  one product fills much of the frame, as in hand-held photos.

:func:`train.synth.render_scene` uses it when given a :class:`PhotoKit` (``lanecount-train synth
--photo``; ``make demo-model``). Everything stays deterministic per image seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from train.layout import DatasetError

__all__ = [
    "BACKGROUND_PHOTOS",
    "DISTRACTOR_STAMPS",
    "PRODUCT_STAMPS",
    "STAMPS_DIR",
    "PhotoKit",
    "camera",
    "cast_shadow",
    "load_kit",
    "missing_sources",
    "photo_background",
    "stamp_sprite",
]

STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
PHOTOS_DIR = Path("/usr/share/doc/opencv-doc/examples/data")

# Class name → Tux Paint stamps (relative to STAMPS_DIR). A mandarin and a Seville orange are oranges
# to a shopper; so is a slice (the real test set labels one).
PRODUCT_STAMPS: dict[str, tuple[str, ...]] = {
    "apple": tuple(
        f"food/fruit/{n}.png"
        for n in ("apple_fuji", "apple_granny_smith", "apple_green", "apple_red", "apple_sierra_beauty")
    ),
    "orange": tuple(
        f"food/fruit/{n}.png" for n in ("orange", "mandarine", "orange_seville", "sliced_orange")
    ),
    "banana": ("food/fruit/banana.png",),
}
DISTRACTOR_STAMPS: tuple[str, ...] = (
    *(
        f"food/fruit/{n}.png"
        for n in (
            "lemon", "sliced_lime", "kiwi", "pear", "mango", "pomegranate",
            "avocado", "grapes", "strawberry", "Strawberry2", "Cherry_Stella", "raspberry", "cherimoya",
        )
    ),
    *(
        f"food/vegetables/{n}.png"
        for n in (
            "tomato", "onion", "potato", "carrot", "broccoli", "pepper", "yellowpepper", "garlic",
            "mushroom", "eggplant", "lettuce", "redlettuce", "pumpkin_small", "yam", "pattypan_squash",
        )
    ),
)  # fmt: skip
# OpenCV sample photos used as surfaces; none of them is in the real test set (train/realset.py).
BACKGROUND_PHOTOS: tuple[str, ...] = (
    "stuff.jpg", "board.jpg", "building.jpg", "home.jpg", "baboon.jpg", "aloeL.jpg", "leuvenA.jpg",
    "graf1.png", "messi5.jpg", "butterfly.jpg", "starry_night.jpg", "blox.jpg", "pic3.png", "sudoku.png",
)  # fmt: skip


@dataclass(frozen=True)
class PhotoKit:
    """Loaded material: BGRA product stamps per class id, BGRA distractors, BGR surfaces."""

    products: dict[int, tuple[np.ndarray, ...]]
    distractors: tuple[np.ndarray, ...]
    surfaces: tuple[np.ndarray, ...]


def missing_sources(stamps: Path = STAMPS_DIR, photos: Path = PHOTOS_DIR) -> list[Path]:
    """The product stamps that are not on this machine (empty when :func:`load_kit` can work)."""
    wanted = [stamps / p for names in PRODUCT_STAMPS.values() for p in names]
    return [p for p in wanted if not p.is_file()] + ([photos] if not photos.is_dir() else [])


def _read_bgra(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"{path}: cannot read image")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGRA)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    ys, xs = np.nonzero(img[..., 3] > 127)
    if len(xs) == 0:
        raise DatasetError(f"{path}: the stamp is fully transparent")
    return np.ascontiguousarray(img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


@lru_cache(maxsize=4)
def load_kit(classes: tuple[str, ...], stamps: Path = STAMPS_DIR, photos: Path = PHOTOS_DIR) -> PhotoKit:
    """Load the stamps and photos once per process (cached).

    Raises:
        DatasetError: a product stamp is missing (``apt-get install tuxpaint-stamps-default``) or the
            OpenCV sample photos are (``apt-get install opencv-doc``).
    """
    missing = missing_sources(stamps, photos)
    if missing:
        package = "opencv-doc" if missing[0] == photos else "tuxpaint-stamps-default"
        raise DatasetError(f"{missing[0]}: not found (install Debian's {package} package)")
    products = {
        classes.index(name): tuple(_read_bgra(stamps / p) for p in names)
        for name, names in PRODUCT_STAMPS.items()
        if name in classes
    }
    distractors = tuple(_read_bgra(stamps / p) for p in DISTRACTOR_STAMPS if (stamps / p).is_file())
    surfaces = tuple(
        img for p in BACKGROUND_PHOTOS if (img := cv2.imread(str(photos / p), cv2.IMREAD_COLOR)) is not None
    )
    return PhotoKit(products, distractors, surfaces)


def _jitter_hsv(bgr: np.ndarray, rng: np.random.Generator, hue: float = 6.0) -> np.ndarray:
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-hue, hue)) % 180
    hsv[..., 1] *= rng.uniform(0.75, 1.25)
    hsv[..., 2] *= rng.uniform(0.7, 1.25)
    return cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)


def stamp_sprite(stamp: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """A photographed stamp resized so its longer side is ``size`` px, flipped and colour-jittered."""
    h, w = stamp.shape[:2]
    s = size / max(h, w)
    out = cv2.resize(stamp, (max(2, round(w * s)), max(2, round(h * s))), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = np.ascontiguousarray(out)
    out[..., :3] = _jitter_hsv(out[..., :3], rng)
    return out


def cast_shadow(
    canvas: np.ndarray, sprite: np.ndarray, cx: float, cy: float, rng: np.random.Generator
) -> None:
    """Darken ``canvas`` under a soft, offset copy of the sprite's outline (before pasting the sprite).

    The shadow is background, not object: the label box stays the sprite's own (see ``paste``).
    """
    h, w = sprite.shape[:2]
    pad = max(4, int(0.15 * max(h, w)))
    mask = np.zeros((h + 2 * pad, w + 2 * pad), np.float32)
    dx, dy = (int(v) for v in rng.integers(-pad // 2, pad // 2 + 1, 2))
    mask[pad + dy : pad + dy + h, pad + dx : pad + dx + w] = sprite[..., 3] / 255.0
    mask = cv2.GaussianBlur(mask, (0, 0), pad / 2.5) * rng.uniform(0.25, 0.55)
    x0, y0 = round(cx - w / 2) - pad, round(cy - h / 2) - pad
    H, W = canvas.shape[:2]
    ax0, ay0 = max(x0, 0), max(y0, 0)
    ax1, ay1 = min(x0 + mask.shape[1], W), min(y0 + mask.shape[0], H)
    if ax0 >= ax1 or ay0 >= ay1:
        return
    m = mask[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0, None]
    canvas[ay0:ay1, ax0:ax1] = (canvas[ay0:ay1, ax0:ax1] * (1 - m)).astype(np.uint8)


def photo_background(kit: PhotoKit, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A random crop of a real surface photo, scaled to ``w`` x ``h``, flipped and colour-jittered."""
    photo = kit.surfaces[int(rng.integers(len(kit.surfaces)))]
    ph, pw = photo.shape[:2]
    frac = rng.uniform(0.4, 1.0)
    cw = max(16, int(min(pw, ph * w / h) * frac))
    ch = max(16, int(cw * h / w))
    x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    out = cv2.resize(photo[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return _jitter_hsv(np.ascontiguousarray(out), rng, hue=12.0)


def camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cheaper camera: sometimes a lower resolution, usually JPEG compression at 25 to 90."""
    h, w = img.shape[:2]
    if rng.random() < 0.3:
        s = rng.uniform(0.35, 0.7)
        small = cv2.resize(img, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.7:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 91))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


# --- scenes ----------------------------------------------------------------------------------------------


def _size_for(name: str, closeup: bool, rng: np.random.Generator) -> float:
    """Longer side in pixels of a product sprite, like the procedural ones (or a close-up)."""
    if closeup:
        return float(rng.uniform(180, 430))
    return float(rng.uniform(100, 175) if name == "banana" else rng.uniform(48, 112))


def render_photo_scene(
    rng: np.random.Generator, kit: PhotoKit, negative: bool = False, w: int = 640, h: int = 480
) -> Any:
    """One image with photographed fruit, unlabelled distractors, a real or drawn surface, a camera.

    Products of classes without stamps (cartons, cans, boxes) are drawn as in
    :func:`train.synth.render_scene`. Returns a :class:`train.synth.Scene`.
    """
    from train.synth import (
        BACKGROUNDS,
        CLASSES,
        Placed,
        Scene,
        _overlap,
        background,
        degrade,
        occluder,
        paste,
        render_product,
        transform,
    )

    if rng.random() < 0.55:
        canvas = photo_background(kit, rng, w, h)
    else:
        canvas = background(str(rng.choice(BACKGROUNDS)), rng, w, h)
    closeup = not negative and rng.random() < 0.2
    for _ in range(int(rng.integers(0, 4))):  # unlabelled look-alikes first: products may cover them
        stamp = kit.distractors[int(rng.integers(len(kit.distractors)))]
        sprite = transform(stamp_sprite(stamp, float(rng.uniform(40, 140)), rng), rng.uniform(-180, 180), 1.0)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.6:
            cast_shadow(canvas, sprite, cx, cy, rng)
        paste(canvas, sprite, cx, cy)
    placed: list[Placed] = []
    n = 0 if negative else int(rng.integers(1, 3) if closeup else rng.integers(1, 9))
    for _ in range(n * 4):
        if len(placed) == n:
            break
        cls = int(rng.integers(len(CLASSES)))
        stamps = kit.products.get(cls)
        if stamps and rng.random() < 0.75:
            stamp = stamps[int(rng.integers(len(stamps)))]
            sprite = stamp_sprite(stamp, _size_for(CLASSES[cls], closeup, rng), rng)
            sprite = transform(sprite, rng.uniform(-180, 180), 1.0)
        else:
            drawn = render_product(cls, rng)
            scale = (
                _size_for(CLASSES[cls], closeup, rng) / max(drawn.shape[:2])
                if closeup
                else rng.uniform(0.6, 1.3)
            )
            sprite = transform(drawn, rng.uniform(-180, 180), scale)
        sh, sw = sprite.shape[:2]
        margin = 0.15 if closeup else 0.3  # a close-up may run off the frame, as in hand-held photos
        cx = rng.uniform(min(sw * margin, w / 2), max(w - sw * margin, w / 2))
        cy = rng.uniform(min(sh * margin, h / 2), max(h - sh * margin, h / 2))
        guess = (cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2)
        boxes = [p.box for p in placed]
        if _overlap(guess, boxes) > 0.3 or any(_overlap(b, [guess]) > 0.3 for b in boxes):
            continue
        if rng.random() < 0.6:
            cast_shadow(canvas, sprite, cx, cy, rng)
        box = paste(canvas, sprite, cx, cy)
        if box is not None and (box[2] - box[0]) >= 12 and (box[3] - box[1]) >= 12:
            placed.append(Placed(cls, box))
    if placed and rng.random() < 0.15:
        target = placed[int(rng.integers(len(placed)))].box
        hand = occluder(rng)
        paste(canvas, hand, target[2] + hand.shape[1] * 0.15, (target[1] + target[3]) / 2)
    return Scene(camera(degrade(canvas, rng), rng), tuple(placed))

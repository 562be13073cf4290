"""A seeded bank of conveyor scenes: noisy detections per frame and the true line crossings.

Each scene is a :func:`train.synth_video.plan` of products riding across the belt (stop-and-go on the
line, pull-backs, close pairs, a hand hiding a product near the line). The true boxes are the tight
boxes the video would show (those :func:`train.synth.paste` returns, computed without drawing), and
the true crossings are :func:`train.synth_video.crossings_from_boxes` of them. A detector is modelled on
those boxes, so a scene of a minute builds in a fraction of a second:

* ``drop``: each true box is missed with this probability (independently);
* ``jitter``: each box edge moves by a normal error of this fraction of the box's width or height;
* ``false_positives``: false boxes per true box per frame, half of them a partial duplicate of a
  product (shifted, resized, own class), half belt clutter; each lasts 1 to 3 frames, moving with the belt;
* ``wrong_class``: the share of detections with a wrong class. Errors come in short runs (mean
  ``wrong_run`` frames), mostly to one look-alike class per product, as a detector confuses a product
  seen at an angle for a few frames in a row rather than at random;
* occlusion: a hand hides the ``occluded`` products for 4 to 8 frames near the line (from the plan), and
  ``gaps`` of the other products vanish for ``gap_frames`` frames somewhere along their way.

:class:`Motion` sets how the camera sees the belt. The default is the plan as it is (15 fps, 7 px per
frame). :meth:`Motion.fast` is a *fast belt*: half the frame rate and a belt 1.4 to 4.3 times faster,
drawn per scene, so products move 10 to 30 px between frames; the hand hides a product for 6 to 15
frames. Time is stretched uniformly within a scene, so the plan's products still never collide. With
:meth:`NoiseModel.fast` (12 % dropped, 10 % false boxes, 25 % wrong classes, gaps of 6 to 15 frames on
a quarter of the products) it is the held-out set of the issue "counts that hold, part 2", rebuilt
from our own generator and seeds.

Confidences: true detections ~ Beta(6, 2), wrong-class ones ~ Beta(5, 3) (a confused detector is
less sure), false ones uniform in [0.25, 0.7]; all are at least 0.25, the detector's threshold.
Everything is drawn from ``numpy.random.default_rng([seed, scene])``: a scene is a pure function of
its seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from edge.config import LineConfig
from edge.detections import Detections
from train.countscore import CountEvent
from train.synth import CLASSES, HEIGHT, WIDTH
from train.synth_video import FPS, LINE, SPEED, Product, crossings_from_boxes, plan

__all__ = ["PRESETS", "Motion", "NoiseModel", "Scene", "bank", "make_scene"]

Box = tuple[float, float, float, float]
MIN_CONFIDENCE = 0.25


@dataclass(frozen=True)
class NoiseModel:
    """The detector's mistakes (see the module docstring)."""

    drop: float = 0.05
    jitter: float = 0.02
    false_positives: float = 0.05
    wrong_class: float = 0.12
    wrong_run: float = 2.0
    look_alike: float = 0.7  # share of wrong classes that are the product's look-alike
    gaps: float = 0.15
    gap_frames: tuple[int, int] = (3, 9)  # [low, high) frames

    @classmethod
    def hard(cls) -> NoiseModel:
        """Twice the mistakes, longer class-error runs and gaps: a stress test for choosing settings."""
        return cls(
            drop=0.10,
            jitter=0.04,
            false_positives=0.10,
            wrong_class=0.2,
            wrong_run=3,
            gaps=0.3,
            gap_frames=(4, 13),
        )

    @classmethod
    def fast(cls) -> NoiseModel:
        """A weak detector on a fast belt: 12 % dropped, 10 % false boxes, 25 % wrong classes, long gaps."""
        return cls(
            drop=0.12,
            jitter=0.03,
            false_positives=0.10,
            wrong_class=0.25,
            wrong_run=3,
            gaps=0.25,
            gap_frames=(6, 16),
        )


@dataclass(frozen=True)
class Motion:
    """How the camera samples the planned motion (see the module docstring)."""

    fps: float = FPS
    speed: tuple[float, float] = (SPEED, SPEED)  # belt px per frame, drawn per scene in [low, high]
    hand_frames: tuple[int, int] | None = None  # [low, high) frames a hand hides a product; None: the plan's
    salt: tuple[int, ...] = ()  # appended to the seed, so a preset's scenes differ from the bank's

    @classmethod
    def fast(cls) -> Motion:
        """Half the frame rate, products moving 10 to 30 px per frame, hands hiding 6 to 15 frames."""
        return cls(fps=FPS / 2, speed=(10.0, 30.0), hand_frames=(6, 16), salt=(0xFA57,))

    @property
    def is_plan(self) -> bool:
        """True when frames are the plan's own (no resampling)."""
        return self.speed == (SPEED, SPEED) and self.hand_frames is None


@dataclass(frozen=True)
class Scene:
    """One scene of the bank."""

    seed: tuple[int, int]
    detections: tuple[Detections, ...]  # per frame, from frame 0
    origins: tuple[np.ndarray, ...]  # per frame and detection: the product's id, or -1 for a false box
    classes: dict[int, int]  # product id → true class
    truth: tuple[CountEvent, ...]
    truth_objects: tuple[int, ...]  # per true crossing: the product's id
    line: LineConfig
    fps: float
    products: int
    true_boxes: int

    @property
    def lines(self) -> tuple[LineConfig, ...]:
        """The counting lines (one here; real footage has several)."""
        return (self.line,)

    @property
    def names(self) -> tuple[str, ...]:
        """Class names by id."""
        return CLASSES

    @property
    def size(self) -> tuple[int, int]:
        """Frame width and height."""
        return WIDTH, HEIGHT


PRESETS: dict[str, tuple[NoiseModel, Motion]] = {
    "bank": (NoiseModel(), Motion()),
    "hard": (NoiseModel.hard(), Motion()),
    "fast": (NoiseModel.fast(), Motion.fast()),
}


def bank(
    seed: int = 0,
    scenes: int = 12,
    seconds: float = 60.0,
    noise: NoiseModel | None = None,
    motion: Motion | None = None,
) -> list[Scene]:
    """The bank: ``scenes`` scenes of ``seconds`` (of planned belt time) each, drawn from ``seed``."""
    return [make_scene(seed, i, seconds, noise, motion) for i in range(scenes)]


def preset(name: str, seed: int = 0, scenes: int = 12, seconds: float = 60.0) -> list[Scene]:
    """The bank of one of :data:`PRESETS` (``bank``, ``hard``, ``fast``)."""
    noise, motion = PRESETS[name]
    return bank(seed, scenes, seconds, noise, motion)


def make_scene(
    seed: int,
    index: int,
    seconds: float = 60.0,
    noise: NoiseModel | None = None,
    motion: Motion | None = None,
) -> Scene:
    """Build scene ``index`` of the bank drawn from ``seed``."""
    noise, motion = noise or NoiseModel(), motion or Motion()
    rng = np.random.default_rng([seed, index, *motion.salt])
    plan_frames = round(seconds * FPS)
    products = plan(plan_frames, rng)
    step = 1.0
    if not motion.is_plan:
        step = float(rng.uniform(*motion.speed)) / SPEED  # plan frames per camera frame
        products = [_resample(p, step, motion, rng) for p in products]
    frames = int((plan_frames - 1) / step) + 1
    boxes = _true_boxes(products)
    line = LineConfig.model_validate(LINE)
    line_x = line.start[0]  # the plan's line is vertical
    by_id = {p.pid: p for p in products}
    crossings = crossings_from_boxes({pid: sorted(seq.items()) for pid, seq in boxes.items()}, line_x)
    truth = tuple(
        CountEvent(frame, line.name, direction, by_id[pid].class_id) for frame, pid, direction in crossings
    )
    hidden = _hidden_frames(products, noise, rng)
    wrong = {p.pid: _wrong_classes(p, boxes[p.pid], noise, rng) for p in products}
    per_frame: list[list[tuple[Box, float, int, int]]] = [[] for _ in range(frames)]
    for p in products:
        for f, box in boxes[p.pid].items():
            if f in hidden[p.pid] or rng.random() < noise.drop:
                continue
            cls = wrong[p.pid].get(f, p.class_id)
            conf = rng.beta(5, 3) if cls != p.class_id else rng.beta(6, 2)
            per_frame[f].append((_jitter(box, noise.jitter, rng), float(conf), cls, p.pid))
    _add_false_positives(per_frame, boxes, noise, rng, SPEED * step)
    shuffled = [_detections(rows, rng) for rows in per_frame]
    return Scene(
        seed=(seed, index),
        detections=tuple(d for d, _ in shuffled),
        origins=tuple(o for _, o in shuffled),
        classes={p.pid: p.class_id for p in products},
        truth=truth,
        truth_objects=tuple(pid for _, pid, _ in crossings),
        line=line,
        fps=motion.fps,
        products=len(products),
        true_boxes=sum(len(b) for b in boxes.values()),
    )


def _resample(p: Product, step: float, motion: Motion, rng: np.random.Generator) -> Product:
    """``p`` as a camera taking one frame every ``step`` plan frames sees it (same scene clock for all)."""
    first = int(np.ceil(p.start / step))
    last = int(np.floor((p.start + len(p.xs) - 1) / step))
    t = np.arange(first, last + 1) * step - p.start  # plan time since the product's start
    xs = np.interp(t, np.arange(len(p.xs)), p.xs).astype(np.float32)
    hand = None
    if p.hand:
        a = int(np.ceil(p.hand[0] / step))
        if motion.hand_frames:
            hand = (a, a + int(rng.integers(*motion.hand_frames)))
        else:
            hand = (a, a + max(round((p.hand[1] - p.hand[0]) / step), 1))
    return dataclasses.replace(p, start=first, xs=xs, hand=hand, boxes={})


def _true_boxes(products: list[Product]) -> dict[int, dict[int, Box]]:
    """The tight visible box of every product in every frame it is in the picture."""
    out: dict[int, dict[int, Box]] = {}
    for p in products:
        seq = out[p.pid] = {}
        mask = p.sprite[..., 3] > 127
        for i, x in enumerate(p.xs.tolist()):
            box = _visible_box(mask, x, p.cy)
            if box is not None:
                seq[p.start + i] = box
    return out


def _visible_box(mask: np.ndarray, cx: float, cy: float) -> Box | None:
    """The box :func:`train.synth.paste` returns for a sprite with this opaque ``mask``, without drawing."""
    h, w = mask.shape
    x0, y0 = round(cx - w / 2), round(cy - h / 2)
    ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + w, WIDTH), min(y0 + h, HEIGHT)
    if ax0 >= ax1 or ay0 >= ay1:
        return None
    crop = mask[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0]
    cols, rows = np.flatnonzero(crop.any(axis=0)), np.flatnonzero(crop.any(axis=1))
    if not len(cols):
        return None
    return float(ax0 + cols[0]), float(ay0 + rows[0]), float(ax0 + cols[-1] + 1), float(ay0 + rows[-1] + 1)


def _hidden_frames(
    products: list[Product], noise: NoiseModel, rng: np.random.Generator
) -> dict[int, set[int]]:
    """Frames in which each product is hidden: the plan's hand, or a random gap."""
    out: dict[int, set[int]] = {}
    for p in products:
        hidden = out[p.pid] = set(range(*p.hand)) if p.hand else set()
        if not hidden and rng.random() < noise.gaps:
            length = int(rng.integers(*noise.gap_frames))
            first = p.start + int(rng.integers(0, max(len(p.xs) - length, 1)))
            hidden.update(range(first, first + length))
    return out


def _wrong_classes(
    p: Product, frames: dict[int, Box], noise: NoiseModel, rng: np.random.Generator
) -> dict[int, int]:
    """Frames in which the detector names another class, and which: runs of a two-state Markov chain."""
    others = [c for c in range(len(CLASSES)) if c != p.class_id]
    look_alike = others[int(rng.integers(len(others)))]
    leave = 1.0 / noise.wrong_run
    enter = noise.wrong_class * leave / (1.0 - noise.wrong_class)  # stationary share = wrong_class
    out: dict[int, int] = {}
    wrong = rng.random() < noise.wrong_class
    for f in sorted(frames):
        if wrong:
            out[f] = look_alike if rng.random() < noise.look_alike else others[int(rng.integers(len(others)))]
        wrong = rng.random() >= leave if wrong else rng.random() < enter
    return out


def _jitter(box: Box, amount: float, rng: np.random.Generator) -> Box:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    e = rng.normal(0.0, amount, 4) * np.array([w, h, w, h])
    return (x1 + e[0], y1 + e[1], max(x2 + e[2], x1 + e[0] + 1), max(y2 + e[3], y1 + e[1] + 1))


def _add_false_positives(
    per_frame: list[list[tuple[Box, float, int, int]]],
    boxes: dict[int, dict[int, Box]],
    noise: NoiseModel,
    rng: np.random.Generator,
    speed: float = SPEED,
) -> None:
    """False boxes: partial duplicates of products and belt clutter, 1 to 3 frames each."""
    on_screen: list[list[Box]] = [[] for _ in per_frame]
    for seq in boxes.values():
        for f, box in seq.items():
            on_screen[f].append(box)
    for f, present in enumerate(on_screen):
        for _ in range(int(rng.poisson(noise.false_positives * max(len(present), 1) / 2))):
            length = int(rng.integers(1, 4))
            cls = int(rng.integers(len(CLASSES)))
            if present and rng.random() < 0.5:
                x1, y1, x2, y2 = present[int(rng.integers(len(present)))]
                w, h = x2 - x1, y2 - y1
                dx, dy = rng.uniform(-0.35, 0.35) * w, rng.uniform(-0.35, 0.35) * h
                s = rng.uniform(0.6, 1.1)
                cx, cy = (x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy
                w, h = w * s, h * s
            else:
                w, h = rng.uniform(40, 110, 2)
                cx, cy = rng.uniform(0, WIDTH), rng.uniform(h / 2, HEIGHT - h / 2)
            for k in range(length):
                if f + k >= len(per_frame):
                    break
                x = cx + k * speed
                box = (x - w / 2, cy - h / 2, x + w / 2, cy + h / 2)
                per_frame[f + k].append((box, float(rng.uniform(MIN_CONFIDENCE, 0.7)), cls, -1))


def _detections(
    rows: list[tuple[Box, float, int, int]], rng: np.random.Generator
) -> tuple[Detections, np.ndarray]:
    """One frame's detections in random order (a detector does not list the false ones last), and origins."""
    if not rows:
        return Detections.empty(), np.zeros(0, np.int64)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    xyxy = np.array([r[0] for r in rows], np.float32)
    conf = np.maximum(np.array([r[1] for r in rows], np.float32), MIN_CONFIDENCE)
    dets = Detections(xyxy, conf, np.array([r[2] for r in rows], np.int64))
    return dets, np.array([r[3] for r in rows], np.int64)

"""The synthetic data generators: determinism, tight labels, and the video's crossing ground truth."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from train import synth
from train.cli import app
from train.synth_video import render_video


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.suffix in (".jpg", ".txt")
    }


def _by_index(root: Path) -> dict[int, tuple[bytes, bytes]]:
    """Image index → (jpg bytes, label bytes); the split in the name depends on N, the index does not."""
    out = {}
    for img in (root / "images").rglob("*.jpg"):
        label = root / "labels" / img.parent.name / f"{img.stem}.txt"
        out[int(img.stem.rsplit("_", 1)[1])] = (img.read_bytes(), label.read_bytes())
    return out


def test_same_seed_gives_identical_bytes_and_image_i_ignores_n(tmp_path: Path) -> None:
    synth.write_dataset(tmp_path / "a", 5, seed=3)
    synth.write_dataset(tmp_path / "b", 5, seed=3)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    synth.write_dataset(tmp_path / "c", 7, seed=3)
    a, c = _by_index(tmp_path / "a"), _by_index(tmp_path / "c")
    assert all(a[i] == c[i] for i in a)
    synth.write_dataset(tmp_path / "d", 5, seed=4)
    assert _by_index(tmp_path / "d")[0] != a[0]


def _alpha_box(
    sprite: np.ndarray, cx: float, cy: float, shape: tuple[int, int]
) -> tuple[tuple[float, ...], tuple]:
    """Paste on black and on white and recover the alpha the renderer used from the two renders.

    black: s*a, white: s*a + 255*(1-a)  ⇒  a = 1 - (white - black) / 255. The box of a > 0.5 is the
    object's true extent, computed from pixels, independently of paste()'s own box.
    """
    black = np.zeros((*shape, 3), np.uint8)
    white = np.full((*shape, 3), 255, np.uint8)
    box = synth.paste(black, sprite, cx, cy)
    assert synth.paste(white, sprite, cx, cy) == box
    alpha = 1 - (white.astype(np.float32) - black).max(axis=2) / 255
    ys, xs = np.nonzero(alpha > 0.5)
    return box, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.parametrize("class_id", range(len(synth.CLASSES)), ids=list(synth.CLASSES))
@pytest.mark.parametrize(
    ("angle", "cx", "cy"),
    [
        pytest.param(0.0, 160, 120, id="upright"),
        pytest.param(37.0, 150, 110, id="rotated"),
        pytest.param(-70.0, 10, 230, id="clipped"),
    ],
)
def test_label_box_is_tight_around_the_rendered_object(
    class_id: int, angle: float, cx: float, cy: float
) -> None:
    rng = np.random.default_rng([11, class_id])
    sprite = synth.transform(synth.render_product(class_id, rng), angle, 0.9)
    box, truth = _alpha_box(sprite, cx, cy, (240, 320))
    assert box is not None
    assert np.allclose(box, truth, atol=1.0), (box, truth)
    # The YOLO line of that box maps back to the same pixels.
    line = synth.yolo_lines((synth.Placed(class_id, box),), 320, 240)[0].split()
    assert int(line[0]) == class_id
    x, y, w, h = (float(v) for v in line[1:])
    assert np.allclose(
        [(x - w / 2) * 320, (y - h / 2) * 240, (x + w / 2) * 320, (y + h / 2) * 240], box, atol=0.01
    )


def test_scene_boxes_lie_inside_the_image_and_do_not_overlap_much() -> None:
    scene = synth.render_scene(np.random.default_rng([5, 0]))
    assert scene.image.shape == (synth.HEIGHT, synth.WIDTH, 3)
    assert 1 <= len(scene.objects) <= 8
    for p in scene.objects:
        x1, y1, x2, y2 = p.box
        assert 0 <= x1 < x2 <= synth.WIDTH and 0 <= y1 < y2 <= synth.HEIGHT
        assert x2 - x1 >= 12 and y2 - y1 >= 12


# --- video ground truth ------------------------------------------------------------------------------


def _independent_crossings(gt: Path, line: dict) -> dict[str, Counter[str]]:
    """Crossings recomputed from gt.txt alone: the side of each box's bottom-centre, by cross product."""
    (sx, sy), (ex, ey) = line["start"], line["end"]
    tracks: dict[int, list[tuple[int, float, float, int]]] = defaultdict(list)
    for row in gt.read_text().split():
        frame, tid, left, top, w, h, _, cls, _ = row.split(",")
        bx, by = float(left) + float(w) / 2, float(top) + float(h)
        tracks[int(tid)].append((int(frame), bx, by, int(cls)))
    counts: dict[str, Counter[str]] = {"in": Counter(), "out": Counter()}
    for rows in tracks.values():
        last = 0
        for _, bx, by, cls in sorted(rows):
            side = int(np.sign((ex - sx) * (by - sy) - (ey - sy) * (bx - sx)))
            if side and last and side != last:
                # start→end points up the image, so a positive cross product is right of the line;
                # arriving there from the left (the belt's direction) is "in".
                counts["in" if side > 0 else "out"][synth.CLASSES[cls]] += 1
            last = side or last
    return counts


@pytest.mark.slow
def test_video_crossings_match_an_independent_count_from_gt(tmp_path: Path) -> None:
    # Seed 7 plans a pullback, a stop on the line and a pair within 12 s (seed 1 has only plain passes).
    summary = render_video(tmp_path, 12, seed=7)
    truth = json.loads((tmp_path / "crossings.json").read_text())
    assert truth["lines"] == summary["lines"]
    assert truth["kinds"]["pullback"] >= 1 and truth["kinds"]["stop"] >= 1
    line = truth["line"]
    assert line["start"][0] == line["end"][0] == 320
    mine = _independent_crossings(tmp_path / "gt.txt", line)
    assert {d: dict(c) for d, c in mine.items()} == truth["lines"][line["name"]]
    assert sum(mine["out"].values()) >= 1  # the pullback's way back
    assert sum(mine["in"].values()) - sum(mine["out"].values()) == truth["products"]  # each ends up across
    assert (tmp_path / "video.mp4").stat().st_size > 10_000


def test_cli_synth_of_20_images_is_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--images", "20", "--seed", "0"])
    elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert f"data.yaml: {tmp_path / 'data.yaml'}" in result.stdout
    assert len(list((tmp_path / "images").rglob("*.jpg"))) == 20
    meta = json.loads((tmp_path / "synth.json").read_text())
    shown = dict(kv.split("=") for kv in result.stdout.split("instances: ")[1].strip().split(", "))
    assert {k: int(v) for k, v in shown.items()} == meta["instances"]
    labelled = sum(len(p.read_text().splitlines()) for p in (tmp_path / "labels").rglob("*.txt"))
    assert labelled == sum(meta["instances"].values())
    assert elapsed < 30, f"20 images took {elapsed:.1f} s"


def test_scene_picks_the_background_and_keeps_the_products(tmp_path: Path) -> None:
    shelf = synth.write_dataset(tmp_path / "shelf", 6, seed=4, scene="shelf").parent
    belt = synth.write_dataset(tmp_path / "belt", 6, seed=4, scene="conveyor").parent
    a, b = _by_index(shelf), _by_index(belt)
    assert all(a[i][1] == b[i][1] for i in a)  # the same products in the same places...
    assert all(a[i][0] != b[i][0] for i in a)  # ...on another background
    assert json.loads((shelf / "synth.json").read_text())["scene"] == "shelf"
    res = CliRunner().invoke(
        app, ["synth", "--out", str(tmp_path / "x"), "--images", "1", "--scene", "beach"]
    )
    assert res.exit_code == 2 and "expected conveyor, shelf, clutter or mixed" in res.output


# --- photographic scenes (train/photoreal.py) ------------------------------------------------------------

needs_stamps = pytest.mark.skipif(
    bool(__import__("train.photoreal", fromlist=["missing_sources"]).missing_sources()),
    reason="Debian's tuxpaint-stamps-default and opencv-doc are not installed (make system-deps)",
)


@needs_stamps
def test_photo_scenes_are_deterministic_and_leave_the_classic_ones_alone(tmp_path: Path) -> None:
    synth.write_dataset(tmp_path / "a", 8, seed=3, photo=True)
    synth.write_dataset(tmp_path / "b", 8, seed=3, photo=True, jobs=2)
    synth.write_dataset(tmp_path / "c", 8, seed=3)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b  # same seed, any number of processes: the same bytes
    assert a != c and json.loads((tmp_path / "a" / "synth.json").read_text())["photo"] is True
    # image i is either drawn exactly as without --photo, or a photographic scene
    same = [k for k in a if k.startswith("images") and a[k] == c.get(k)]
    assert 0 < len(same) < 8


@needs_stamps
def test_photographed_fruit_is_labelled_tightly_and_look_alikes_are_not_labelled() -> None:
    from train.photoreal import load_kit, stamp_sprite

    kit = load_kit(synth.CLASSES)
    assert set(kit.products) == {0, 1, 2} and len(kit.distractors) >= 20 and len(kit.surfaces) >= 10
    for cls, stamps in kit.products.items():
        sprite = synth.transform(stamp_sprite(stamps[0], 90, np.random.default_rng(cls)), 33.0, 1.0)
        box, truth = _alpha_box(sprite, 150, 110, (240, 320))
        assert np.allclose(box, truth, atol=1.0), (synth.CLASSES[cls], box, truth)
    from train.photoreal import render_photo_scene

    labelled = [render_photo_scene(np.random.default_rng([1, i]), kit) for i in range(6)]
    assert all(1 <= len(s.objects) <= 8 for s in labelled)
    empty = render_photo_scene(np.random.default_rng([1, 0]), kit, negative=True)
    assert empty.objects == () and empty.image.shape == (synth.HEIGHT, synth.WIDTH, 3)


def test_photo_scenes_without_the_stamps_are_one_line(tmp_path: Path) -> None:
    from train.layout import DatasetError
    from train.photoreal import load_kit

    with pytest.raises(DatasetError, match=r"apple_fuji.png: not found \(install Debian's tuxpaint-stamps"):
        load_kit(synth.CLASSES, stamps=tmp_path)

"""The small real test set (package photos, hand labels) and the demo model's numbers on it."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import pytest

from edge.model import DEFAULT_MODEL
from train.dataset import check
from train.layout import DatasetError
from train.realset import DEBIAN_DIR, LABELS_DIR, PHOTOS, build_real_test_set, missing_photos

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "edge" / "models" / "MODEL_CARD.md"

needs_photos = pytest.mark.skipif(
    bool(missing_photos()),
    reason=f"Debian's opencv-doc photos are not in {DEBIAN_DIR} (apt-get install opencv-doc)",
)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The set, built once (the scikit-image photo comes through pip: skipped where it cannot)."""
    if missing_photos():
        pytest.skip(f"Debian's opencv-doc photos are not in {DEBIAN_DIR} (apt-get install opencv-doc)")
    try:
        return build_real_test_set(tmp_path_factory.mktemp("real") / "real")
    except DatasetError as exc:
        if "pip download" not in str(exc):
            raise
        pytest.skip(f"the scikit-image photo cannot be had here: {exc}")


def test_every_photo_has_hand_labels() -> None:
    assert sorted(p.stem for p in LABELS_DIR.glob("*.txt")) == sorted(p.stem for p in PHOTOS)


def test_the_real_set_is_a_clean_dataset(real: Path) -> None:
    report = check(real.parent, plots=False)
    assert report.errors == []
    assert report.counts["test"] == {"images": 7, "labels": 7, "negatives": 2, "instances": 9}
    assert {k: v for k, v in report.class_counts.items() if v} == {
        "apple": 1,
        "orange": 3,
        "banana": 2,
        "cereal_box": 3,
    }


def test_every_label_lies_inside_its_photo(real: Path) -> None:
    for photo in PHOTOS:
        img = cv2.imread(str(real.parent / "images" / "test" / f"{photo.stem}{photo.suffix}"))
        assert img is not None, photo.stem
        for line in (LABELS_DIR / f"{photo.stem}.txt").read_text().splitlines():
            _, cx, cy, w, h = (float(v) for v in line.split())
            edges = (cx - w / 2, cy - h / 2, 1 - (cx + w / 2), 1 - (cy + h / 2))  # distances to the sides
            assert min(edges) > -1e-4 and w > 0 and h > 0, (photo.stem, line)


@needs_photos
def test_a_changed_debian_photo_is_refused(tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "debian"
    src.mkdir()
    for photo in PHOTOS:
        if not photo.wheel_member:
            shutil.copy2(DEBIAN_DIR / photo.file, src / photo.file)
    (src / "apple.jpg").write_bytes((src / "apple.jpg").read_bytes() + b"x")
    with pytest.raises(DatasetError, match=r"apple.jpg: not the photo that was labelled \(sha256 differs\)"):
        build_real_test_set(tmp_path / "real", source=src)


def test_a_missing_photo_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"fruits.jpg: photo not found \(install Debian's opencv-doc"):
        build_real_test_set(tmp_path / "real", source=tmp_path)


@pytest.mark.slow
def test_the_model_card_reports_what_eval_measures(real: Path, tmp_path: Path) -> None:
    from train.evaluate import evaluate

    result = evaluate(DEFAULT_MODEL, real, split="test", imgsz=320, device="cpu", out_dir=tmp_path / "eval")
    row = next(ln for ln in CARD.read_text().splitlines() if ln.startswith("| this model | real photos"))
    cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
    images, objects, map50, map50_95, precision, recall = cells[3:9]
    assert (int(images), int(objects)) == (7, sum(c.instances for c in result.classes))
    measured = [result.map50, result.map50_95, result.precision, result.recall]
    assert [float(x) for x in (map50, map50_95, precision, recall)] == [round(v, 3) for v in measured]
    assert re.search(r"\]\(edge/models/MODEL_CARD.md\)", (ROOT / "README.md").read_text())


def test_the_demo_model_says_what_it_was_fine_tuned_from_and_under_which_licence() -> None:
    import json

    from train.synth import CLASSES
    from train.weights import SHA256

    meta = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert tuple(meta["names"]) == CLASSES and meta["imgsz"] == 320
    assert SHA256 in meta["pretrained"] and meta["licence"].startswith("AGPL-3.0")
    card = CARD.read_text()
    for key, test_set in (("metrics_test", "synthetic --photo"), ("metrics_real", "real photos")):
        row = next(ln for ln in card.splitlines() if ln.startswith(f"| this model | {test_set} |"))
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        assert float(cells[6]) == round(meta[key]["mAP50-95"], 3), (test_set, row)

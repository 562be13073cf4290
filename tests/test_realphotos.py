"""The tiny real test set (Debian opencv-doc photos, hand labels) and the demo model's number on it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge.model import DEFAULT_MODEL
from train.dataset import check
from train.realset import DEBIAN_DIR, LABELS_DIR, PHOTOS, build_real_test_set, missing_photos

README = Path(__file__).resolve().parents[1] / "README.md"

needs_photos = pytest.mark.skipif(
    bool(missing_photos()),
    reason=f"Debian's opencv-doc photos are not in {DEBIAN_DIR} (apt-get install opencv-doc)",
)


def test_every_photo_has_hand_labels() -> None:
    assert sorted(p.stem for p in LABELS_DIR.glob("*.txt")) == sorted(PHOTOS)


@needs_photos
def test_the_real_set_is_a_clean_dataset(tmp_path: Path) -> None:
    data = build_real_test_set(tmp_path / "real")
    report = check(data.parent, plots=False)
    assert report.errors == []
    assert report.counts["test"] == {"images": 3, "labels": 3, "negatives": 0, "instances": 6}
    assert {k: v for k, v in report.class_counts.items() if v} == {"apple": 1, "orange": 3, "banana": 2}


def test_a_missing_photo_is_one_line(tmp_path: Path) -> None:
    from train.layout import DatasetError

    with pytest.raises(DatasetError, match=r"fruits.jpg: photo not found \(install Debian's opencv-doc"):
        build_real_test_set(tmp_path / "real", source=tmp_path)


@needs_photos
@pytest.mark.slow
def test_the_model_card_reports_what_eval_measures(tmp_path: Path) -> None:
    from train.evaluate import evaluate

    data = build_real_test_set(tmp_path / "real")
    result = evaluate(DEFAULT_MODEL, data, split="test", imgsz=320, device="cpu", out_dir=tmp_path / "eval")
    row = next(ln for ln in README.read_text().splitlines() if ln.startswith("| real photos"))
    cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
    images, objects, map50, map50_95, precision, recall = cells[1:]
    assert (int(images), int(objects)) == (3, sum(c.instances for c in result.classes))
    measured = [result.map50, result.map50_95, result.precision, result.recall]
    assert [float(x) for x in (map50, map50_95, precision, recall)] == [round(v, 3) for v in measured]
    assert re.search(r"\*\*It does not work on real photos\.\*\*", README.read_text())

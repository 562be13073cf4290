"""Inputs you can trust: the files in hand are checked, bad data stops split and fit, duplicates are found.

Real files and the real CLI throughout; the detector in the autolabel test is the same deterministic
stand-in as in test_dataset.py (no trained model can be downloaded here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from test_dataset import CLEAN, MODEL_NAMES, NAMES, fake_predictor, make_dataset, make_image
from typer.testing import CliRunner

from train import dataset
from train.autolabel import autolabel
from train.cli import app


def _zip(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            zf.write(p, p.relative_to(folder.parent))
    return dest


def test_check_of_a_zip_checks_the_zip_not_the_folder_its_yaml_names(tmp_path: Path) -> None:
    clean = tmp_path / "groceries"
    make_dataset(clean, CLEAN)  # data.yaml says path: <abs>/groceries, a clean folder that exists
    broken = tmp_path / "work" / "groceries"
    shutil.copytree(clean, broken)
    (broken / "labels" / "train" / "a.txt").write_text("99 0.5 0.5 0.2 0.2\n")
    archive = _zip(broken, tmp_path / "groceries.zip")  # next to the clean folder: extracts to a temp dir
    shutil.rmtree(broken.parent)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    res = subprocess.run(
        [sys.executable, "-m", "train.cli", "check", str(archive)], capture_output=True, text=True, env=env
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "labels/train/a.txt:1: class id 99 >= nc 2" in res.stdout
    assert "points at another folder; using the files in hand" in res.stdout
    assert list(temp.iterdir()) == []  # the temporary extraction is gone
    assert (tmp_path / "groceries-check" / "samples.png").is_file()  # plots beside the zip instead
    assert dataset.check(clean, plots=False).errors == []  # and the clean folder was not touched


def test_autolabel_of_a_copied_dataset_labels_the_copy_and_says_so(tmp_path: Path) -> None:
    original = tmp_path / "original"
    make_dataset(original, {"train/lab": None, "val/b": None})
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    report = autolabel(copy, policy="keep", predict=fake_predictor, model_names=MODEL_NAMES)
    assert (copy / "labels" / "train" / "lab.txt").is_file()
    assert not (original / "labels" / "train" / "lab.txt").exists()
    assert report.notes and "points at another folder" in report.notes[0]
    assert "note: " in report.to_text()
    # fit would train on the original: it refuses and names the line
    assert any("path: points at" in p for p in dataset.validate_yaml(copy / "data.yaml"))


def test_autolabel_of_a_plain_folder_writes_classes_confidences_and_a_review_list(tmp_path: Path) -> None:
    plain = tmp_path / "photos"
    make_image(plain / "bright.jpg", value=128)
    make_image(plain / "dark.jpg", value=20)  # the fake detector finds nothing here

    def unsure(image):
        dets = fake_predictor(image)
        dets.confidence[:] = [0.9, 0.3, 0.95, 0.1][: len(dets)]  # the apple is a doubtful one
        return dets

    report = autolabel(plain, policy="keep", predict=unsure, model_names=MODEL_NAMES, conf=0.25)
    assert (plain / "classes.txt").read_text() == "orange\napple\nperson\n"
    rows = (plain / "autolabel.csv").read_text().splitlines()
    assert rows[0] == "image,class,confidence,cx,cy,w,h"
    assert [r.split(",")[:3] for r in rows[1:]] == [
        ["bright.jpg", "orange", "0.9000"],
        ["bright.jpg", "apple", "0.3000"],
        ["bright.jpg", "person", "0.9500"],  # a plain folder takes all the model's classes
    ]
    review = dict(ln.split("\t") for ln in (plain / "review.txt").read_text().splitlines())
    assert review == {"bright.jpg": "lowest confidence 0.30 < 0.5", "dark.jpg": "no detection, no label"}
    assert report.review == review
    split = dataset.split(plain, tmp_path / "split", (0.5, 0.5, 0.0))  # classes.txt makes it splittable
    assert sum(split.images.values()) == 2
    assert list(split.instances["train"]) == ["orange", "apple", "person"]


def test_split_refuses_bad_labels_and_corrupt_images_unless_forced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_dataset(
        src, {**CLEAN, "train/c": "99 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.2 0.2\n", "train/d": "0 0.5 0.5 0.2 0.2\n"}
    )
    (src / "images" / "train" / "d.jpg").write_bytes(b"not a jpeg")
    res = CliRunner().invoke(app, ["split", str(src), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert line.count("\n") == 0 and "2 dataset error(s)" in line
    assert "labels/train/c.txt:1: class id 99 >= nc 2" in line and "images/train/d.jpg: unreadable" in line
    assert not (tmp_path / "out").exists()
    forced = CliRunner().invoke(app, ["split", str(src), "--out", str(tmp_path / "out"), "--force"])
    assert forced.exit_code == 0, forced.output
    out = dataset.check(tmp_path / "out", plots=False)
    assert out.errors == []  # the corrupt image and the class-99 line stayed behind
    assert sum(c["images"] for c in out.counts.values()) == 3


def test_merge_of_a_dataset_with_itself_adds_nothing_twice(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    make_dataset(src, CLEAN)
    make_image(src / "images" / "val" / "b.jpg", value=70)  # two different photos
    res = CliRunner().invoke(app, ["merge", str(src), str(src), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "2 duplicate image(s) left out" in res.stdout
    assert (
        "skipped duplicate shop_2/images/train/a.jpg: same content as shop/images/train/a.jpg" in res.stderr
    )
    report = dataset.check(tmp_path / "m", plots=False)
    assert report.counts["train"]["images"] == 1 and report.counts["val"]["images"] == 1


def test_check_does_not_contradict_itself_on_a_missing_test_key(tmp_path: Path) -> None:
    data = {"path": str(tmp_path), "train": "images/train", "val": "images/val", "nc": 3, "names": NAMES}
    make_dataset(tmp_path, {**CLEAN, "test/t": "0 0.5 0.5 0.1 0.1\n"}, yaml_data=data)
    report = dataset.check(tmp_path, plots=False)
    assert report.fixes == []  # nothing written while data.yaml has an error elsewhere (nc)...
    assert (
        "data.yaml: test: 'missing' → images/test (not repaired while data.yaml has errors)" in report.errors
    )
    assert "repairs (" not in report.to_text()  # ...so it is not listed as repaired
    data["nc"] = 2
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    fixed = dataset.check(tmp_path, plots=False)
    assert fixed.errors == [] and fixed.fixes == ["data.yaml: test: 'missing' → images/test"]
    assert "repairs (1):" in fixed.to_text()
    assert yaml.safe_load((tmp_path / "data.yaml").read_text())["test"] == "images/test"


def test_fit_refuses_a_dataset_check_rejects_and_onnx_weights(tmp_path: Path) -> None:
    data = make_dataset(tmp_path, {**CLEAN, "train/c": "99 0.5 0.5 0.1 0.1\n"})
    res = CliRunner().invoke(app, ["fit", str(data), "--model", "yolov8n.yaml", "--epochs", "1"])
    assert res.exit_code == 2
    assert "labels/train/c.txt:1: class id 99 >= nc 2" in res.stderr and "--force" in res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "runs").exists()
    onnx = CliRunner().invoke(app, ["fit", str(data), "--model", "edge/models/demo.onnx"])
    assert onnx.exit_code == 2
    assert onnx.stderr.strip().splitlines() == [
        "error: edge/models/demo.onnx: fit needs PyTorch weights (.pt) or a model .yaml, got '.onnx' "
        "(an .onnx model is for inference: eval, predict, the edge daemon)"
    ]
    not_ckpt = tmp_path / "last.pt"
    not_ckpt.write_bytes(b"junk")
    resume = CliRunner().invoke(app, ["fit", str(data), "--resume", str(not_ckpt)])
    assert resume.exit_code == 2 and resume.stderr.startswith(f"error: {not_ckpt}: not a PyTorch checkpoint")


def test_check_format_md_writes_tables(tmp_path: Path) -> None:
    make_dataset(tmp_path / "d", {**CLEAN, "train/c": "7 0.5 0.5 0.1 0.1\n"})
    md = tmp_path / "docs" / "check.md"
    res = CliRunner().invoke(app, ["check", str(tmp_path / "d"), "--format", "md", "--md", str(md)])
    assert res.exit_code == 1  # the class-7 line is an error, in Markdown too
    for text in (res.stdout, md.read_text()):
        assert "| split | images | labels | negatives | instances |" in text
        assert "| train | 2 | 2 | 0 | 2 |" in text and "| apple | 1 | 33.3% | 1 | 0 | 0 |" in text
        assert "- `labels/train/c.txt:1: class id 7 >= nc 2`" in text
    assert "](../d/check/samples.png)" in md.read_text()  # links relative to the Markdown file
    bad = CliRunner().invoke(app, ["check", str(tmp_path / "d"), "--format", "html"])
    assert bad.exit_code == 2


def test_autolabel_in_place_on_a_temporary_extraction_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    make_dataset(src, {"train/a": None, "val/b": None})
    archive = _zip(src, tmp_path / "shop.zip")  # ./shop exists: the zip goes to a temp dir
    with pytest.raises(dataset.DatasetError, match="temporary folder that is removed at exit; give --out"):
        autolabel(archive, policy="keep", predict=fake_predictor, model_names=MODEL_NAMES)
    report = autolabel(
        archive, out=tmp_path / "out", policy="keep", predict=fake_predictor, model_names=MODEL_NAMES
    )
    assert report.written == 2 and (tmp_path / "out" / "labels" / "train" / "a.txt").is_file()

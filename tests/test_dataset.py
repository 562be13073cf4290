"""Dataset tools on crafted datasets: check (one test per problem), repair, zip, split, merge, autolabel."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edge.detections import Detections
from train import dataset
from train.autolabel import autolabel
from train.cli import app
from train.synth import write_dataset

NAMES = ["apple", "orange"]


def make_image(path: Path, value: int = 128, size: tuple[int, int] = (64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size[1], size[0], 3), value, np.uint8))


def make_dataset(
    root: Path,
    labels: dict[str, str | None],
    names: list[str] | dict[int, str] = NAMES,
    roboflow: bool = False,
    yaml_data: dict | None = None,
) -> Path:
    """``labels`` maps ``split/stem`` to label text (None: no label file). Returns data.yaml."""
    for key, text in labels.items():
        split, stem = key.split("/")
        folder = split if not roboflow else {"val": "valid"}.get(split, split)
        img = (
            root / folder / "images" / f"{stem}.jpg" if roboflow else root / "images" / split / f"{stem}.jpg"
        )
        make_image(img)
        if text is not None:
            lbl = dataset.label_path(img)
            lbl.parent.mkdir(parents=True, exist_ok=True)
            lbl.write_text(text)
    data = yaml_data or {"path": str(root), "train": "images/train", "val": "images/val", "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "data.yaml"


CLEAN = {"train/a": "0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n", "val/b": "1 0.5 0.5 0.3 0.3\n"}


def test_clean_dataset_counts_and_distribution(tmp_path: Path) -> None:
    labels = {**CLEAN, "train/c": "1 0.3 0.3 0.1 0.1\n1 0.7 0.7 0.1 0.1\n", "train/neg": ""}
    make_dataset(tmp_path, labels)
    report = dataset.check(tmp_path, out_dir=tmp_path / "plots")
    assert report.errors == []
    assert report.counts["train"] == {"images": 3, "labels": 3, "negatives": 1, "instances": 4}
    assert report.counts["val"] == {"images": 1, "labels": 1, "negatives": 0, "instances": 1}
    assert report.class_counts == {"apple": 1, "orange": 4}
    assert report.split_class_counts["train"] == {"apple": 1, "orange": 3}
    assert "most frequent: orange (4), least frequent: apple (1), average per class: 2.5" in report.to_text()
    for png in report.plots.values():
        img = cv2.imread(str(png))
        assert img is not None and img.std() > 0, png


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0 1.2 0.5 0.1 0.1\n", "1: coordinate outside [0, 1]: cx=1.2", id="outside"),
        pytest.param("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n", "2: class id 2 >= nc 2", id="class-id"),
        pytest.param("\n0 0.5 0.5 0.1\n", "2: expected 5 fields 'class cx cy w h', got 4", id="fields"),
        pytest.param("0 0.5 abc 0.1 0.1\n", "1: not a number: 'abc'", id="non-numeric"),
        pytest.param("0 0.5 0.5 0 0.1\n", "1: zero or negative box size (w=0, h=0.1)", id="zero-size"),
        pytest.param(
            "0 0.5 0.5 0.1 -0.2\n", "1: zero or negative box size (w=0.1, h=-0.2)", id="negative-size"
        ),
        pytest.param(
            "1.5 0.5 0.5 0.1 0.1\n", "1: class id must be a non-negative integer, got '1.5'", id="float-id"
        ),
        pytest.param(
            "1 0.5 0.5 0.2 0.2\n0 0.1 0.1 0.1 0.1\n1 0.5 0.5 0.2 0.2\n",
            "3: duplicate of line 1 (class 1, IoU 1.00)",
            id="duplicate-identical",
        ),
        pytest.param(
            "1 0.5 0.5 0.2 0.2\n1 0.501 0.5 0.2 0.2\n",
            "2: duplicate of line 1 (class 1, IoU 0.99)",
            id="duplicate-iou",
        ),
    ],
)
def test_label_errors_name_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    make_dataset(tmp_path, {**CLEAN, "train/bad": text})
    report = dataset.check(tmp_path, plots=False)
    assert report.errors == [f"labels/train/bad.txt:{expected}"]


def test_overlapping_boxes_of_different_classes_are_not_duplicates(tmp_path: Path) -> None:
    make_dataset(tmp_path, {**CLEAN, "train/pair": "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n"})
    assert dataset.check(tmp_path, plots=False).errors == []


def test_missing_label_is_reported_but_empty_label_is_a_negative(tmp_path: Path) -> None:
    make_dataset(tmp_path, {**CLEAN, "train/nolabel": None, "train/empty": ""})
    report = dataset.check(tmp_path, plots=False)
    assert report.errors == ["images/train/nolabel.jpg: missing label file labels/train/nolabel.txt"]
    assert report.counts["train"]["negatives"] == 1


def test_label_without_image_is_reported(tmp_path: Path) -> None:
    make_dataset(tmp_path, CLEAN)
    (tmp_path / "labels" / "val" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert dataset.check(tmp_path, plots=False).errors == [
        "labels/val/ghost.txt: label file without an image"
    ]


def test_corrupt_image_is_reported(tmp_path: Path) -> None:
    make_dataset(tmp_path, CLEAN)
    (tmp_path / "images" / "train" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    errors = dataset.check(tmp_path).errors
    assert len(errors) == 1 and errors[0].startswith("images/train/a.jpg: unreadable image")


def test_names_as_dict_and_nc_mismatch(tmp_path: Path) -> None:
    data = {"train": "images/train", "val": "images/val", "nc": 3, "names": {0: "apple", 1: "orange"}}
    make_dataset(tmp_path, CLEAN, yaml_data=data)
    report = dataset.check(tmp_path, plots=False)
    assert report.names == NAMES
    assert report.errors == ["data.yaml:3: nc: 3 but 2 names"]


def test_roboflow_yaml_from_another_machine_is_repaired(tmp_path: Path) -> None:
    data = {
        "path": "/home/someone/datasets/groceries",
        "train": "../train/images",
        "val": "../valid/images",
        "test": "../test/images",
        "nc": 2,
        "names": NAMES,
    }
    data_yaml = make_dataset(tmp_path, {**CLEAN, "test/t": ""}, roboflow=True, yaml_data=data)
    original = data_yaml.read_text()

    dry = dataset.check(tmp_path, fix=False, plots=False)
    assert data_yaml.read_text() == original
    assert any(e.startswith("data.yaml:1: path: '/home/someone/datasets/groceries'") for e in dry.errors)
    assert "data.yaml:3: val: '../valid/images' → valid/images (not repaired: --no-fix)" in dry.errors

    report = dataset.check(tmp_path, plots=False)
    assert report.errors == []
    assert "data.yaml:2: train: '../train/images' → train/images" in report.fixes
    assert (tmp_path / "data.yaml.bak").read_text() == original
    fixed = yaml.safe_load(data_yaml.read_text())
    assert fixed["path"] == str(tmp_path.resolve())
    assert (fixed["train"], fixed["val"], fixed["test"]) == ("train/images", "valid/images", "test/images")
    assert fixed["names"] == NAMES
    assert report.counts["test"]["images"] == 1
    again = dataset.check(tmp_path, plots=False)
    assert again.fixes == [] and again.errors == []
    assert dataset.validate_yaml(data_yaml) == []


def test_missing_split_folder_is_an_error_naming_the_yaml_line(tmp_path: Path) -> None:
    data = {"train": "images/train", "val": "images/nowhere", "names": NAMES}
    make_dataset(tmp_path, {"train/a": "0 0.5 0.5 0.2 0.2\n"}, yaml_data=data)
    report = dataset.check(tmp_path, plots=False)
    assert report.errors == ["data.yaml:2: val: 'images/nowhere', no images found"]


def test_zip_input_with_top_level_folder(tmp_path: Path) -> None:
    make_dataset(tmp_path / "src" / "groceries", CLEAN)
    archive = tmp_path / "groceries.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "src").rglob("*")):
            zf.write(f, f.relative_to(tmp_path / "src"))
    shutil.rmtree(tmp_path / "src")  # the yaml's absolute `path:` is now stale, as on another machine
    root, data_yaml = dataset.resolve(archive)
    assert root == (tmp_path / "groceries" / "groceries").resolve()
    assert data_yaml == root / "data.yaml"
    report = dataset.check(archive, plots=False)
    assert report.errors == []  # the stale absolute `path:` was repaired inside the extraction
    assert report.counts["train"]["instances"] == 2


def test_resolve_reports_missing_things(tmp_path: Path) -> None:
    with pytest.raises(dataset.DatasetError, match="no such file or folder"):
        dataset.resolve(tmp_path / "nope")
    with pytest.raises(dataset.DatasetError, match=r"no data\.yaml found"):
        dataset.resolve(tmp_path)
    (tmp_path / "data.yaml").write_text("train: [unclosed\n")
    with pytest.raises(dataset.DatasetError, match=r"data.yaml:2: invalid YAML"):
        dataset.check(tmp_path)


# --- split -------------------------------------------------------------------------------------------


def _split_source(root: Path) -> Path:
    labels: dict[str, str | None] = {}
    for i in range(40):
        labels[f"train/common{i:02d}"] = "0 0.5 0.5 0.2 0.2\n"
    for i in range(10):
        labels[f"train/rare{i:02d}"] = "0 0.3 0.3 0.2 0.2\n1 0.7 0.7 0.2 0.2\n"
    for i in range(10):
        labels[f"val/neg{i:02d}"] = ""
    return make_dataset(root, labels)


def _listing(root: Path) -> dict[str, list[str]]:
    return {s: sorted(p.name for p in (root / "images" / s).glob("*.jpg")) for s in dataset.SPLITS}


def test_split_is_stratified_keeps_negatives_and_is_deterministic(tmp_path: Path) -> None:
    src = _split_source(tmp_path / "src")
    result = dataset.split(src, tmp_path / "a", fractions=(0.6, 0.2, 0.2), seed=7)
    listing = _listing(tmp_path / "a")
    assert {s: len(v) for s, v in listing.items()} == {"train": 36, "val": 12, "test": 12}
    assert result.images == {"train": 36, "val": 12, "test": 12}
    rare = {s: sum(n.startswith("rare") for n in v) for s, v in listing.items()}
    negatives = {s: sum(n.startswith("neg") for n in v) for s, v in listing.items()}
    assert rare == {"train": 6, "val": 2, "test": 2}
    assert negatives == {"train": 6, "val": 2, "test": 2} == result.negatives
    assert result.instances["val"]["orange"] == 2
    for split_name, names in listing.items():  # labels travel with their image, unchanged
        for name in names:
            label = tmp_path / "a" / "labels" / split_name / name.replace(".jpg", ".txt")
            origin = next((tmp_path / "src" / "labels").rglob(name.replace(".jpg", ".txt")))
            assert label.read_text() == origin.read_text()
    assert dataset.check(tmp_path / "a", plots=False).errors == []

    dataset.split(src, tmp_path / "b", fractions=(0.6, 0.2, 0.2), seed=7)
    dataset.split(src, tmp_path / "c", fractions=(0.6, 0.2, 0.2), seed=8)
    assert _listing(tmp_path / "b") == listing
    assert _listing(tmp_path / "c") != listing


def test_split_refuses_bad_fractions_and_non_empty_output(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", CLEAN)
    with pytest.raises(dataset.DatasetError, match="summing to 1"):
        dataset.split(src, tmp_path / "out", fractions=(0.5, 0.2, 0.2))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(dataset.DatasetError, match="not empty"):
        dataset.split(src, tmp_path / "out")


def test_split_of_a_plain_folder_with_classes_txt(tmp_path: Path) -> None:
    src = tmp_path / "export"
    for i in range(5):
        make_image(src / f"img{i}.jpg")
        (src / f"img{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.2 0.2\n")
    (src / "classes.txt").write_text("apple\norange\n")
    result = dataset.split(src, tmp_path / "out", seed=1)
    assert sum(result.images.values()) == 5
    assert yaml.safe_load(result.data_yaml.read_text())["names"] == {0: "apple", 1: "orange"}


# --- merge -------------------------------------------------------------------------------------------


def test_merge_remaps_classes_by_name_and_avoids_collisions(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "one" / "shop", {"train/x": "0 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n"})
    b = make_dataset(
        tmp_path / "two" / "shop",
        {"train/x": "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n", "val/y": "2 0.5 0.5 0.1 0.1\n"},
        names={0: "banana", 1: "Apple", 2: "orange"},
    )
    make_image(b.parent / "images" / "train" / "x.jpg", value=90)  # another photo under the same name
    make_image(b.parent / "images" / "val" / "y.jpg", value=60)
    result = dataset.merge([a, b], tmp_path / "merged")
    assert result.names == ["apple", "orange", "banana"]
    assert result.mapping == {"shop": {0: 0, 1: 1}, "shop_2": {0: 2, 1: 0, 2: 1}}
    labels = tmp_path / "merged" / "labels"
    assert (labels / "train" / "shop_x.txt").read_text().split("\n")[0].split()[0] == "0"
    assert [ln.split()[0] for ln in (labels / "train" / "shop_2_x.txt").read_text().splitlines()] == [
        "2",
        "0",
    ]
    assert (labels / "val" / "shop_2_y.txt").read_text().split()[0] == "1"
    report = dataset.check(tmp_path / "merged", plots=False)
    assert report.errors == []
    assert report.class_counts == {"apple": 2, "orange": 2, "banana": 1}


# --- autolabel ---------------------------------------------------------------------------------------

MODEL_NAMES = {0: "orange", 1: "apple", 2: "person"}
ORANGE_BOX = [8.0, 8.0, 24.0, 24.0]  # pixels in a 64x48 image
APPLE_NEAR_EXISTING = [30.0, 14.0, 46.0, 34.0]


def fake_predictor(image: np.ndarray) -> Detections:
    """A deterministic stand-in for a trained detector: it keys its output on the image's grey level.

    Faked because no trained model can be downloaded here; the real Ultralytics path is the slow test.
    """
    if int(image.mean()) < 70:  # the "nothing here" images
        return Detections.empty()
    return Detections(
        np.array([ORANGE_BOX, APPLE_NEAR_EXISTING, [0, 0, 10, 10], [40, 2, 60, 12]], np.float32),
        np.array([0.9, 0.8, 0.95, 0.1], np.float32),  # the last one is below conf
        np.array([0, 1, 2, 0]),
    )


EXISTING = "0 0.593750 0.500000 0.250000 0.416667\n"  # an apple at ~[30,14,46,34] px


def _autolabel_source(root: Path) -> Path:
    """labelled (bright), unlabelled (bright), dark-unlabelled and dark-labelled images."""
    make_dataset(root, {"train/lab": EXISTING, "train/new": None, "val/b": EXISTING})
    make_image(root / "images" / "train" / "darknew.jpg", value=20)
    make_image(root / "images" / "val" / "darklab.jpg", value=20)
    (root / "labels" / "val" / "darklab.txt").write_text(EXISTING)
    return root


def _lines(path: Path) -> list[tuple[int, ...]]:
    return [tuple(round(float(v) * 64) for v in ln.split()) for ln in path.read_text().splitlines()]


def test_autolabel_keep_writes_only_unlabelled_images(tmp_path: Path) -> None:
    root = _autolabel_source(tmp_path)
    report = autolabel(root, policy="keep", predict=fake_predictor, model_names=MODEL_NAMES)
    labels = root / "labels"
    assert (labels / "train" / "lab.txt").read_text() == EXISTING
    new = dataset.read_labels(labels / "train" / "new.txt").boxes
    assert [b.class_id for b in new] == [1, 0]  # orange → 1, apple → 0; person and the weak box dropped
    assert (round(new[0].cx * 64), round(new[0].cy * 48)) == (16, 16)
    assert not (labels / "train" / "darknew.txt").exists()
    assert report.unlabelled == [root / "images" / "train" / "darknew.jpg"]
    assert report.unknown_classes == {"person": 1}
    assert (report.written, report.kept, report.added_boxes) == (1, 3, 2)


def test_autolabel_replace_keeps_labels_where_the_model_finds_nothing(tmp_path: Path) -> None:
    root = _autolabel_source(tmp_path)
    report = autolabel(root, policy="replace", predict=fake_predictor, model_names=MODEL_NAMES)
    assert [b.class_id for b in dataset.read_labels(root / "labels" / "train" / "lab.txt").boxes] == [1, 0]
    assert (root / "labels" / "val" / "darklab.txt").read_text() == EXISTING
    assert (report.written, report.kept) == (3, 1)


def test_autolabel_merge_drops_model_boxes_that_duplicate_existing_ones(tmp_path: Path) -> None:
    root = _autolabel_source(tmp_path)
    report = autolabel(root, policy="merge", iou=0.5, predict=fake_predictor, model_names=MODEL_NAMES)
    merged = dataset.read_labels(root / "labels" / "train" / "lab.txt").boxes
    assert [b.class_id for b in merged] == [0, 1]  # the existing apple, plus the model's orange only
    assert merged[0].to_line() == EXISTING.strip()
    assert report.added_boxes == 1 + 1 + 2  # lab: +orange, b: +orange, new: orange and apple
    strict = autolabel(
        root, out=tmp_path / "copy", policy="merge", iou=0.99, predict=fake_predictor, model_names=MODEL_NAMES
    )
    assert strict.added_boxes == 0  # everything was merged already; nothing new at any overlap


def test_autolabel_to_a_copy_leaves_the_source_alone(tmp_path: Path) -> None:
    root = _autolabel_source(tmp_path / "src")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    autolabel(root, out=out, policy="replace", predict=fake_predictor, model_names=MODEL_NAMES)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    report = dataset.check(out, plots=False)
    assert report.errors == ["images/train/darknew.jpg: missing label file labels/train/darknew.txt"]
    assert report.counts["train"]["instances"] == 2 + 2


def test_autolabel_rejects_unknown_policy(tmp_path: Path) -> None:
    with pytest.raises(dataset.DatasetError, match="policy 'union'"):
        autolabel(tmp_path, policy="union", predict=fake_predictor, model_names=MODEL_NAMES)


@pytest.mark.slow
def test_autolabel_with_a_real_untrained_yolov8n(tmp_path: Path) -> None:
    """The real Ultralytics path: an untrained yolov8n built from its yaml (no download), names '0'..'79'."""
    root = _autolabel_source(tmp_path / "ds")
    report = autolabel(root, Path("yolov8n.yaml"), conf=0.0001, policy="keep")
    assert (report.written, report.kept) == (0, 3)  # its classes '0'.. match no product name
    assert sum(report.unknown_classes.values()) > 0

    plain = tmp_path / "plain"
    for i in range(2):
        make_image(plain / f"img{i}.jpg", value=90 + 60 * i)
    copied = autolabel(plain, Path("yolov8n.yaml"), out=tmp_path / "labelled", conf=0.0001, policy="keep")
    assert copied.written == 2 and copied.unknown_classes == {}
    for i in range(2):
        parsed = dataset.read_labels(tmp_path / "labelled" / "labels" / f"img{i}.txt", nc=80)
        assert parsed.problems == () and len(parsed.boxes) > 0
    assert dataset.check(tmp_path / "labelled", plots=False).errors == []


# --- CLI ---------------------------------------------------------------------------------------------


def test_cli_user_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["check", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: no such file or folder"]
    assert "Traceback" not in result.output


def test_cli_fit_with_a_broken_data_yaml_is_one_line(tmp_path: Path) -> None:
    data_yaml = make_dataset(
        tmp_path, CLEAN, yaml_data={"train": "images/train", "val": "gone", "names": NAMES}
    )
    result = CliRunner().invoke(app, ["fit", str(data_yaml), "--model", "yolov8n.yaml"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'data.yaml'}:2: val: 'gone' not found from {tmp_path} "
        "(lanecount-train check repairs it)"
    )


def test_cli_check_exit_codes(tmp_path: Path) -> None:
    make_dataset(tmp_path / "bad", {**CLEAN, "train/c": "7 0.5 0.5 0.1 0.1\n"})
    bad = CliRunner().invoke(app, ["check", str(tmp_path / "bad")])
    assert bad.exit_code == 1
    assert "labels/train/c.txt:1: class id 7 >= nc 2" in bad.stdout
    write_dataset(tmp_path / "synth", 6, seed=2)
    good = CliRunner().invoke(app, ["check", str(tmp_path / "synth"), "--out", str(tmp_path / "plots")])
    assert good.exit_code == 0, good.output
    assert (tmp_path / "plots" / "samples.png").exists()


def test_cli_split_and_merge(tmp_path: Path) -> None:
    make_dataset(tmp_path / "src", CLEAN)
    runner = CliRunner()
    split_res = runner.invoke(
        app, ["split", str(tmp_path / "src"), "--out", str(tmp_path / "s"), "--seed", "3"]
    )
    assert split_res.exit_code == 0, split_res.output
    merge_res = runner.invoke(
        app, ["merge", str(tmp_path / "src"), str(tmp_path / "s"), "--out", str(tmp_path / "m")]
    )
    assert merge_res.exit_code == 0, merge_res.output
    assert "s: 0→0, 1→1" in merge_res.stdout
    again = runner.invoke(app, ["merge", str(tmp_path / "src"), "--out", str(tmp_path / "m")])
    assert again.exit_code == 2 and again.stderr.startswith("error: ") and "not empty" in again.stderr
    shutil.rmtree(tmp_path / "m")

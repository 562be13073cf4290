"""Evaluation, comparison, error analysis and report: train/evaluate.py, errors.py, report.py, evalcli.py.

The matching and P/R/F1 logic is checked against hand-computed cases. Galleries are drawn from real
synthetic images with *fake predictors* (plain callables): that is the predictor interface itself, not
a patch. The slow test trains a real (tiny) YOLOv8n and runs every step with real Ultralytics.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from edge.errors import LanecountError
from train.errors import (
    ErrorReport,
    ImageErrors,
    ModelErrors,
    analyse,
    draw_errors,
    match,
    prf,
    read_labels,
    split_images,
)
from train.evalcli import register
from train.evaluate import (
    ClassMetrics,
    Comparison,
    EvalError,
    EvalResult,
    _remap,
    compare_results,
    default_out,
    evaluate,
    plot_comparison,
)
from train.report import collect, write_report
from train.synth import CLASSES, write_dataset

GT = [[0, 0, 100, 100]]


# --- match / prf -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred_boxes", "pred_cls", "scores", "gt_boxes", "gt_cls", "expected"),
    [
        pytest.param(GT, [1], [0.9], GT, [1], (1, 0, 0), id="exact"),
        pytest.param(GT, [2], [0.9], GT, [1], (0, 1, 1), id="class-mismatch"),
        pytest.param(GT * 3, [1, 1, 1], [0.9, 0.8, 0.7], GT, [1], (1, 2, 0), id="duplicates-are-fp"),
        pytest.param([[0, 0, 100, 49]], [1], [0.9], GT, [1], (0, 1, 1), id="iou-0.49-below"),
        pytest.param([[0, 0, 100, 51]], [1], [0.9], GT, [1], (1, 0, 0), id="iou-0.51-above"),
        pytest.param([[0, 0, 100, 50]], [1], [0.9], GT, [1], (1, 0, 0), id="iou-exactly-at-threshold"),
        pytest.param(np.zeros((0, 4)), [], [], GT * 2, [0, 1], (0, 0, 2), id="no-predictions"),
        pytest.param(GT * 2, [0, 1], [0.5, 0.6], np.zeros((0, 4)), [], (0, 2, 0), id="no-ground-truth"),
        pytest.param(np.zeros((0, 4)), [], [], np.zeros((0, 4)), [], (0, 0, 0), id="both-empty"),
        pytest.param(
            [[0, 0, 10, 10], [50, 50, 60, 60]],
            [0, 0],
            [0.9, 0.9],
            [[50, 50, 60, 60], [0, 0, 10, 10]],
            [0, 0],
            (2, 0, 0),
            id="order-free",
        ),
    ],
)
def test_match_counts(pred_boxes, pred_cls, scores, gt_boxes, gt_cls, expected):
    tp, fp, fn, matches = match(pred_boxes, pred_cls, gt_boxes, gt_cls, iou_thr=0.5, scores=scores)
    assert (tp, fp, fn) == expected
    assert len(matches) == tp


def test_match_is_greedy_by_confidence():
    # The less confident box is listed first; the more confident one must take the object.
    preds = [[0, 0, 100, 100], [0, 0, 100, 90]]
    _, _, _, matches = match(preds, [0, 0], GT, [0], scores=[0.3, 0.8])
    assert [m[:2] for m in matches] == [(1, 0)]
    assert matches[0][2] == pytest.approx(0.9)


def test_match_takes_the_best_overlapping_object_of_its_class():
    gts = [[0, 0, 100, 100], [0, 0, 100, 60], [0, 0, 100, 95]]
    _, _, _, matches = match([[0, 0, 100, 96]], [0], gts, [0, 0, 1])
    assert matches[0][1] == 0  # gt 2 overlaps more but is another class


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ((0, 0, 0), (0.0, 0.0, 0.0)),
        ((3, 0, 3), (1.0, 0.5, 2 / 3)),
        ((0, 5, 6), (0.0, 0.0, 0.0)),
        ((2, 2, 0), (0.5, 1.0, 2 / 3)),
        ((1, 3, 1), (0.25, 0.5, 1 / 3)),
    ],
)
def test_prf(counts, expected):
    assert prf(*counts) == pytest.approx(expected)


# --- dataset reading and errors --------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    # 8 images: 6 train, 2 val, 0 test.
    return write_dataset(tmp_path_factory.mktemp("synth"), 8, seed=3)


def _truth(data_yaml: Path, split: str) -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
    """Ground truth keyed by image content: lets a fake predictor answer per image."""
    out = {}
    for p in split_images(data_yaml, split):
        img = cv2.imread(str(p))
        out[img.tobytes()] = read_labels(p, img.shape[1], img.shape[0])
    return out


def test_read_labels_matches_synth_boxes(dataset):
    images = split_images(dataset, "train")
    assert len(images) == 6
    label = (dataset.parent / "labels" / "train" / images[0].name).with_suffix(".txt")
    rows = np.loadtxt(label, ndmin=2)
    boxes, cls = read_labels(images[0], 640, 480)
    assert cls.tolist() == rows[:, 0].astype(int).tolist()
    assert boxes[:, 2] - boxes[:, 0] == pytest.approx(rows[:, 3] * 640, abs=1e-3)


def test_split_images_from_txt_list(dataset, tmp_path):
    listed = split_images(dataset, "val")
    (tmp_path / "val.txt").write_text("".join(f"{p}\n" for p in listed))
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text(f"path: {tmp_path}\nval: val.txt\nnames: {list(CLASSES)}\n")
    assert split_images(yaml_path, "val") == listed


def test_analyse_with_fake_predictors(dataset, tmp_path):
    truth = _truth(dataset, "train")
    spurious = np.array([[0, 0, 6, 6]], np.float32)  # too small to overlap any product at IoU 0.5

    def sloppy(img):  # misses the first object, adds a spurious box, and a duplicate below conf
        boxes, cls = truth[img.tobytes()]
        n = len(boxes)
        out_boxes = np.concatenate([boxes[1:], spurious, boxes[:1]])
        scores = np.concatenate([np.full(max(n - 1, 0), 0.9), [0.8], np.full(min(n, 1), 0.1)])
        return out_boxes, scores, np.concatenate([cls[1:], [5], cls[:1]])

    def oracle(img):
        boxes, cls = truth[img.tobytes()]
        return boxes, np.full(len(boxes), 0.95), cls

    report = analyse([sloppy, oracle], dataset, split="train", conf=0.25, out_dir=tmp_path, top=4)

    n_gt = sum(len(b) for b, _ in truth.values())
    with_objects = sum(1 for b, _ in truth.values() if len(b))
    first, second = report.models
    assert (first.name, second.name) == ("sloppy", "oracle")
    assert (first.tp, first.fp, first.fn) == (n_gt - with_objects, len(truth), with_objects)
    assert (second.tp, second.fp, second.fn) == (n_gt, 0, 0)
    assert report.deltas() == pytest.approx(
        {k: getattr(second, k) - getattr(first, k) for k in ("precision", "recall", "f1")}
    )
    assert second.fp_gallery is None and second.fn_gallery is None
    grid = cv2.imread(first.fp_gallery)
    assert grid is not None and grid.shape[1] == 4 * 320
    assert np.any(np.all(grid == (0, 0, 255), axis=2)), "false positives are drawn in red"
    with open(report.csv) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(truth)
    assert sum(int(r["fn"]) for r in rows if r["model"] == "sloppy") == with_objects
    saved = json.loads((tmp_path / "errors.json").read_text())
    assert saved["models"][1]["f1"] == 1.0
    assert ErrorReport.from_dict(saved).to_dict() == saved

    # per class: the sums are the totals; the spurious boxes are cereal_box false positives
    per = {c.name: c for c in first.classes}
    assert sum(c.tp for c in first.classes) == first.tp and sum(c.fn for c in first.classes) == first.fn
    assert per["cereal_box"].fp == len(truth)
    missed = Counter(CLASSES[int(cls[0])] for b, cls in truth.values() if len(b))
    assert {n: c.fn for n, c in per.items() if c.fn} == dict(missed)
    assert all(c.fp == 0 and c.fn == 0 and c.f1 == 1.0 for c in second.classes)
    assert saved["models"][0]["classes"][0]["name"] == first.classes[0].name
    md = report.to_markdown()
    assert "| cereal_box | " in md and "sloppy TP/FP/FN" in md
    fn_grid = cv2.imread(first.fn_gallery)
    assert np.any(np.all(fn_grid == (255, 0, 255), axis=2)), "missed objects are marked in magenta"


def test_draw_errors_colours():
    img = np.zeros((200, 200, 3), np.uint8)
    rec = ImageErrors(
        Path("x.jpg"),
        gt_boxes=np.array([[20, 20, 80, 80], [120, 120, 180, 180]], np.float32),
        gt_cls=np.array([0, 1]),
        pred_boxes=np.array([[20, 20, 80, 80], [100, 10, 190, 60]], np.float32),
        pred_scores=np.array([0.9, 0.7], np.float32),
        pred_cls=np.array([0, 2]),
        pred_labels=["apple", "banana"],
        matches=[(0, 0, 1.0)],
    )
    out = draw_errors(img, rec, CLASSES)
    assert out[150, 120].tolist() == [255, 0, 255]  # missed truth: magenta edge
    assert out[40, 190].tolist() == [0, 0, 255]  # false positive: red edge
    assert out[50, 80].tolist() == [0, 165, 255]  # matched prediction drawn over its truth: orange
    assert not img.any(), "the input image is not modified"


def test_analyse_errors_are_one_line(dataset, tmp_path):
    with pytest.raises(EvalError, match="weights file not found"):
        analyse([tmp_path / "missing.pt"], dataset, split="train", out_dir=tmp_path)
    with pytest.raises(EvalError, match=r"no 'test' split \(has: train, val\)"):
        analyse([lambda img: ([], [], [])], _no_test_split(dataset, tmp_path), split="test", out_dir=tmp_path)
    with pytest.raises(EvalError, match="at least one model"):
        analyse([], dataset, out_dir=tmp_path)


def _no_test_split(dataset: Path, tmp_path: Path) -> Path:
    path = tmp_path / "no_test.yaml"
    path.write_text(f"path: {dataset.parent}\ntrain: images/train\nval: images/val\nnames: {list(CLASSES)}\n")
    return path


# --- evaluate input checks -------------------------------------------------------------------------


def test_evaluate_input_errors(dataset, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    with pytest.raises(EvalError, match="dataset file not found"):
        evaluate(weights, tmp_path / "nope.yaml")
    with pytest.raises(EvalError, match="got a folder"):
        evaluate(weights, tmp_path)
    with pytest.raises(EvalError, match="no 'test' split"):
        evaluate(weights, _no_test_split(dataset, tmp_path), split="test")
    with pytest.raises(EvalError, match="weights file not found"):
        evaluate(tmp_path / "missing.onnx", dataset, split="val")
    with pytest.raises(EvalError, match=r"expected \.pt or \.onnx"):
        evaluate(tmp_path / "model.engine", dataset, split="val")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: images/train\n")
    with pytest.raises(EvalError, match="'names'"):
        evaluate(weights, bad)
    assert issubclass(EvalError, LanecountError)


def test_cli_reports_user_mistakes_as_lanecount_errors(tmp_path):
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "x.pt"), "--data", str(tmp_path / "d.yaml")])
    assert isinstance(result.exception, EvalError)
    assert "d.yaml: dataset file not found" in str(result.exception)
    result = CliRunner().invoke(app, ["report", "--run-dir", str(tmp_path), "--out", str(tmp_path / "r.md")])
    assert isinstance(result.exception, EvalError)
    assert "no eval.json" in str(result.exception)


# --- compare by name -------------------------------------------------------------------------------


def _result(weights: str, model_classes: list[str], rows: dict[str, float | None]) -> EvalResult:
    classes = [
        ClassMetrics(
            name, 3 if v is not None else 0, 5 if v is not None else 0, v, v, v, None if v is None else v / 2
        )
        for name, v in rows.items()
    ]
    known = [v for v in rows.values() if v is not None]
    mean = sum(known) / len(known)
    return EvalResult(
        weights,
        "data.yaml",
        "test",
        640,
        mean,
        mean,
        mean,
        mean / 2,
        classes,
        {"inference": 1.0},
        model_classes,
    )


def test_remap_by_name():
    assert _remap(["person", "Apple", "milk carton"], ["apple", "milk_carton"]) == [-1, 0, 1]
    assert _remap(list(CLASSES), list(CLASSES)) is None


def test_default_out_names_the_dataset_so_two_comparisons_do_not_collide():
    # The walk-through compares the same two models on the synthetic test split, then on the real photos.
    synthetic = default_out("compare", ["coco", "tuned"], Path("data/merged/data.yaml"), "test")
    real = default_out("compare", ["coco", "tuned"], "data/real/data.yaml", "test")
    assert synthetic != real
    assert synthetic == Path("runs/compare/coco-vs-tuned-merged-test")
    assert default_out("eval", ["m"], "my shelf.yaml", "val") == Path("runs/eval/m-my_shelf-val")


def test_compare_matches_classes_by_name(tmp_path):
    data_rows = {"apple": 0.2, "orange": 0.1, "banana": 0.3, "milk_carton": 0.0, "cereal_box": None}
    # A COCO-style baseline: its own class order, capitalised names, no milk_carton/cereal_box.
    baseline = _result("yolov8n.pt", ["person", "Banana", "Apple", "Orange"], data_rows)
    tuned_rows = {"apple": 0.8, "orange": 0.6, "banana": 0.9, "milk_carton": 0.7, "cereal_box": None}
    tuned = _result("best.pt", list(data_rows), tuned_rows)

    rows = {c.name: c for c in compare_results(baseline, tuned)}
    assert list(rows) == list(data_rows)
    assert rows["apple"].delta("map50") == pytest.approx(0.6)
    assert rows["banana"].delta("map50") == pytest.approx(0.6)
    assert rows["milk_carton"].baseline is None  # the baseline does not know it: counts as 0
    assert rows["milk_carton"].delta("map50") == pytest.approx(0.7)
    assert rows["cereal_box"].delta("map50") is None  # no instances in the split

    comp = Comparison(baseline, tuned)
    assert comp.overall_deltas()["map50"] == pytest.approx(tuned.map50 - baseline.map50)
    md = comp.to_markdown()
    assert "| milk_carton | — | 0.700 | +0.700 |" in md
    assert "| apple | 0.200 | 0.800 | +0.600 |" in md
    png = plot_comparison(comp, tmp_path / "c.png")
    assert cv2.imread(str(png)) is not None
    assert Comparison.from_dict(json.loads(json.dumps(comp.to_dict()))).to_dict() == comp.to_dict()


def test_report_links_are_relative(tmp_path):
    plots = tmp_path / "runs" / "eval"
    plots.mkdir(parents=True)
    result = _result("best.pt", list(CLASSES[:2]), {"apple": 0.5, "orange": 0.25})
    result.confusion_png = str(plots / "confusion.png")
    errors = ErrorReport("test", 0.25, 0.5, [ModelErrors("a", 3, 1, 2, fp_gallery=str(plots / "fp.png"))])
    out = write_report(
        tmp_path / "docs" / "report.md", eval=result, errors=errors, check_report="all labels valid"
    )
    text = out.read_text()
    assert "](../runs/eval/confusion.png)" in text
    assert "](../runs/eval/fp.png)" in text
    assert "| a | 3 | 1 | 2 | 0.750 | 0.600 | 0.667 |" in text
    assert text.index("## Dataset check") < text.index("## Evaluation") < text.index("## Errors")
    with pytest.raises(EvalError, match="nothing to report"):
        write_report(tmp_path / "empty.md")


def test_report_includes_the_dataset_check(dataset, tmp_path):
    from train.dataset import check

    checked = check(dataset, out_dir=tmp_path / "check", fix=False)
    out = write_report(tmp_path / "report.md", check_report=checked)
    text = out.read_text()
    assert "| train | " in text and "| apple | " in text  # tables, not pasted text
    assert "```" not in text
    assert "](check/class_distribution.png)" in text


# --- end to end ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_evaluate_compare_errors_report(tmp_path):
    import torch

    from train.errors import analyse as analyse_real
    from train.evaluate import compare
    from train.fit import FitOptions, fit

    data = write_dataset(tmp_path / "data", 16, seed=5)  # 11 train, 3 val, 2 test
    opts = FitOptions(
        model="yolov8n.yaml",
        epochs=1,
        imgsz=64,
        batch=4,
        device="cpu",
        workers=0,
        project=str(tmp_path),
        plots=False,
    )
    fitted = fit(data, opts)
    assert fitted.best.is_file()
    assert fitted.metrics and all(np.isfinite(v) for v in fitted.metrics.values())

    # A "baseline" with foreign class names (COCO-like): compare must match classes by name.
    ckpt = torch.load(fitted.best, weights_only=False)
    ckpt["model"].names = {0: "person", 1: "Orange", 2: "apple", 3: "car", 4: "dog", 5: "cat"}
    baseline = tmp_path / "baseline.pt"
    torch.save(ckpt, baseline)

    runs = tmp_path / "runs"
    common = {"split": "val", "imgsz": 64, "device": "cpu"}
    result = evaluate(fitted.best, data, out_dir=runs / "eval", batch=4, **common)
    for v in (result.precision, result.recall, result.map50, result.map50_95):
        assert 0.0 <= v <= 1.0
    assert [c.name for c in result.classes] == list(CLASSES)
    assert sum(c.instances for c in result.classes) == sum(1 for ln in _val_labels(data) if ln.strip())
    assert Path(result.confusion_png).is_file() and (runs / "eval" / "eval.json").is_file()
    assert np.asarray(result.confusion_matrix).shape == (len(CLASSES) + 1,) * 2

    onnx = Path(__import__("ultralytics").YOLO(str(fitted.best)).export(format="onnx", imgsz=64))
    onnx_result = evaluate(onnx, data, out_dir=runs / "onnx", **common)
    assert 0.0 <= onnx_result.map50 <= 1.0

    comp = compare(baseline, fitted.best, data, out_dir=runs / "compare", **common)
    rows = {c.name: c for c in comp.classes}
    assert rows["banana"].baseline is None and rows["apple"].baseline is not None
    # The baseline only predicts 'apple' and 'Orange' (remapped): other classes' matrix rows stay empty.
    base_matrix = np.asarray(comp.baseline.confusion_matrix)
    assert base_matrix[2:-1].sum() == 0
    assert (runs / "compare" / "compare.png").is_file()

    # conf 0.001: a one-epoch model is unsure of everything, and the galleries need predictions to show.
    errors = analyse_real(
        [baseline, fitted.best],
        data,
        split="val",
        conf=0.001,
        imgsz=64,
        out_dir=runs / "errors",
        device="cpu",
    )
    assert [m.name for m in errors.models] == ["baseline.pt", "train/best.pt"]
    n_val = len(split_images(data, "val"))
    for m in errors.models:
        assert len(m.images) == n_val and 0.0 <= m.f1 <= 1.0
        assert m.tp + m.fn == sum(len(r.gt_boxes) for r in m.images)
        assert m.tp + m.fp == sum(len(r.pred_boxes) for r in m.images)
        assert (m.fp_gallery is not None) == (m.fp > 0) and (m.fn_gallery is not None) == (m.fn > 0)
    assert errors.models[1].fp > 0 and Path(errors.models[1].fp_gallery).is_file()

    app = typer.Typer()
    register(app)
    out = tmp_path / "report.md"
    res = CliRunner().invoke(app, ["report", "--run-dir", str(runs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "## Evaluation" in text and "## Before vs after" in text and "## Errors" in text
    assert set(collect(runs).names()) == {"eval", "comparison", "errors"}


def _val_labels(data: Path) -> list[str]:
    return [
        ln
        for p in sorted((data.parent / "labels" / "val").glob("*.txt"))
        for ln in p.read_text().splitlines()
    ]

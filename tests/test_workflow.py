"""The training workflow as a user runs it: where fit writes, resume, predict, eval per model version, report.

One tiny real training run (yolov8n.yaml from scratch, 1 epoch, imgsz 64) is shared by the module; the
commands run as subprocesses in a fresh working folder, with Ultralytics' global ``runs_dir`` setting
pointed somewhere else to prove it is not followed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import yaml

from edge.model import DEFAULT_MODEL
from train.synth import write_dataset

pytestmark = pytest.mark.slow


def _train(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "train.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("workflow")
    config, elsewhere, work = root / "ultralytics", root / "elsewhere", root / "work"
    work.mkdir()
    env = {**os.environ, "YOLO_CONFIG_DIR": str(config), "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg"}
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from ultralytics.utils import SETTINGS; SETTINGS.update(runs_dir={str(elsewhere)!r})",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    data = write_dataset(work / "data", 16, seed=5)  # 11 train, 3 val, 2 test
    fit = _train(
        work, env, "fit", str(data), "--model", "yolov8n.yaml", "--epochs", "1", "--imgsz", "64",
        "--batch", "4", "--device", "cpu",
    )  # fmt: skip
    assert fit.returncode == 0, fit.stdout + fit.stderr
    return {"work": work, "env": env, "data": data, "elsewhere": elsewhere, "fit": fit}


def test_fit_writes_under_the_current_folder_and_says_where_best_pt_is(run: dict) -> None:
    work = run["work"]
    assert "best: runs/fit/train/weights/best.pt" in run["fit"].stdout.splitlines()
    assert (work / "runs" / "fit" / "train" / "weights" / "best.pt").is_file()
    assert not run["elsewhere"].exists()  # Ultralytics' runs_dir setting was not followed
    assert (work / "runs" / "fit" / "train" / "results.png").is_file()  # curves on by default, offline


def test_bias_warm_up_is_off_from_pretrained_weights_unless_asked(run: dict) -> None:
    work = run["work"]
    args = yaml.safe_load((work / "runs" / "fit" / "train" / "args.yaml").read_text())
    assert args["warmup_bias_lr"] == 0.1  # from a .yaml: Ultralytics' warm-up for random biases
    best = "runs/fit/train/weights/best.pt"  # the runs below go outside runs/, which the report test reads
    for name, extra, want in (("from-pt", [], 0.0), ("asked", ["--warmup-bias-lr", "0.05"], 0.05)):
        res = _train(
            work, run["env"], "fit", str(run["data"]), "--model", best, "--epochs", "1", "--imgsz", "64",
            "--batch", "4", "--device", "cpu", "--project", "warmup", "--name", name, "--no-plots", *extra,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        tuned = yaml.safe_load((work / "warmup" / name / "args.yaml").read_text())
        assert tuned["warmup_bias_lr"] == want, name


def test_resume_of_a_finished_run_is_one_line_and_creates_nothing(run: dict) -> None:
    work = run["work"]
    before = sorted(p for p in work.rglob("*") if "predict" not in p.parts)
    last = "runs/fit/train/weights/last.pt"
    res = _train(work, run["env"], "fit", str(run["data"]), "--resume", last)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {last}: that run finished (1 epochs); nothing to resume. To train further start a new "
        f"run: fit DATA --model {last}"
    ]
    assert sorted(p for p in work.rglob("*") if "predict" not in p.parts) == before
    assert not run["elsewhere"].exists() and not (work / "datasets").exists()


def test_predict_draws_and_lists_detections_image_by_image(run: dict, tmp_path: Path) -> None:
    work, images = run["work"], run["data"].parent / "images" / "val"
    res = _train(work, run["env"], "predict", str(DEFAULT_MODEL), str(images), "--out", str(tmp_path / "all"))
    assert res.returncode == 0, res.stderr
    found = json.loads((tmp_path / "all" / "detections.json").read_text())
    assert found["version"] and found["names"][0] == "apple"
    assert [r["source"] for r in found["results"]] == sorted(p.name for p in images.iterdir())
    first = found["results"][0]
    assert first["detections"], "the first photo gets its boxes at once (no track to confirm)"
    rows = (tmp_path / "all" / "detections.csv").read_text().splitlines()
    assert len(rows) - 1 == sum(len(r["detections"]) for r in found["results"])
    drawn = cv2.imread(str(tmp_path / "all" / first["source"]))
    assert drawn is not None and (drawn != cv2.imread(str(images / first["source"]))).any()
    # each photo alone gives the same detections: nothing is carried from one photo to the next
    last = images / found["results"][-1]["source"]
    alone = _train(work, run["env"], "predict", str(DEFAULT_MODEL), str(last), "--out", str(tmp_path / "one"))
    assert alone.returncode == 0, alone.stderr
    one = json.loads((tmp_path / "one" / "detections.json").read_text())["results"][0]
    assert one["detections"] == found["results"][-1]["detections"]
    # a .pt model, through Ultralytics; an unknown suffix is one line
    pt = _train(work, run["env"], "predict", "runs/fit/train/weights/best.pt", str(last), "--conf", "0.001")
    assert pt.returncode == 0, pt.stderr
    assert "annotated: runs/predict/" in pt.stdout
    bad = _train(work, run["env"], "predict", str(run["data"] / "data.yaml"), str(last))
    assert bad.returncode == 2 and "expected an .onnx or .pt model" in bad.stderr


def test_predict_on_a_video_writes_an_annotated_video(run: dict, tmp_path: Path) -> None:
    from train.synth_video import render_video

    render_video(tmp_path / "v", 2.0, seed=4)
    res = _train(run["work"], run["env"], "predict", str(DEFAULT_MODEL), str(tmp_path / "v" / "video.mp4"),
                 "--out", str(tmp_path / "p"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    cap = cv2.VideoCapture(str(tmp_path / "p" / "video.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    frames = json.loads((tmp_path / "p" / "detections.json").read_text())["results"]
    assert [r["frame"] for r in frames] == list(range(30))


def test_eval_per_model_version_and_a_report_of_them_all(run: dict) -> None:
    work, env, data = run["work"], run["env"], str(run["data"])
    common = ["--data", data, "--split", "test", "--device", "cpu"]
    pt = _train(work, env, "eval", "runs/fit/train/weights/best.pt", *common, "--imgsz", "64")
    onnx = _train(work, env, "eval", str(DEFAULT_MODEL), *common, "--imgsz", "320")
    assert pt.returncode == 0 and onnx.returncode == 0, pt.stderr + onnx.stderr
    folders = sorted(p.parent for p in (work / "runs" / "eval").rglob("eval.json"))
    assert len(folders) == 2  # two model versions: two folders, nothing overwritten
    demo = json.loads(
        next(f for f in folders if f.name.startswith("demo-")).joinpath("eval.json").read_text()
    )
    assert demo["version"] == json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())["version"]
    assert demo["imgsz"] == 320 and demo["fps"] > 0 and demo["device"].startswith("cpu")
    assert all(f.name.endswith(f"-{Path(data).parent.name}-test") for f in folders)

    check = _train(work, env, "check", data, "--md", "check.md")
    assert check.returncode == 0, check.stderr
    rep = _train(work, env, "report", "--out", "docs/report.md", "--check", "check.md")
    assert rep.returncode == 0, rep.stderr
    assert "using runs/fit/train" in rep.stdout and rep.stdout.count("eval.json") == 2
    text = (work / "docs" / "report.md").read_text()
    assert "## Training" in text and "](../runs/fit/train/results.png)" in text
    assert "| `train` | yolov8n.yaml | `data.yaml` | 1 | 64 | 4 |" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| `") and "| test |" in ln]
    versions = {json.loads((f / "eval.json").read_text())["version"] for f in folders}
    assert demo["version"] in versions and len(versions) == 2
    assert {r.split("|")[2].strip() for r in rows} == {f"`{v}`" for v in versions}
    assert (
        "| train | 11 | 11 |" in text and "](../data/check/samples.png)" in text
    )  # check tables, links re-rooted

    only = _train(
        work, env, "report", "--out", "one.md", "--run", str(next(f for f in folders if "demo" in f.name))
    )
    assert only.returncode == 0, only.stderr
    assert only.stdout.count("using ") == 1 and "## Training" not in (work / "one.md").read_text()

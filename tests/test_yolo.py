"""YOLOv8 pre/post-processing: exact boxes from hand-made outputs, agreement with Ultralytics' code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.config import BackendConfig, ModelConfig
from edge.detections import Detections, box_iou
from edge.errors import ModelError
from edge.model import DEFAULT_MODEL
from edge.yolo import PAD_VALUE, LetterboxInfo, decode, letterbox, scale_boxes


def make_output(
    rows: list[tuple[float, float, float, float, int, float]], nc: int, anchors: int = 0
) -> np.ndarray:
    """A raw (1, 4+nc, A) head output: one anchor per (cx, cy, w, h, class, score), then empty anchors."""
    out = np.zeros((1, 4 + nc, len(rows) + anchors), np.float32)
    for a, (cx, cy, w, h, cls, score) in enumerate(rows):
        out[0, :4, a] = cx, cy, w, h
        out[0, 4 + cls, a] = score
    return out


# --- letterbox -------------------------------------------------------------------------------------


def test_letterbox_landscape_frame_is_padded_top_and_bottom() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[..., 0] = 255  # pure blue in BGR
    blob, info = letterbox(frame, 320)
    assert blob.shape == (1, 3, 320, 320) and blob.dtype == np.float32 and blob.flags.c_contiguous
    assert info == LetterboxInfo(scale=0.5, pad_x=0, pad_y=40)
    grey = PAD_VALUE / 255
    np.testing.assert_allclose(blob[0, :, :40], grey, atol=1e-6)
    np.testing.assert_allclose(blob[0, :, 280:], grey, atol=1e-6)
    # RGB order: blue lands in channel 2.
    np.testing.assert_allclose(blob[0, 2, 40:280], 1.0)
    np.testing.assert_allclose(blob[0, :2, 40:280], 0.0)


def test_letterbox_portrait_frame_is_padded_left_and_right() -> None:
    blob, info = letterbox(np.full((200, 100, 3), 7, np.uint8), 100)
    assert info == LetterboxInfo(scale=0.5, pad_x=25, pad_y=0)
    np.testing.assert_allclose(blob[0, :, :, :25], PAD_VALUE / 255, atol=1e-6)
    np.testing.assert_allclose(blob[0, :, :, 25:75], 7 / 255, atol=1e-6)


@pytest.mark.parametrize("shape", [(37, 100), (480, 640), (101, 33), (64, 64), (1080, 1920)])
def test_letterbox_matches_ultralytics(shape: tuple[int, int]) -> None:
    augment = pytest.importorskip(
        "ultralytics.data.augment", reason="ultralytics (train extra) not installed"
    )
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    blob, _ = letterbox(frame, 64)
    theirs = augment.LetterBox((64, 64), auto=False)(image=frame)  # BGR HWC uint8
    ours = np.round(blob[0].transpose(1, 2, 0)[..., ::-1] * 255).astype(np.uint8)
    np.testing.assert_array_equal(ours, theirs)


def test_letterbox_rejects_grayscale() -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        letterbox(np.zeros((10, 10), np.uint8), 32)


# --- decode ----------------------------------------------------------------------------------------


def test_decode_exact_boxes_threshold_and_class_aware_nms() -> None:
    rows = [
        (50, 50, 20, 20, 0, 0.90),  # kept
        (52, 50, 20, 20, 0, 0.80),  # IoU 0.82 with the first, same class: suppressed
        (52, 50, 20, 20, 1, 0.70),  # same place, other class: kept
        (150, 100, 40, 10, 2, 0.60),  # kept
        (10, 10, 4, 4, 1, 0.20),  # below conf: dropped
    ]
    dets = decode(make_output(rows, nc=3, anchors=10), conf=0.25, iou=0.45, nc=3)
    np.testing.assert_allclose(dets.xyxy, [[40, 40, 60, 60], [42, 40, 62, 60], [130, 95, 170, 105]])
    np.testing.assert_allclose(dets.confidence, [0.9, 0.7, 0.6])
    assert dets.class_id.tolist() == [0, 1, 2]


def test_decode_iou_threshold_is_exclusive() -> None:
    # IoU of the two boxes is exactly 0.6: suppressed only when the threshold is below it.
    rows = [(5, 5, 10, 10, 0, 0.9), (5, 3, 10, 6, 0, 0.8)]
    assert len(decode(make_output(rows, 1), conf=0.1, iou=0.6)) == 2
    assert len(decode(make_output(rows, 1), conf=0.1, iou=0.59)) == 1


def test_decode_takes_best_class_per_anchor() -> None:
    out = make_output([(20, 20, 10, 10, 0, 0.3)], nc=3)
    out[0, 4 + 2, 0] = 0.8
    dets = decode(out, conf=0.25, nc=3)
    assert dets.class_id.tolist() == [2] and dets.confidence.tolist() == pytest.approx([0.8])


def test_decode_classes_filter_and_max_det() -> None:
    rows = [(20 + 30 * i, 20, 10, 10, i % 3, 0.5 + 0.04 * i) for i in range(9)]
    dets = decode(make_output(rows, nc=3), conf=0.25, classes=[1, 2], max_det=4)
    assert dets.class_id.tolist() == [2, 1, 2, 1]
    assert np.all(np.diff(dets.confidence) < 0)


def test_decode_no_detections() -> None:
    dets = decode(make_output([(5, 5, 4, 4, 0, 0.1)], nc=2, anchors=100), conf=0.25, nc=2)
    assert len(dets) == 0 and dets.xyxy.shape == (0, 4)
    assert len(decode(np.zeros((1, 6, 0), np.float32), nc=2)) == 0


def test_decode_wrong_class_count_names_model_and_numbers() -> None:
    with pytest.raises(ModelError) as err:
        decode(np.zeros((1, 84, 10), np.float32), nc=6, model="demo.onnx")
    msg = str(err.value)
    assert "demo.onnx" in msg and "84" in msg and "6 class names" in msg and "\n" not in msg


def test_decode_rejects_non_yolo_shape() -> None:
    with pytest.raises(ModelError, match="expected a YOLOv8 output"):
        decode(np.zeros((2, 10, 5), np.float32))


def test_decode_matches_ultralytics_nms() -> None:
    torch = pytest.importorskip("torch", reason="torch (train extra) not installed")
    nms = pytest.importorskip("ultralytics.utils.nms", reason="ultralytics not installed")
    rng = np.random.default_rng(3)
    nc, anchors = 5, 400
    out = np.empty((1, 4 + nc, anchors), np.float32)
    out[0, :2] = rng.uniform(0, 320, (2, anchors))
    out[0, 2:4] = rng.uniform(8, 80, (2, anchors))
    out[0, 4:] = rng.uniform(0, 1, (nc, anchors)) ** 3
    ours = decode(out, conf=0.25, iou=0.5, max_det=50, nc=nc)
    theirs = nms.non_max_suppression(torch.from_numpy(out), conf_thres=0.25, iou_thres=0.5, max_det=50)[
        0
    ].numpy()
    assert len(ours) == len(theirs) > 10
    np.testing.assert_allclose(ours.xyxy, theirs[:, :4], atol=1e-3)
    np.testing.assert_allclose(ours.confidence, theirs[:, 4], atol=1e-6)
    assert ours.class_id.tolist() == theirs[:, 5].astype(int).tolist()


# --- scale_boxes -----------------------------------------------------------------------------------


def test_scale_boxes_inverts_letterbox_and_clips() -> None:
    frame_shape = (480, 640, 3)
    _, info = letterbox(np.zeros(frame_shape, np.uint8), 320)
    truth = np.array([[10, 20, 110, 220], [600, 400, 640, 480]], np.float32)
    net = truth * info.scale + np.array([info.pad_x, info.pad_y] * 2, np.float32)
    back = scale_boxes(Detections(net, np.ones(2), np.zeros(2)), info, frame_shape)
    np.testing.assert_allclose(back.xyxy, truth, atol=1e-4)
    outside = Detections(np.array([[-10, 30, 340, 330]], np.float32), np.ones(1), np.zeros(1))
    np.testing.assert_allclose(scale_boxes(outside, info, frame_shape).xyxy, [[0, 0, 640, 480]])


def test_scale_boxes_empty() -> None:
    assert len(scale_boxes(Detections.empty(), LetterboxInfo(1.0, 0, 0), (10, 10, 3))) == 0


# --- the committed demo model ----------------------------------------------------------------------


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason=f"{DEFAULT_MODEL} not committed yet")
def test_demo_model_finds_synthetic_products() -> None:
    from edge.backends import create_detector
    from edge.model import load_model_info
    from train.synth import render_scene

    info = load_model_info(ModelConfig(path=str(DEFAULT_MODEL)))
    detector = create_detector(BackendConfig(type="onnxruntime", device="cpu"), info)
    found = total = 0
    for seed in range(4):
        scene = render_scene(np.random.default_rng(seed))
        dets = detector.detect(scene.image)
        for obj in scene.objects:
            total += 1
            iou = box_iou([obj.box], dets.xyxy)[0] if len(dets) else np.zeros(0)
            found += bool(np.any((iou > 0.5) & (dets.class_id == obj.class_id)))
    assert total > 0 and found >= 1
    assert found / total >= 0.5, f"only {found} of {total} products detected with the right class"


def test_default_model_path_is_package_data() -> None:
    assert Path(__file__).resolve().parent.parent / "edge" / "models" / "demo.onnx" == DEFAULT_MODEL

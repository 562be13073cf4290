"""Model metadata and detector backends with real ONNX Runtime (and Ultralytics where installed).

Two models are built here, nothing is downloaded: a YOLOv8n exported by Ultralytics with random weights
(real architecture and metadata, 80 classes, 160 px), and a tiny ONNX graph whose output is a constant
head tensor, so the boxes a backend must return in frame pixels are known exactly. TensorRT cannot run
here: its test is marked ``tensorrt`` and skipped unless the module is importable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import edge.backends as backends
from edge.backends import Detector, available, create_detector, register, registered
from edge.config import BackendConfig, ModelConfig
from edge.detections import Detections
from edge.errors import BackendError, BackendUnavailable, ModelError
from edge.model import ModelInfo, load_model_info, split_engine_header

COCO_NAMES = [f"class{i}" for i in range(80)]
CONST_NAMES = ["apple", "orange", "banana"]
CONST_SIZE = 160
# Network-pixel head rows (cx, cy, w, h, class, score) of the constant model.
CONST_ROWS = [
    (80, 80, 40, 20, 0, 0.9),
    (81, 80, 40, 20, 0, 0.5),
    (30, 60, 10, 10, 2, 0.7),
    (5, 5, 4, 4, 1, 0.1),
]


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="session")
def yolo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YOLOv8n ONNX export with random weights and Ultralytics' metadata_props (no JSON next to it)."""
    ultralytics = pytest.importorskip("ultralytics", reason="ultralytics (train extra) builds the test model")
    out = tmp_path_factory.mktemp("yolo")
    # Ultralytics writes the export next to the .yaml name, i.e. the cwd; torch's exporter warns a lot.
    with contextlib.chdir(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(
            ultralytics.YOLO("yolov8n.yaml").export(format="onnx", imgsz=160, opset=12, verbose=False)
        )
        return path.resolve()


@pytest.fixture(scope="session")
def const_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX model mapping any (1,3,160,160) image to a fixed YOLOv8 head output, plus its JSON."""
    onnx = pytest.importorskip("onnx", reason="onnx builds the test model")
    from onnx import TensorProto, helper, numpy_helper

    head = np.zeros((1, 4 + len(CONST_NAMES), 20), np.float32)
    for a, (cx, cy, w, h, cls, score) in enumerate(CONST_ROWS):
        head[0, :4, a] = cx, cy, w, h
        head[0, 4 + cls, a] = score
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),  # ties the output to the input
        helper.make_node("Add", ["head", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "const-yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, CONST_SIZE, CONST_SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(head.shape))],
        [numpy_helper.from_array(head, "head"), numpy_helper.from_array(np.zeros(1, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    # What Ultralytics' AutoBackend reads when it loads an ONNX file (the ultralytics backend test).
    props = {"names": str(dict(enumerate(CONST_NAMES))), "imgsz": str([CONST_SIZE] * 2), "stride": "32"}
    helper.set_model_props(model, props | {"task": "detect", "batch": "1"})
    out = tmp_path_factory.mktemp("const") / "const.onnx"
    onnx.save(model, out)
    out.with_suffix(".json").write_text(
        json.dumps({"names": CONST_NAMES, "imgsz": CONST_SIZE, "version": "t1"})
    )
    return out


def expected_const_boxes(info_scale: float, pad_x: int, pad_y: int) -> np.ndarray:
    """Frame-pixel boxes the constant model must yield after NMS (0.9 apple, 0.7 banana)."""
    net = np.array([[60, 70, 100, 90], [25, 55, 35, 65]], np.float32)
    return (net - [pad_x, pad_y, pad_x, pad_y]) / info_scale


# --- model metadata --------------------------------------------------------------------------------


def test_model_info_from_json_list(const_onnx: Path) -> None:
    info = load_model_info(ModelConfig(path=str(const_onnx)))
    assert info.names == tuple(CONST_NAMES) and info.imgsz == CONST_SIZE and info.version == "t1"
    assert info.path == const_onnx and len(info.sha256) == 64 and info.nc == 3


def test_model_info_relative_to_base_dir_and_dict_names(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"weights")
    (tmp_path / "m.json").write_text(json.dumps({"names": {"1": "b", "0": "a"}, "imgsz": [320, 320]}))
    info = load_model_info(ModelConfig(path="m.onnx"), base_dir=tmp_path)
    assert info.names == ("a", "b") and info.imgsz == 320
    assert info.version == info.sha256[:12]  # no version in the metadata: the checksum stands in


def test_model_info_config_overrides_metadata(const_onnx: Path) -> None:
    info = load_model_info(ModelConfig(path=str(const_onnx), names=["x", "y", "z"], imgsz=320))
    assert info.names == ("x", "y", "z") and info.imgsz == 320


def test_model_info_from_ultralytics_onnx_metadata(yolo_onnx: Path) -> None:
    assert not yolo_onnx.with_suffix(".json").exists()
    info = load_model_info(ModelConfig(path=str(yolo_onnx)))
    assert len(info.names) == 80 and info.names[:2] == ("0", "1") and info.imgsz == 160


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "must be a JSON object"),
        ('{"imgsz": 320}', "no class names"),
        ('{"names": ["a"]}', "no input size"),
        ('{"names": ["a"], "imgsz": [320, 256]}', "only square inputs"),
        ('{"names": {"0": "a", "2": "c"}, "imgsz": 320}', "without gaps"),
        ('{"names": [], "imgsz": 320}', "empty"),
    ],
)
def test_model_info_bad_metadata_is_one_line_naming_the_file(tmp_path: Path, meta: str, message: str) -> None:
    (tmp_path / "m.engine").write_bytes(b"plan")
    (tmp_path / "m.json").write_text(meta)
    with pytest.raises(ModelError, match=message) as err:
        load_model_info(ModelConfig(path=str(tmp_path / "m.engine")))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_model_info_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found") as err:
        load_model_info(ModelConfig(path=str(tmp_path / "nope.onnx")))
    assert "nope.onnx" in str(err.value)
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"meta\.json: model metadata file not found"):
        load_model_info(ModelConfig(path=str(tmp_path / "m.onnx"), meta="meta.json"), base_dir=tmp_path)


def test_model_info_corrupt_onnx_without_json(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="not a valid ONNX model") as err:
        load_model_info(ModelConfig(path=str(tmp_path / "bad.onnx")))
    assert "\n" not in str(err.value)


def test_engine_header_of_ultralytics_exports(tmp_path: Path) -> None:
    meta = {"names": {"0": "apple", "1": "pear"}, "imgsz": [320, 320]}
    text = json.dumps(meta).encode()
    plan = b"\x01\x02plan-bytes"
    assert split_engine_header(len(text).to_bytes(4, "little") + text + plan) == (meta, plan)
    assert split_engine_header(plan) == (None, plan)
    assert split_engine_header(b"\x05\x00\x00\x00{abcd") == (None, b"\x05\x00\x00\x00{abcd")
    (tmp_path / "u.engine").write_bytes(len(text).to_bytes(4, "little") + text + plan)
    info = load_model_info(ModelConfig(path=str(tmp_path / "u.engine")))
    assert info.names == ("apple", "pear") and info.imgsz == 320


# --- registry --------------------------------------------------------------------------------------


def test_registry_lists_builtin_backends() -> None:
    assert {"onnxruntime", "tensorrt", "ultralytics"} <= set(registered())
    assert "onnxruntime" in available()
    assert ("tensorrt" in available()) == (
        _has("tensorrt") and (_has("cuda.bindings.runtime") or _has("cuda.cudart"))
    )


@pytest.mark.skipif(_has("tensorrt"), reason="tensorrt is installed here")
def test_tensorrt_unavailable_is_one_clear_line(const_onnx: Path) -> None:
    info = load_model_info(ModelConfig(path=str(const_onnx)))
    with pytest.raises(BackendUnavailable) as err:
        create_detector(BackendConfig(type="tensorrt"), info)
    assert (
        str(err.value)
        == "tensorrt: Python module 'tensorrt' not importable (install JetPack's python3-libnvinfer)"
    )


def test_missing_runtime_module_is_backend_unavailable(
    monkeypatch: pytest.MonkeyPatch, const_onnx: Path
) -> None:
    monkeypatch.setattr(backends, "_FACTORIES", {})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` sees when not installed
    info = load_model_info(ModelConfig(path=str(const_onnx)))
    with pytest.raises(
        BackendUnavailable, match=r"^onnxruntime: Python module 'onnxruntime' not importable \("
    ):
        create_detector(BackendConfig(type="onnxruntime"), info)


def test_register_a_custom_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_FACTORIES", dict(backends._FACTORIES))

    @register("fixed")
    class Fixed(Detector):
        def __init__(self, cfg: BackendConfig, model: ModelInfo) -> None:
            self.names, self.timings = model.names, {}

        def detect(self, frame: np.ndarray) -> Detections:
            return Detections(np.array([[0, 0, frame.shape[1], frame.shape[0]]]), np.ones(1), np.zeros(1))

    info = ModelInfo(Path("x"), ("a",), 32, "v", "0" * 64)
    det = create_detector(BackendConfig.model_construct(type="fixed"), info)
    assert isinstance(det, Fixed) and "fixed" in registered() and "fixed" in available()
    assert det.detect(np.zeros((4, 6, 3), np.uint8)).xyxy.tolist() == [[0, 0, 6, 4]]
    with pytest.raises(BackendUnavailable, match="unknown backend"):
        create_detector(BackendConfig.model_construct(type="nope"), info)


# --- ONNX Runtime ----------------------------------------------------------------------------------


def test_onnxruntime_returns_exact_frame_boxes(const_onnx: Path) -> None:
    info = load_model_info(ModelConfig(path=str(const_onnx)))
    with create_detector(BackendConfig(type="onnxruntime", device="cpu", threads=1), info) as det:
        assert det.names == tuple(CONST_NAMES) and det.providers == ["CPUExecutionProvider"]
        det.warmup()
        dets = det.detect(np.zeros((480, 640, 3), np.uint8))  # letterbox: scale 0.25, pad_y 20
        assert set(det.timings) == {"preprocess", "inference", "postprocess"}
        assert all(v >= 0 for v in det.timings.values()) and det.timings["inference"] > 0
    np.testing.assert_allclose(dets.xyxy, expected_const_boxes(0.25, 0, 20), atol=1e-3)
    np.testing.assert_allclose(dets.confidence, [0.9, 0.7])
    assert dets.class_id.tolist() == [0, 2]


def test_onnxruntime_config_thresholds_apply(const_onnx: Path) -> None:
    info = load_model_info(ModelConfig(path=str(const_onnx)))
    frame = np.zeros((160, 160, 3), np.uint8)
    strict = create_detector(BackendConfig(type="onnxruntime", device="cpu", conf=0.8), info).detect(frame)
    assert strict.class_id.tolist() == [0]
    no_nms = create_detector(BackendConfig(type="onnxruntime", device="cpu", iou=0.99, classes=[0]), info)
    assert no_nms.detect(frame).confidence.tolist() == pytest.approx([0.9, 0.5])


def test_onnxruntime_class_count_mismatch_names_both_numbers(const_onnx: Path, tmp_path: Path) -> None:
    info = load_model_info(ModelConfig(path=str(const_onnx), names=["a", "b"]))
    with pytest.raises(ModelError) as err:
        create_detector(BackendConfig(type="onnxruntime"), info)
    msg = str(err.value)
    assert "const.onnx" in msg and "7 channels" in msg and "names 2 classes" in msg


def test_onnxruntime_imgsz_mismatch(const_onnx: Path) -> None:
    info = load_model_info(ModelConfig(path=str(const_onnx), imgsz=320))
    with pytest.raises(ModelError, match=r"input shape \[1, 3, 160, 160\] does not match imgsz 320"):
        create_detector(BackendConfig(type="onnxruntime"), info)


def test_onnxruntime_corrupt_model_is_model_error(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 50)
    (tmp_path / "bad.json").write_text(json.dumps({"names": ["a"], "imgsz": 64}))
    info = load_model_info(ModelConfig(path=str(tmp_path / "bad.onnx")))
    with pytest.raises(ModelError, match=r"bad\.onnx: not a valid ONNX model") as err:
        create_detector(BackendConfig(type="onnxruntime"), info)
    assert "\n" not in str(err.value)


def test_onnxruntime_runs_a_real_yolov8_export(yolo_onnx: Path) -> None:
    info = load_model_info(ModelConfig(path=str(yolo_onnx)))
    det = create_detector(BackendConfig(type="onnxruntime", device="auto", conf=0.0, max_det=30), info)
    frame = np.random.default_rng(1).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    dets = det.detect(frame)
    # Random weights: how many boxes survive NMS varies with the initialisation; the contract does not.
    assert 0 < len(dets) <= 30 and np.all(dets.class_id < 80) and np.all(np.diff(dets.confidence) <= 0)
    assert (
        np.all(dets.xyxy >= 0) and np.all(dets.xyxy[:, [0, 2]] <= 480) and np.all(dets.xyxy[:, [1, 3]] <= 360)
    )


# --- Ultralytics -----------------------------------------------------------------------------------


@pytest.mark.skipif(not _has("ultralytics"), reason="ultralytics (train extra) not installed")
def test_ultralytics_backend_gives_the_same_boxes(const_onnx: Path) -> None:
    info = load_model_info(ModelConfig(path=str(const_onnx)))
    frame = np.zeros((480, 640, 3), np.uint8)
    ours = create_detector(BackendConfig(type="onnxruntime", device="cpu"), info).detect(frame)
    ul = create_detector(BackendConfig(type="ultralytics", device="cpu"), info)
    theirs = ul.detect(frame)
    np.testing.assert_allclose(theirs.xyxy, expected_const_boxes(0.25, 0, 20), atol=1e-3)
    np.testing.assert_allclose(theirs.xyxy, ours.xyxy, atol=1e-3)
    assert theirs.class_id.tolist() == ours.class_id.tolist() == [0, 2]
    assert set(ul.timings) == {"preprocess", "inference", "postprocess"}


@pytest.mark.skipif(not _has("ultralytics"), reason="ultralytics (train extra) not installed")
def test_ultralytics_backend_class_count_mismatch(yolo_onnx: Path) -> None:
    info = load_model_info(ModelConfig(path=str(yolo_onnx), names=["a", "b"]))
    with pytest.raises(ModelError, match="the model has 80 classes but the metadata names 2"):
        create_detector(BackendConfig(type="ultralytics"), info)


# --- TensorRT (Jetson / NVIDIA GPU only) -----------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.skipif(not _has("tensorrt"), reason="tensorrt not installed (JetPack's python3-libnvinfer)")
def test_tensorrt_engine_matches_onnxruntime(const_onnx: Path, tmp_path: Path) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(const_onnx.read_bytes()), parser.get_error(0)
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    assert plan is not None
    # Written the way Ultralytics writes engines: a JSON header in front of the plan.
    header = json.dumps({"names": dict(enumerate(CONST_NAMES)), "imgsz": [CONST_SIZE, CONST_SIZE]}).encode()
    engine = tmp_path / "const.engine"
    engine.write_bytes(len(header).to_bytes(4, "little") + header + bytes(plan))
    info = load_model_info(ModelConfig(path=str(engine)))
    assert info.names == tuple(CONST_NAMES)
    with create_detector(BackendConfig(type="tensorrt"), info) as det:
        dets = det.detect(np.zeros((480, 640, 3), np.uint8))
    np.testing.assert_allclose(dets.xyxy, expected_const_boxes(0.25, 0, 20), atol=1e-2)
    assert dets.class_id.tolist() == [0, 2]
    (tmp_path / "junk.engine").write_bytes(b"\x00" * 64)
    junk = ModelInfo(tmp_path / "junk.engine", tuple(CONST_NAMES), CONST_SIZE, "v", "0" * 64)
    with pytest.raises(ModelError, match="cannot deserialize"):
        create_detector(BackendConfig(type="tensorrt"), junk)


class FakeTensorRT(types.ModuleType):
    """The slice of the TensorRT 10 Python API the backend uses; TensorRT cannot be installed here.

    Only TensorRT is faked: the engine "deserializes" from the bytes b"plan" and reports the given IO
    shapes. The CUDA calls are real (cuda-python), so without a GPU they fail with a BackendError.
    """

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__("tensorrt")
        self.__version__ = "10.fake"
        self.shapes = {"images": in_shape, "output0": out_shape}
        self.plans: list[bytes] = []
        fake = self

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, i: int) -> str:
                return ["images", "output0"][i]

            def get_tensor_mode(self, name: str) -> str:
                return fake.TensorIOMode.INPUT if name == "images" else fake.TensorIOMode.OUTPUT

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return fake.shapes[name]

            def get_tensor_dtype(self, name: str) -> str:
                return "float32"

            def create_execution_context(self) -> Context:
                return Context()

        class Context:
            def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
                fake.shapes[name] = tuple(shape)

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                return fake.shapes[name]

            def set_tensor_address(self, name: str, address: int) -> None:
                pass

            def execute_async_v3(self, stream: int) -> bool:
                return True

        class Runtime:
            def __init__(self, logger: object) -> None:
                pass

            def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
                fake.plans.append(plan)
                return Engine() if plan == b"plan" else None

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype: str) -> type:
        return np.float32


@pytest.fixture(autouse=True)
def _forget_fake_tensorrt_backend() -> Iterator[None]:
    """Drop edge.backends.tensorrt if a test imported it against FakeTensorRT."""
    yield
    module = sys.modules.get("edge.backends.tensorrt")
    if module is not None and isinstance(getattr(module, "trt", None), FakeTensorRT):
        del sys.modules["edge.backends.tensorrt"]


def fake_trt_detector(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    plan: bytes,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
) -> tuple[FakeTensorRT, ModelInfo]:
    if not (_has("cuda.bindings.runtime") or _has("cuda.cudart")):
        pytest.skip("cuda-python not installed")
    fake = FakeTensorRT(in_shape, out_shape)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.delitem(sys.modules, "edge.backends.tensorrt", raising=False)
    monkeypatch.setattr(backends, "_FACTORIES", {})
    header = json.dumps({"names": {"0": "apple", "1": "pear"}, "imgsz": [160, 160]}).encode()
    (tmp_path / "m.engine").write_bytes(len(header).to_bytes(4, "little") + header + plan)
    return fake, load_model_info(ModelConfig(path=str(tmp_path / "m.engine")))


def test_tensorrt_backend_strips_ultralytics_header_and_checks_shapes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake, info = fake_trt_detector(monkeypatch, tmp_path, b"plan", (1, 3, 320, 320), (1, 6, 2100))
    assert info.names == ("apple", "pear") and info.imgsz == 160
    with pytest.raises(
        ModelError, match=r"m\.engine: input shape \[1, 3, 320, 320\] does not match imgsz 160"
    ):
        create_detector(BackendConfig(type="tensorrt"), info)
    assert fake.plans == [b"plan"]  # the header never reached TensorRT
    fake.shapes = {"images": (1, 3, -1, -1), "output0": (1, 84, 525)}
    with pytest.raises(ModelError, match=r"output shape \[1, 84, 525\] does not fit 2 classes"):
        create_detector(BackendConfig(type="tensorrt"), info)


def test_tensorrt_backend_rejects_an_engine_it_cannot_deserialize(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, info = fake_trt_detector(monkeypatch, tmp_path, b"other-gpu", (1, 3, 160, 160), (1, 6, 525))
    with pytest.raises(
        ModelError, match=r"cannot deserialize this engine .* rebuild it on this device"
    ) as err:
        create_detector(BackendConfig(type="tensorrt"), info)
    assert "\n" not in str(err.value)


def test_tensorrt_backend_cuda_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, info = fake_trt_detector(monkeypatch, tmp_path, b"plan", (1, 3, 160, 160), (1, 6, 525))
    try:
        det = create_detector(BackendConfig(type="tensorrt"), info)
    except BackendError as exc:  # no GPU/driver here: the real cudart call fails, as one line
        assert str(exc).startswith("tensorrt: cudaStreamCreate failed: cudaError")
        return
    with det:  # a GPU: real buffers, the fake engine writes nothing, so the zero output decodes to nothing
        assert len(det.detect(np.zeros((120, 160, 3), np.uint8))) == 0
        assert det.timings["inference"] > 0


def test_prepared_ahead_gives_the_same_detections(demo_model: Path) -> None:
    from edge.backends.base import Prepared

    det = create_detector(BackendConfig(device="cpu"), load_model_info(ModelConfig(path=str(demo_model))))
    frame = (np.random.default_rng(3).random((480, 640, 3)) * 255).astype(np.uint8)
    direct = det.detect(frame)
    ahead = det.prepare(frame)
    assert isinstance(ahead, Prepared) and ahead.imgsz == 320
    same = det.detect(frame, ahead)
    assert np.array_equal(direct.xyxy, same.xyxy) and np.array_equal(direct.class_id, same.class_id)
    assert det.timings["preprocess"] == ahead.ms
    stale = Prepared(np.zeros((1, 3, 64, 64), np.float32), ahead.info, 64, 0.0)  # from a swapped-out model
    again = det.detect(frame, stale)
    assert np.array_equal(direct.xyxy, again.xyxy) and det.timings["preprocess"] != 0.0

"""ONNX Runtime backend: a YOLOv8 ONNX export on the CPU, or on CUDA with ``onnxruntime-gpu``.

The model is checked against its metadata when the session is created, so a mismatch fails at start-up
with one line instead of producing nonsense boxes: the input must be ``(1, 3, imgsz, imgsz)`` and the
output must have ``4 + len(names)`` channels.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from edge.backends import register
from edge.backends.base import YoloDetector
from edge.config import BackendConfig
from edge.errors import ModelError
from edge.model import ModelInfo

__all__ = ["OnnxRuntimeDetector", "choose_providers"]

log = logging.getLogger(__name__)

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def choose_providers(device: str, installed: list[str]) -> list[str]:
    """Execution providers for ``device`` (``cpu``, ``cuda`` or ``auto``) given the installed ones.

    CUDA comes first when asked for (or ``auto``) and installed; the CPU is always the fallback.
    """
    if device in ("cuda", "auto") and _CUDA in installed:
        return [_CUDA, _CPU]
    if device == "cuda":
        log.warning("onnxruntime: device 'cuda' requested but %s is not installed; running on the CPU", _CUDA)
    return [_CPU]


@register("onnxruntime")
class OnnxRuntimeDetector(YoloDetector):
    """YOLOv8 detector on ONNX Runtime.

    Attributes:
        providers: the execution providers the session actually uses.

    Raises:
        ModelError: the file is not a valid ONNX model, or does not match ``imgsz``/``names``.
    """

    backend_name = "onnxruntime"

    def __init__(self, cfg: BackendConfig, model: ModelInfo) -> None:
        super().__init__(cfg, model)
        opts = ort.SessionOptions()
        if cfg.threads > 0:
            opts.intra_op_num_threads = cfg.threads
        opts.log_severity_level = 3  # errors only: the default prints warnings about unused initializers
        try:
            self._session: Any = ort.InferenceSession(
                str(model.path),
                sess_options=opts,
                providers=choose_providers(cfg.device, ort.get_available_providers()),
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
            text = str(exc).strip().splitlines()
            raise ModelError(
                f"{model.path}: not a valid ONNX model: {text[0] if text else type(exc).__name__}"
            ) from None
        self.providers: list[str] = list(self._session.get_providers())
        self._input, self._dtype = self._check_input()
        self._output = self._check_output()

    def _check_input(self) -> tuple[str, type[np.floating[Any]]]:
        inputs = self._session.get_inputs()
        name = self.model.path.name
        if len(inputs) != 1:
            raise ModelError(f"{name}: expected one image input, the model has {len(inputs)}")
        shape = inputs[0].shape
        want = [1, 3, self.model.imgsz, self.model.imgsz]
        # Symbolic (dynamic) dimensions are strings or None and accept any size.
        if len(shape) != 4 or any(isinstance(s, int) and s != w for s, w in zip(shape, want, strict=True)):
            raise ModelError(
                f"{name}: input shape {shape} does not match imgsz {self.model.imgsz} (expected {want})"
            )
        dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        return inputs[0].name, dtype

    def _check_output(self) -> str:
        out = self._session.get_outputs()[0]
        channels = out.shape[1] if len(out.shape) == 3 else None
        nc = len(self.model.names)
        if isinstance(channels, int) and channels != 4 + nc:
            raise ModelError(
                f"{self.model.path.name}: output has {channels} channels ({channels - 4} classes) "
                f"but the metadata names {nc} classes"
            )
        return str(out.name)

    def _infer(self, blob: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out = self._session.run([self._output], {self._input: blob.astype(self._dtype, copy=False)})[0]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        """Drop the session (ONNX Runtime frees it with the last reference)."""
        self._session = None

"""TensorRT backend: a serialized engine (``.engine``/``.plan``) on a Jetson, through the TensorRT 10 API.

Device memory and the stream are managed with NVIDIA's ``cuda-python`` (``cudart``: ``cudaMalloc``,
``cudaMemcpyAsync``, ``cudaStreamSynchronize``), the package NVIDIA's own TensorRT samples use, rather
than PyCUDA, which must be compiled against the JetPack CUDA and keeps a global context. Both the new
(``cuda.bindings.runtime``, cuda-python ≥ 12.6) and the old (``cuda.cudart``) module layouts work.

The engine file may be a plain plan or an Ultralytics export, which puts a length-prefixed JSON header
in front of the plan (:func:`edge.model.split_engine_header`). An engine only runs on the GPU and
TensorRT version it was built with; a mismatch is reported as a :class:`~edge.errors.ModelError` that
says to rebuild it on the device.

This module cannot run without a GPU; its tests are marked ``tensorrt``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import tensorrt as trt

from edge.backends import register
from edge.backends.base import YoloDetector
from edge.config import BackendConfig
from edge.errors import BackendError, ModelError
from edge.model import ModelInfo, split_engine_header

try:
    from cuda.bindings import runtime as cudart
except ImportError:  # cuda-python < 12.6
    from cuda import cudart  # type: ignore[no-redef,unused-ignore]

__all__ = ["TensorRTDetector"]


def _cuda(result: tuple[Any, ...], what: str) -> Any:
    """Unpack a ``cudart`` call's ``(error, value...)`` tuple, raising on an error code."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]  # bytes, e.g. b"cudaErrorMemoryAllocation"
        raise BackendError(f"tensorrt: {what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else None


class _Tensor:
    """One engine input or output: its name, host array and device buffer."""

    def __init__(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.name = name
        self.host = np.empty(shape, dtype=dtype)
        self.device = _cuda(
            cudart.cudaMalloc(self.host.nbytes), f"cudaMalloc({self.host.nbytes}) for {name!r}"
        )

    def free(self) -> None:
        if self.device is not None:
            cudart.cudaFree(self.device)
            self.device = None


@register("tensorrt")
class TensorRTDetector(YoloDetector):
    """YOLOv8 detector on a TensorRT engine (one image input, one ``(1, 4 + nc, A)`` output).

    Raises:
        ModelError: the engine cannot be deserialized here, or does not match ``imgsz``/``names``.
        BackendError: CUDA memory or the stream cannot be set up.
    """

    backend_name = "tensorrt"

    def __init__(self, cfg: BackendConfig, model: ModelInfo) -> None:
        super().__init__(cfg, model)
        self._tensors: list[_Tensor] = []
        self._stream: Any = None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        _, plan = split_engine_header(model.path.read_bytes())
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise ModelError(
                f"{model.path}: TensorRT {trt.__version__} cannot deserialize this engine "
                "(corrupt, or built for another GPU/TensorRT): rebuild it on this device"
            )
        self._context = self._engine.create_execution_context()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        label = self.model.path.name
        if len(inputs) != 1 or not outputs:
            raise ModelError(
                f"{label}: expected one input and an output, the engine has {inputs} and {outputs}"
            )
        size = self.model.imgsz
        want = (1, 3, size, size)
        shape = tuple(self._engine.get_tensor_shape(inputs[0]))
        # -1 marks a dynamic dimension; any other value must match.
        if len(shape) != 4 or any(s not in (-1, w) for s, w in zip(shape, want, strict=True)):
            raise ModelError(
                f"{label}: input shape {list(shape)} does not match imgsz {size} (expected {list(want)})"
            )
        self._context.set_input_shape(inputs[0], want)
        out_shape = tuple(self._context.get_tensor_shape(outputs[0]))
        nc = len(self.model.names)
        if len(out_shape) != 3 or out_shape[1] != 4 + nc:
            raise ModelError(
                f"{label}: output shape {list(out_shape)} does not fit {nc} classes "
                f"(expected (1, {4 + nc}, anchors))"
            )
        self._stream = _cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        shapes = {inputs[0]: want} | {name: tuple(self._context.get_tensor_shape(name)) for name in outputs}
        for name, tshape in shapes.items():  # extra outputs too: TensorRT needs somewhere to write them
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            self._tensors.append(_Tensor(name, tshape, dtype))
            self._context.set_tensor_address(name, int(self._tensors[-1].device))

    def _infer(self, blob: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        inp, out = self._tensors[0], self._tensors[1]
        np.copyto(inp.host, blob, casting="same_kind")
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda(
            cudart.cudaMemcpyAsync(inp.device, inp.host.ctypes.data, inp.host.nbytes, h2d, self._stream),
            "copy in",
        )
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError("tensorrt: execute_async_v3 returned false")
        _cuda(
            cudart.cudaMemcpyAsync(out.host.ctypes.data, out.device, out.host.nbytes, d2h, self._stream),
            "copy out",
        )
        _cuda(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out.host.astype(np.float32, copy=True)

    def close(self) -> None:
        """Free the device buffers and the stream, then the context and engine (idempotent)."""
        for tensor in self._tensors:
            tensor.free()
        self._tensors = []
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None
        self._engine = None

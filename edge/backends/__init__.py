"""Detector backends behind one interface, chosen by name from ``backend.type``.

The built-in backends are imported only when created, so a Jetson without ``ultralytics`` or a
workstation without ``tensorrt`` imports this package fine; asking for a backend whose runtime module is
missing raises :class:`~edge.errors.BackendUnavailable` with one line saying what to install::

    tensorrt: Python module 'tensorrt' not importable (install JetPack's python3-libnvinfer)

Other detectors (a scripted test double, a new runtime) join with :func:`register`.

Example:
    >>> det = create_detector(BackendConfig(type="onnxruntime"), load_model_info(cfg.model))
    >>> dets = det.detect(frame)
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from edge.backends.base import Detector, YoloDetector
from edge.config import BackendConfig
from edge.errors import BackendUnavailable
from edge.model import ModelInfo

__all__ = ["Detector", "YoloDetector", "available", "create_detector", "register", "registered"]

DetectorFactory = Callable[[BackendConfig, ModelInfo], Detector]
F = TypeVar("F", bound=DetectorFactory)


@dataclass(frozen=True)
class _Builtin:
    module: str
    # (Python module, how to install it); "a|b" accepts either module (old and new cuda-python layouts).
    requires: tuple[tuple[str, str], ...]


_BUILTIN: dict[str, _Builtin] = {
    "onnxruntime": _Builtin("edge.backends.onnxruntime", (("onnxruntime", "pip install 'lanecount[edge]'"),)),
    "tensorrt": _Builtin(
        "edge.backends.tensorrt",
        (
            ("tensorrt", "install JetPack's python3-libnvinfer"),
            ("cuda.bindings.runtime|cuda.cudart", "pip install cuda-python matching JetPack's CUDA"),
        ),
    ),
    "ultralytics": _Builtin(
        "edge.backends.ultralytics", (("ultralytics", "pip install 'lanecount[train]'"),)
    ),
}
_FACTORIES: dict[str, DetectorFactory] = {}


def register(name: str) -> Callable[[F], F]:
    """Register a detector factory (usually a :class:`Detector` subclass) under ``name``.

    Example:
        >>> @register("scripted")
        ... class ScriptedDetector(Detector): ...
    """

    def deco(factory: F) -> F:
        _FACTORIES[name] = factory
        return factory

    return deco


def registered() -> list[str]:
    """Names of every known backend, whether or not its runtime is installed here."""
    return sorted(set(_BUILTIN) | set(_FACTORIES))


def available() -> list[str]:
    """Names of the backends whose runtime modules are installed here (checked without importing them)."""
    return [name for name in registered() if name in _FACTORIES or _missing(_BUILTIN[name]) is None]


def create_detector(backend: BackendConfig, model: ModelInfo) -> Detector:
    """Build the detector named by ``backend.type`` for ``model``.

    Raises:
        BackendUnavailable: the backend is unknown or its runtime module cannot be imported.
        ModelError: the model file does not fit the backend or its metadata.
    """
    name = backend.type
    if name not in _FACTORIES and name in _BUILTIN:
        _import_builtin(name, _BUILTIN[name])
    if name not in _FACTORIES:
        raise BackendUnavailable(f"{name}: unknown backend; known: {', '.join(registered())}")
    return _FACTORIES[name](backend, model)


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module set to None
        return False


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except (ImportError, OSError):  # OSError: the module is there but its shared library is not
        return False
    return True


def _missing(spec: _Builtin) -> tuple[str, str] | None:
    """The first required module that is not installed, if any (found without importing it)."""
    for modules, hint in spec.requires:
        if not any(_found(m) for m in modules.split("|")):
            return modules, hint
    return None


def _import_builtin(name: str, spec: _Builtin) -> None:
    for modules, hint in spec.requires:
        if not any(_importable(m) for m in modules.split("|")):
            shown = " or ".join(repr(m) for m in modules.split("|"))
            raise BackendUnavailable(f"{name}: Python module {shown} not importable ({hint})")
    importlib.import_module(spec.module)  # its @register fills _FACTORIES

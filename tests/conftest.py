"""Shared test set-up: offline Ultralytics, headless plots, and paths to the project's own data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(ROOT / ".venv" / "ultralytics-config"))
os.environ.setdefault("MPLBACKEND", "Agg")

DEMO_ONNX = ROOT / "edge" / "models" / "demo.onnx"


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The committed demo detector (ONNX); its JSON sits next to it."""
    if not DEMO_ONNX.exists():
        pytest.fail(f"{DEMO_ONNX} is missing: it is committed with the repository (make demo-model rebuilds it)")
    return DEMO_ONNX

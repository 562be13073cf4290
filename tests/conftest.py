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
        pytest.fail(
            f"{DEMO_ONNX} is missing: it is committed with the repository (make demo-model rebuilds it)"
        )
    return DEMO_ONNX


# --- MQTT: a real Mosquitto broker per test (tests/broker.py) ----------------------------------------


def _broker(persistence: bool):
    from broker import Broker, mosquitto_binary

    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (make system-deps installs it)")
    broker = Broker(binary, persistence=persistence)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def mosquitto():
    """A Mosquitto on a free 127.0.0.1 port: ``.host``, ``.port``, ``.stop()``, ``.start()`` (same port)."""
    yield from _broker(persistence=False)


@pytest.fixture
def mosquitto_persistent():
    """Like ``mosquitto``, but sessions survive ``stop()``/``start()`` (for outage tests)."""
    yield from _broker(persistence=True)


# --- PostgreSQL: a private cluster for the back office tests (tests/pg.py) ---------------------------


@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL on a free port (initdb + pg_ctl), shared by the session's tests."""
    from backoffice.localpg import PgCluster, pg_bin

    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (make system-deps installs it)")
    cluster = PgCluster(bindir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(pg_cluster, request):
    """A fresh database in the private cluster; its URL."""
    import re

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50] + f"_{id(request) % 10000}"
    return pg_cluster.createdb(name)

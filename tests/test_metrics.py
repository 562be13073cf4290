"""The Prometheus endpoint: loopback unless configured, real HTTP on a free port."""

from __future__ import annotations

import urllib.request

import pytest

from edge.config import parse_config
from edge.metrics import Metrics


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as res:
        return res.read().decode()


def test_metrics_bind_loopback_by_default() -> None:
    assert parse_config("metrics_port: 9100").metrics_host == "127.0.0.1"
    m = Metrics()
    try:
        host, port = m.serve(0) or ("?", 0)
        assert host == "127.0.0.1"  # not 0.0.0.0: the page shows the site's sales to anyone reaching it
        m.frames.inc()
        assert "lanecount_frames_total 1.0" in _scrape(port)
    finally:
        m.close()


def test_metrics_bind_the_configured_address() -> None:
    cfg = parse_config("metrics_port: 9100\nmetrics_host: 0.0.0.0\n")
    m = Metrics()
    try:
        host, port = m.serve(0, cfg.metrics_host) or ("?", 0)
        assert host == "0.0.0.0"
        assert "lanecount_fps" in _scrape(port)
    finally:
        m.close()


def test_an_address_that_cannot_be_bound_is_an_os_error() -> None:
    with pytest.raises(OSError):
        Metrics().serve(0, "192.0.2.1")  # TEST-NET-1: not an address of this machine

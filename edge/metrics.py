"""Prometheus metrics: fps, per-stage latency, counts, outbox depth, source reconnects.

A private registry (not the global one) so several pipelines in one process (tests) do not clash.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["STAGES", "Metrics"]

STAGES = ("decode", "preprocess", "inference", "postprocess", "tracking", "counting", "publishing")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """The daemon's metrics; ``serve(port)`` exposes them over HTTP."""

    def __init__(self) -> None:
        """Create the metric families in a fresh registry."""
        self.registry = CollectorRegistry()
        self._server: WSGIServer | None = None
        r = self.registry
        self.fps = Gauge("lanecount_fps", "Frames processed per second (recent)", registry=r)
        self.frames = Counter("lanecount_frames", "Frames processed", registry=r)
        self.stage = Histogram(
            "lanecount_stage_seconds", "Per-stage latency", ["stage"], buckets=_BUCKETS, registry=r
        )
        # Bound once: labels() takes a lock and a dict lookup, and this runs 7 times per frame.
        self._stages = {name: self.stage.labels(name) for name in STAGES}
        self.crossings = Counter(
            "lanecount_crossings", "Line crossings", ["line", "product", "direction"], registry=r
        )
        self.tracks = Gauge("lanecount_active_tracks", "Tracks alive now", registry=r)
        self.outbox_depth = Gauge("lanecount_outbox_depth", "Messages waiting for a broker ack", registry=r)
        self.outbox_dropped = Gauge(
            "lanecount_outbox_dropped", "Messages dropped by the outbox bound", registry=r
        )
        self.mqtt_connected = Gauge("lanecount_mqtt_connected", "1 while connected to the broker", registry=r)
        self.source_reconnects = Gauge(
            "lanecount_source_reconnects", "Times the source was reopened", registry=r
        )
        self.alerts = Gauge("lanecount_alerts_active", "Restock alerts raised now", registry=r)
        self.source_up = Gauge(
            "lanecount_source_up", "1 while frames arrive, 0 while the source is down", registry=r
        )

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        """Record one frame's stage timings (milliseconds)."""
        for name, ms in timings_ms.items():
            child = self._stages.get(name) or self._stages.setdefault(name, self.stage.labels(name))
            child.observe(ms / 1000)

    def serve(self, port: int, addr: str = "127.0.0.1") -> tuple[str, int] | None:
        """Serve ``/metrics`` on ``port`` from a daemon thread.

        Args:
            port: TCP port (0: any free one).
            addr: address to bind; loopback by default, because the page tells anyone who can reach it
                the site's sales and the device's health. ``0.0.0.0`` (config ``metrics_host``) for a
                Prometheus on another machine, behind the site's firewall.

        Returns:
            The bound ``(address, port)`` when the Prometheus client reports it.

        Raises:
            OSError: the address cannot be bound (port in use, unknown address).
        """
        started = start_http_server(port, addr=addr, registry=self.registry)
        # prometheus-client >= 0.17 returns (server, thread); keep the server to report and close it.
        self._server = started[0] if isinstance(started, tuple) else None
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving ``/metrics`` (a no-op when not serving)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

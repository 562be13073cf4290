"""Prometheus metrics of the collector (``collect --metrics-port``): what was stored, refused, kept aside.

A private registry, served on 127.0.0.1 unless told otherwise. Conflicts and rejections are counters to
alert on (a device that reuses (epoch, seq) with another payload, a sender of malformed messages).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics"]

_LAG = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class Metrics:
    """Counters per outcome, batch commit time, publish→commit lag, MQTT connection."""

    def __init__(self) -> None:
        """Create the metric families in a fresh registry."""
        r = self.registry = CollectorRegistry()
        self.messages = Counter(
            "lanecount_backoffice_messages",
            "Messages by outcome: stored, duplicate, conflict, rejected, expired, status",
            ["outcome"],
            registry=r,
        )
        self.batches = Counter("lanecount_backoffice_batches", "Committed batches", registry=r)
        self.retries = Counter(
            "lanecount_backoffice_db_retries", "Batches retried (database away)", registry=r
        )
        self.commit = Histogram(
            "lanecount_backoffice_commit_seconds", "Time to store one batch", buckets=_LAG, registry=r
        )
        self.lag = Histogram(
            "lanecount_backoffice_lag_seconds", "Device timestamp to commit", buckets=_LAG, registry=r
        )
        self.connected = Gauge(
            "lanecount_backoffice_mqtt_connected", "1 while connected to the broker", registry=r
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)

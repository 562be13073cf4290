"""lanecount edge runtime: the on-device daemon (camera → detector → tracking → counting → MQTT).

This package is the core: train/ and export/ may import it, it never imports them, and it needs only
the ``edge`` extra (no torch, no ultralytics) so it installs on a Jetson.
"""

__version__ = "0.1.0"

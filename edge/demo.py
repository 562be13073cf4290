"""``make demo``: the daemon on a synthetic conveyor video, with a private broker, against ground truth.

Steps: start Mosquitto on a free port, run ``lanecount-edge run`` on the video (rendered beforehand by
``lanecount-train synth-video``, which also wrote the true crossings), subscribe to the device's
topics, and print the crossings that arrived over MQTT (each once, by ``(epoch, seq)``) next to the
truth. Exit code 0 only when they match. The ``counts`` messages report aligned periods: the period
still open when the video ends is reported at the daemon's next start, so the last one may lag.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from edge.counts import Counts

MODELS = Path(__file__).resolve().parent / "models"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A private Mosquitto on 127.0.0.1:``port`` (no persistence, anonymous)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        sys.exit("error: mosquitto not found; install it with: sudo apt-get install mosquitto")
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"error: mosquitto did not start on port {port}")


def start_companion(command: str, port: int, ready: str, log: Path) -> subprocess.Popen[str]:
    """Start ``command`` ({port}: the broker's) and wait until it prints a line containing ``ready``.

    Its output goes to ``log``. ``make demo`` runs the back office collector this way, so that its
    subscription exists before the daemon publishes anything (the demo does not import it).
    """
    proc = subprocess.Popen(
        shlex.split(command.format(port=port)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = proc.stdout
    assert lines is not None
    out = log.open("a")
    deadline = time.monotonic() + 60
    for line in lines:
        out.write(line)
        if ready in line:
            break
        if time.monotonic() > deadline:
            break
    else:
        sys.exit(f"error: the companion {command!r} exited ({proc.wait()}); see {log}")

    def copy() -> None:
        for x in lines:
            out.write(x)
            out.flush()

    threading.Thread(target=copy, daemon=True).start()
    return proc


class Listener:
    """Collects the daemon's messages under ``prefix`` (QoS 1) in a background paho loop."""

    def __init__(self, port: int, prefix: str) -> None:
        """Connect and subscribe to ``prefix/#``; messages accumulate per topic suffix."""
        import paho.mqtt.client as mqtt

        self.messages: dict[str, list[dict[str, Any]]] = {}
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lanecount-demo-listener")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self._subscribed.set()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            kind = msg.topic[len(prefix) + 1 :]
            self.messages.setdefault(kind, []).append(json.loads(msg.payload))

        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            sys.exit("error: could not subscribe to the demo broker")

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


def write_config(video_dir: Path, out: Path, port: int, model: Path) -> Path:
    """The daemon config for the demo: the video's own line snippet plus model, broker and outputs."""
    snippet = yaml.safe_load((video_dir / "edge.yaml").read_text())
    cfg = {
        "site": "demo-store",
        "device": "lane-1",
        "state_dir": str(out / "state"),
        "source": snippet["source"],
        "model": {"path": str(model)},
        "backend": {"type": "onnxruntime", "device": "cpu"},
        "counting": snippet["counting"],
        "alerts": {
            "depletion": [
                {"product": "milk_carton", "stock": 8, "threshold": 3, "line": "lane", "direction": "in"}
            ]
        },
        "mqtt": {"host": "127.0.0.1", "port": port, "publish_period_s": 2.0, "status_period_s": 5.0},
        "output": {"video": str(out / "annotated.mp4"), "tracks": str(out / "tracks.txt")},
    }
    path = out / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def table(truth: dict[str, Any], got: dict[str, Any]) -> tuple[str, bool]:
    """Per line, direction and class: counted vs true; and whether all match."""
    rows, ok = [f"{'line':<8}{'dir':<5}{'class':<13}{'counted':>8}{'truth':>7}"], True
    for line, by_dir in truth.items():
        for d in ("in", "out"):
            classes = sorted(set(by_dir.get(d, {})) | set(got.get(line, {}).get(d, {})))
            for cls in classes:
                t = by_dir.get(d, {}).get(cls, 0)
                g = got.get(line, {}).get(d, {}).get(cls, 0)
                ok &= t == g
                rows.append(f"{line:<8}{d:<5}{cls:<13}{g:>8}{t:>7}{'' if t == g else '   <-- differs'}")
    return "\n".join(rows), ok


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns 0 when the MQTT counts equal the ground truth."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--video", type=Path, default=Path("demo-out/video"), help="folder from lanecount-train synth-video"
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--model", type=Path, default=MODELS / "demo.onnx")
    p.add_argument("--companion", metavar="CMD", help="run CMD ({port}: the broker's port) beside the daemon")
    p.add_argument("--companion-ready", default="ready", metavar="TEXT", help="CMD is up once it prints TEXT")
    a = p.parse_args(argv)
    truth = json.loads((a.video / "crossings.json").read_text())
    out = a.out.resolve()
    shutil.rmtree(out / "state", ignore_errors=True)  # a fresh daemon: counts start at zero
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker(port, Path(tmp))
        companion = None
        try:
            if a.companion:
                out.mkdir(parents=True, exist_ok=True)
                companion = start_companion(a.companion, port, a.companion_ready, out / "companion.log")
            config = write_config(a.video.resolve(), out, port, a.model.resolve())
            listener = Listener(port, "lanecount/demo-store/lane-1")
            print(
                f"broker on 127.0.0.1:{port}; running the daemon on {truth['frames']} frames ...", flush=True
            )
            started = time.monotonic()
            cmd = [
                sys.executable,
                "-m",
                "edge.cli",
                "run",
                "--config",
                str(config),
                "--counts-out",
                str(out / "counts.json"),
            ]
            rc = subprocess.call(cmd)
            elapsed = time.monotonic() - started
            time.sleep(1.0)  # let the last messages arrive
            listener.close()
        finally:
            if companion is not None:  # before the broker: it stores and acknowledges what it holds
                companion.terminate()
                companion.wait(30)
            broker.terminate()
            broker.wait(5)
    if rc != 0:
        print(f"error: the daemon exited with {rc}", file=sys.stderr)
        return rc
    counts = listener.messages.get("counts", [])
    crossings = list(
        {(m["epoch"], m["seq"]): m for m in listener.messages.get("events/crossing", [])}.values()
    )
    got = Counts.of((m["line"], m["direction"], m["class_name"]) for m in crossings)
    text, ok = table(truth["lines"], got.to_json())
    print(
        f"\nMQTT: {len(crossings)} crossing events ({len(truth['events'])} true crossings) vs ground truth:"
    )
    print(text)
    if counts:
        last = max(counts, key=lambda m: m["seq"])
        reported = Counts.from_json(last["cumulative"]).total()
        end = time.strftime("%H:%M:%S", time.localtime(last["period_end"]))
        print(
            f"{len(counts)} counts messages; the last (period ending {end}) reports {reported} crossings; "
            "the rest lie in the period still open at the stop (reported at the next start)"
        )
    for kind, msgs in sorted(listener.messages.items()):
        if kind.startswith("alerts/"):
            for m in msgs:
                values = {k: m[k] for k in ("estimate", "count", "threshold") if k in m}
                print(f"alert on {kind}: {m['state']} ({json.dumps(values)})")
    fps = truth["frames"] / elapsed
    print(f"\n{truth['frames']} frames in {elapsed:.1f} s ({fps:.1f} fps end to end, incl. start-up)")
    print(f"annotated video: {out / 'annotated.mp4'}\ntracks: {out / 'tracks.txt'}  config: {config}")
    print("RESULT: counts match the ground truth" if ok else "RESULT: counts differ from the ground truth")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The Ansible playbooks, run for real with ``connection: local`` against a temporary root.

What cannot run here is switched off through the roles' variables, and only that: apt, the system
user, the venv (the project's own .venv stands in for the device's; `make test-fleet` installs a real
one from the wheelhouse) and systemd (the service manager step is "none"; the reload command sends
SIGHUP to a real daemon instead). Everything else is real: the templates, the model store, a real
Mosquitto, the real daemon on OpenCV's sample footage reloading new models, the health gate and
the rollback.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_ONNX, ROOT
from fleet.bundles import keygen, make_bundle

from edge.config import load_config
from edge.modelstore import ModelStore

PROV = ROOT / "provisioning"
BIN = Path(sys.executable).parent
PLAYBOOK = BIN / "ansible-playbook"
VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
HEALTH = (str(BIN / "lanecount-edge"), "model", "health")
DEMO_NAMES = json.loads(DEMO_ONNX.with_suffix(".json").read_text())["names"]

pytestmark = pytest.mark.skipif(not PLAYBOOK.exists(), reason="ansible-core is not installed (fleet extra)")


def _names() -> list[str]:
    names = DEMO_NAMES
    return list(names.values()) if isinstance(names, dict) else list(names)


def demo_bundle(out: Path, key: Path, version: str, onnx: bytes | None = None) -> Path:
    """The committed demo model as a bundle made by `lanecount-export bundle`; other ONNX bytes (a model
    the daemon cannot load) through the same signing code with the demo's class names."""
    dest = out / f"demo-{version}.lcb"
    if onnx is not None:
        return make_bundle(dest, key, version, files={"demo.onnx": onnx}, names=_names())
    cmd = [str(BIN / "lanecount-export"), "bundle", str(DEMO_ONNX), "--key", str(key), "--out", str(dest)]
    res = subprocess.run([*cmd, "--version", version], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return dest


def run_playbook(
    name: str, inventory: Path, extra: dict, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(PROV / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOME": str(inventory.parent / ".ansible"),
        "ANSIBLE_LOCAL_TEMP": str(inventory.parent / ".ansible" / "tmp"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    vars_file = inventory.parent / "extra.json"
    vars_file.write_text(json.dumps(extra))
    res = subprocess.run(
        [str(PLAYBOOK), "-i", str(inventory), str(PROV / name), "-e", f"@{vars_file}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=PROV,
    )
    if check:
        assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    return res


def recap(res: subprocess.CompletedProcess[str]) -> dict[str, int]:
    m = re.search(r"lane-local\s*:\s*(.*)", res.stdout.split("PLAY RECAP")[-1])
    assert m, res.stdout[-2000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


@pytest.fixture(scope="module")
def device(tmp_path_factory, request):
    """A laid-down device: site.yml run once against a temporary root, with a real broker."""
    if not VIDEO.exists():
        pytest.skip(f"{VIDEO} is missing (make system-deps installs opencv-doc)")
    broker_fixture = request.getfixturevalue("module_broker")
    tmp = tmp_path_factory.mktemp("device")
    keys = tmp / "keys"
    keys.mkdir()
    priv, pub = keygen(keys)
    bundles = tmp / "bundles"
    bundles.mkdir()
    v1 = demo_bundle(bundles, priv, "1.0.0")
    inventory = tmp / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "lanes": {
                            "hosts": {
                                "lane-local": {
                                    "ansible_connection": "local",
                                    "ansible_python_interpreter": sys.executable,
                                }
                            }
                        }
                    }
                }
            }
        )
    )
    root = tmp / "root"
    base = {
        "lanecount_root": str(root),
        "lanecount_manage_packages": False,
        "lanecount_manage_user": False,
        "lanecount_install_venv": False,
        "lanecount_service_manager": "none",
        "lanecount_user": pwd.getpwuid(os.getuid()).pw_name,
        "lanecount_group": grp.getgrgid(os.getgid()).gr_name,
        "lanecount_bin": str(BIN / "lanecount-edge"),
        "lanecount_signing_pub": str(pub),
        "lanecount_initial_bundle": str(v1),
        "lanecount_site": "store-1",
        "lanecount_device": "lane-1",
        "lanecount_camera": {"type": "file", "path": str(VIDEO), "loop": True},
        "lanecount_lines": [{"name": "belt", "start": [380, 576], "end": [380, 0]}],
        "lanecount_broker": {"host": broker_fixture.host, "port": broker_fixture.port},
        "lanecount_mqtt_extra": {"status_period_s": 1.0, "publish_period_s": 5.0},
        "lanecount_metrics_port": None,
        "lanecount_health_timeout": 60,
    }
    first = run_playbook("site.yml", inventory, base)

    class Device:
        pass

    d = Device()
    d.tmp, d.root, d.inventory, d.vars, d.priv, d.pub, d.bundles, d.first = (
        tmp,
        root,
        inventory,
        base,
        priv,
        pub,
        bundles,
        first,
    )
    d.config = root / "etc/lanecount/edge.yaml"
    d.store = root / "var/lib/lanecount/models"
    return d


@pytest.fixture(scope="module")
def module_broker():
    from broker import Broker, mosquitto_binary

    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (make system-deps installs it)")
    broker = Broker(binary, persistence=False)
    broker.start()
    yield broker
    broker.close()


def test_site_lays_the_device_down(device):
    assert "changed=0" not in device.first.stdout.split("PLAY RECAP")[-1]
    cfg_mode = device.config.stat().st_mode & 0o777
    assert cfg_mode == 0o640
    cfg = load_config(device.config)
    assert (cfg.site, cfg.device) == ("store-1", "lane-1")
    assert cfg.model is not None and cfg.model.path == f"{device.store}/current/model.onnx"
    assert cfg.model.public_key == str(device.root / "etc/lanecount/signing.pub")
    assert (device.root / "etc/lanecount/signing.pub").read_bytes() == device.pub.read_bytes()
    assert [line.name for line in cfg.counting.lines] == ["belt"]
    assert ModelStore(device.store).active_version() == "1.0.0"
    assert Path(cfg.model.path).read_bytes() == DEMO_ONNX.read_bytes()
    unit = (device.root / "etc/systemd/system/lanecount-edge.service").read_text()
    assert f"ExecStart={BIN / 'lanecount-edge'} run --config {device.config}" in unit
    assert "LoadCredential=mqtt-password" not in unit.replace("# LoadCredential", "")


def test_site_is_idempotent(device):
    res = run_playbook("site.yml", device.inventory, device.vars)
    assert recap(res)["changed"] == 0, res.stdout[-3000:]
    assert recap(res)["failed"] == 0


def test_rendered_unit_matches_the_packaged_one_and_passes_systemd_analyze(device, tmp_path):
    """The role's template is the packaged unit with paths as variables: no drift, and systemd accepts it."""
    rendered = (device.root / "etc/systemd/system/lanecount-edge.service").read_text()
    packaged = (ROOT / "edge/systemd/lanecount-edge.service").read_text()
    normalise = [
        (str(BIN / "lanecount-edge"), "/opt/lanecount/venv/bin/lanecount-edge"),
        (str(device.config), "/etc/lanecount/edge.yaml"),
        (str(device.root / "var/lib/lanecount"), "/var/lib/lanecount"),
        (f"User={device.vars['lanecount_user']}", "User=lanecount"),
        (f"Group={device.vars['lanecount_group']}", "Group=lanecount"),
    ]
    text = rendered
    for a, b in normalise:
        text = text.replace(a, b)
    body = [line for line in text.splitlines() if not line.startswith("# Ansible managed")]
    assert body == [line for line in packaged.splitlines()]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / "lanecount-edge.service"
    unit.write_text(rendered.replace(f"User={device.vars['lanecount_user']}", "User=root"))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "lanecount-edge.service" not in res.stderr, res.stderr


def test_credentials_go_through_load_credential(device, tmp_path):
    """A broker password: a root-only credential, LoadCredential= in the unit, password_file in the config."""
    root = tmp_path / "root"
    extra = {
        **device.vars,
        "lanecount_root": str(root),
        "lanecount_mqtt_username": "lane",
        "lanecount_mqtt_password": "s3cret",
    }
    extra["lanecount_initial_bundle"] = ""
    res = run_playbook("site.yml", device.inventory, extra)
    assert "s3cret" not in res.stdout
    cred = root / "etc/lanecount/credentials/mqtt-password"
    assert cred.read_text() == "s3cret" and cred.stat().st_mode & 0o777 == 0o600
    unit = (root / "etc/systemd/system/lanecount-edge.service").read_text()
    assert f"\nLoadCredential=mqtt-password:{cred}\n" in unit
    cfg = load_config(root / "etc/lanecount/edge.yaml")
    assert (cfg.mqtt.username, cfg.mqtt.password_file, cfg.mqtt.password) == ("lane", "mqtt-password", None)
    assert "s3cret" not in (root / "etc/lanecount/edge.yaml").read_text()


@pytest.fixture(scope="module")
def daemon(device):
    """The real daemon on the laid-down config, under our own control instead of systemd."""
    log = (device.tmp / "daemon.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "lanecount-edge"), "run", "--config", str(device.config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "STATE_DIRECTORY": str(device.root / "var/lib/lanecount")},
    )
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _health(device, version: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HEALTH, "--version", version, "-c", str(device.config), "--timeout", str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )


@pytest.mark.slow
def test_update_model_rolls_out_and_a_failing_health_gate_rolls_back(device, daemon):
    res = _health(device, "1.0.0")
    assert res.returncode == 0, res.stderr + (device.tmp / "daemon.log").read_text()[-2000:]
    reload = {"lanecount_model_reload_cmd": f"kill -HUP {daemon.pid}"}

    # A good bundle: installed, the daemon reloads it, the gate passes.
    good = demo_bundle(device.bundles, device.priv, "1.1.0")
    res = run_playbook(
        "update-model.yml", device.inventory, {**device.vars, **reload, "lanecount_bundle": str(good)}
    )
    assert recap(res)["failed"] == 0
    assert ModelStore(device.store).active_version() == "1.1.0"
    assert _health(device, "1.1.0", 10).returncode == 0

    # A bundle that verifies but whose model the daemon cannot load: the daemon keeps 1.1.0 running,
    # its status never shows 1.2.0, the gate fails, the host is rolled back and the play fails.
    broken = demo_bundle(device.bundles, device.priv, "1.2.0", onnx=b"\x08\x07 not an onnx graph" * 100)
    res = run_playbook(
        "update-model.yml",
        device.inventory,
        {**device.vars, **reload, "lanecount_bundle": str(broken), "lanecount_health_timeout": 8},
        check=False,
    )
    assert res.returncode != 0
    assert recap(res)["failed"] == 1
    assert "model 1.2.0 failed its health check" in res.stdout
    assert "1.1.0: active (rolled back)" in res.stdout
    assert ModelStore(device.store).active_version() == "1.1.0"
    assert _health(device, "1.1.0", 10).returncode == 0
    assert "reload rejected" in (device.tmp / "daemon.log").read_text()

    # rollback.yml: back to the release before 1.1.0 (1.0.0; not 1.2.0, which was rolled back from),
    # and the gate checks that the daemon runs it.
    res = run_playbook("rollback.yml", device.inventory, {**device.vars, **reload})
    assert recap(res)["failed"] == 0
    assert ModelStore(device.store).active_version() == "1.0.0"
    assert _health(device, "1.0.0", 10).returncode == 0


@pytest.mark.parametrize("playbook", ["site.yml", "update-model.yml", "rollback.yml"])
def test_syntax_check(playbook):
    res = subprocess.run(
        [str(PLAYBOOK), "--syntax-check", "-i", "inventory.example.yml", playbook],
        capture_output=True,
        text=True,
        cwd=PROV,
        env={**os.environ, "ANSIBLE_CONFIG": str(PROV / "ansible.cfg")},
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_ansible_lint_is_clean(tmp_path):
    lint = BIN / "ansible-lint"
    if not lint.exists():
        pytest.skip("ansible-lint is not installed (fleet extra)")
    res = subprocess.run(
        [str(lint), "--offline", "--nocolor", "-f", "pep8"],
        capture_output=True,
        text=True,
        cwd=PROV,
        timeout=300,
        env={**os.environ, "ANSIBLE_HOME": str(tmp_path), "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_local_mosquitto_bridges_to_the_store_broker(device, module_broker, tmp_path):
    """The bridge config in a real Mosquitto: status goes up to the store broker, commands come down."""
    from broker import Broker, Subscriber, mosquitto_binary, wait_until

    root = tmp_path / "root"
    extra = {
        **device.vars,
        "lanecount_root": str(root),
        "lanecount_initial_bundle": "",
        "lanecount_local_broker": True,
        "lanecount_device": "lane-9",  # not the daemon's lane-1, whose retained status is on that broker
        "mosquitto_manage_packages": False,
        "mosquitto_service_manager": "none",
        "lanecount_store_broker": {"host": module_broker.host, "port": module_broker.port},
    }
    run_playbook("site.yml", device.inventory, extra)
    cfg = load_config(root / "etc/lanecount/edge.yaml")
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("127.0.0.1", 1883)
    conf = (root / "etc/mosquitto/conf.d/lanecount-bridge.conf").read_text()
    assert f"address {module_broker.host}:{module_broker.port}" in conf and "persistence true" in conf

    local = Broker(mosquitto_binary() or "mosquitto")
    # The device's listener is 1883; here the test's free port, and the test broker's own files.
    local.config.write_text(
        conf.replace("listener 1883 127.0.0.1", f"listener {local.port} 127.0.0.1")
        + f"persistence_location {local.config.parent}/\nlog_dest stderr\n"
    )
    local.start()
    store_side = Subscriber(module_broker, ["lanecount/store-1/lane-9/#"])
    device_side = Subscriber(local, ["lanecount/store-1/lane-9/cmd/#"])
    try:
        device_side.publish("lanecount/store-1/lane-9/status", '{"state": "online"}', retain=True)
        assert wait_until(lambda: store_side.on("/status"), 15), local.log()
        assert store_side.on("/status")[0].json() == {"state": "online"}

        def command_arrives() -> bool:
            store_side.publish("lanecount/store-1/lane-9/cmd/reset", '{"id": "r1"}')
            return wait_until(lambda: device_side.on("/cmd/reset"), 1)

        assert wait_until(command_arrives, 15), local.log()
    finally:
        store_side.close()
        device_side.close()
        local.close()

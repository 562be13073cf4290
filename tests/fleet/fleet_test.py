"""`make test-fleet`: three real hosts, each with its own systemd as PID 1 and sshd, on this machine only.

Each host is a systemd-nspawn container booted from a Debian bookworm tree made with debootstrap
(cached in $LANECOUNT_FLEET_DIR, default /var/tmp/lanecount-fleet). The containers share the host's
network namespace and listen on 127.0.0.1 only (sshd on ports 2201-2203); nothing else is reached.
Ansible talks to them over SSH exactly as to Jetsons (apt from the lists already there, a real
system user, a venv from the x86_64 wheelhouse, the systemd unit started and READY).

Scenario: site.yml on all three; update-model.yml with a new bundle, batches of one: the canary
lane-1 takes it; lane-2 is made to fail its health check (its unit's reload is replaced by a no-op,
so the daemon keeps running the old model) and is rolled back; the rollout stops, lane-3 never gets
the bundle. Then rollback.yml returns lane-1. Times of each phase are printed (run with -s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_ONNX, ROOT
from fleet.bundles import keygen

FLEET = Path(os.environ.get("LANECOUNT_FLEET_DIR", "/var/tmp/lanecount-fleet"))
BIN = Path(sys.executable).parent
PROV = ROOT / "provisioning"
VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
HOSTS = ["lane-1", "lane-2", "lane-3"]
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv", "python3-systemd",
    "mosquitto-clients", "sudo", "iproute2", "libgl1", "libglib2.0-0",
]  # fmt: skip
TIMES: dict[str, float] = {}
SSH_ARGS = "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no"
DROP_IN = "/etc/systemd/system/lanecount-edge.service.d/broken-reload.conf"


def _timed(name: str, started: float) -> None:
    TIMES[name] = round(time.monotonic() - started, 1)
    print(f"[fleet] {name}: {TIMES[name]} s", flush=True)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is missing (make test-fleet installs debootstrap and systemd-container)")
    return path


def base_rootfs() -> Path:
    """The Debian tree every host starts from (debootstrap once, then cached)."""
    rootfs = FLEET / "rootfs"
    if (rootfs / "usr/sbin/sshd").exists():
        return rootfs
    _need("debootstrap")
    FLEET.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    tmp = FLEET / "rootfs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    res = _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm", str(tmp)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    tmp.rename(rootfs)
    _timed("debootstrap", started)
    return rootfs


def wheelhouse() -> Path:
    """x86_64 / CPython 3.11 (Debian bookworm's) wheelhouse, with pip's OpenCV (no JetPack here)."""
    out = FLEET / "wheelhouse-x86_64-cp311"
    started = time.monotonic()
    script = [sys.executable, str(PROV / "wheelhouse.py"), "--platform", "manylinux_2_36_x86_64"]
    res = _run([*script, "--python", "3.11", "--with-opencv", "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    _timed("wheelhouse", started)
    return out


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Host:
    """One container: its tree, its sshd port, its nspawn process."""

    def __init__(self, name: str, index: int, work: Path) -> None:
        self.name, self.port = name, 2200 + index
        self.root = work / name
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self, base: Path, pubkey: str) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(self.root)], check=True)
        (self.root / "etc/hostname").write_text(f"{self.name}\n")
        (self.root / "etc/machine-id").write_text("")
        ssh = self.root / "root/.ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "authorized_keys").write_text(pubkey)
        (self.root / "etc/ssh/sshd_config.d/fleet-test.conf").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\n"
        )
        # The containers share the host's network: nothing in them may listen on a fixed port.
        mask = self.root / "etc/systemd/system/mosquitto.service"
        mask.unlink(missing_ok=True)
        mask.symlink_to("/dev/null")
        shutil.copy(VIDEO, self.root / "srv/lane.avi")

    def boot(self) -> None:
        log = (self.root.parent / f"{self.name}.console.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "--register=no",
                "--keep-unit",
                "--quiet",
                "-M",
                self.name,
                "-D",
                str(self.root),
                "-b",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ssh(self, key: Path, command: str) -> subprocess.CompletedProcess[str]:
        opts = [
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ]
        return _run(
            ["ssh", "-i", str(key), "-p", str(self.port), *opts, "root@127.0.0.1", command], timeout=120
        )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    _need("systemd-nspawn")
    if not VIDEO.exists():
        pytest.skip(f"{VIDEO} is missing (make system-deps installs opencv-doc)")
    started = time.monotonic()
    base = base_rootfs()
    wheels = wheelhouse()
    work = FLEET / "hosts"
    work.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("fleet")
    key = tmp / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    hosts = [Host(name, i + 1, work) for i, name in enumerate(HOSTS)]
    for h in hosts:
        if _port_open(h.port):
            pytest.fail(f"port {h.port} is taken on 127.0.0.1 (a container of an earlier run still up?)")
    try:
        for h in hosts:
            h.prepare(base, key.with_suffix(".pub").read_text())
            h.boot()
        deadline = time.monotonic() + 120
        while not all(_port_open(h.port) for h in hosts):
            assert time.monotonic() < deadline, "the containers' sshd did not come up in 120 s"
            assert all(h.proc and h.proc.poll() is None for h in hosts), "a container exited while booting"
            time.sleep(0.5)
        for h in hosts:
            res = h.ssh(key, "systemctl is-system-running --wait; ps -p 1 -o comm=")
            assert res.stdout.split()[-1] == "systemd", res.stdout + res.stderr
        _timed("hosts up", started)
        yield hosts, key, wheels, tmp
    finally:
        for h in hosts:
            h.stop()
        # About 1 GB of small files per host: removed in parallel.
        removals = [subprocess.Popen(["rm", "-rf", "--one-file-system", str(h.root)]) for h in hosts]
        for proc in removals:
            proc.wait()


def _playbook(name: str, inventory: Path, extra: dict, tmp: Path) -> subprocess.CompletedProcess[str]:
    (tmp / "extra.json").write_text(json.dumps(extra))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(PROV / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_HOME": str(tmp / ".ansible"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    res = _run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            str(PROV / name),
            "-e",
            f"@{tmp / 'extra.json'}",
        ],
        env=env,
        cwd=PROV,
        timeout=1800,
    )
    (tmp / f"{name}.log").write_text(res.stdout + res.stderr)
    return res


def _recap(res: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in res.stdout.split("PLAY RECAP")[-1].splitlines():
        if ":" in line and "ok=" in line:
            host, counts = line.split(":", 1)
            out[host.strip()] = {k: int(v) for k, v in (kv.split("=") for kv in counts.split())}
    return out


def _versions(host: Host, key: Path) -> list[tuple[str, bool]]:
    res = host.ssh(key, "/opt/lanecount/venv/bin/lanecount-edge model list --json")
    assert res.returncode == 0, res.stderr
    return [(r["version"], r["active"]) for r in json.loads(res.stdout)]


def test_fleet_install_rollout_failure_and_rollback(fleet, mosquitto):
    hosts, key, wheels, tmp = fleet
    keys = tmp / "keys"
    keys.mkdir()
    priv, pub = keygen(keys)
    bundles = []
    for version in ("1.0.0", "1.1.0"):  # the real tool, on the committed demo model
        out = tmp / f"demo-{version}.lcb"
        cmd = [str(BIN / "lanecount-export"), "bundle", str(DEMO_ONNX), "--key", str(priv), "--out", str(out)]
        res = _run([*cmd, "--version", version])
        assert res.returncode == 0, res.stderr
        bundles.append(out)
    v1, v2 = bundles
    inventory = tmp / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "vars": {
                        "ansible_host": "127.0.0.1",
                        "ansible_user": "root",
                        "ansible_ssh_private_key_file": str(key),
                        "ansible_ssh_common_args": SSH_ARGS,
                        "ansible_python_interpreter": "/usr/bin/python3",
                        "lanecount_site": "store-9",
                        "lanecount_camera": {"type": "file", "path": "/srv/lane.avi", "loop": True},
                        "lanecount_lines": [{"name": "belt", "start": [380, 576], "end": [380, 0]}],
                        "lanecount_broker": {"host": "127.0.0.1", "port": mosquitto.port},
                        "lanecount_mqtt_extra": {"status_period_s": 2.0},
                        "lanecount_metrics_port": None,
                        "lanecount_backend": {"type": "onnxruntime", "threads": 1},
                        "lanecount_apt_update": False,
                    },
                    "children": {
                        "lanes": {
                            "hosts": {
                                h.name: {"ansible_port": h.port, "lanecount_device": h.name} for h in hosts
                            }
                        }
                    },
                }
            }
        )
    )
    common = {
        "lanecount_wheelhouse": str(wheels),
        "lanecount_signing_pub": str(pub),
        "lanecount_initial_bundle": str(v1),
        "lanecount_health_timeout": 60,
    }

    started = time.monotonic()
    res = _playbook("site.yml", inventory, common, tmp)
    assert res.returncode == 0, res.stdout[-5000:]
    _timed("site.yml (3 hosts)", started)
    for h in hosts:
        # Type=notify: "active" only after the daemon sent READY=1.
        st = h.ssh(key, "systemctl show -p ActiveState -p SubState -p NRestarts lanecount-edge; id lanecount")
        assert "ActiveState=active" in st.stdout and "SubState=running" in st.stdout, st.stdout
        assert "video" in st.stdout and "render" in st.stdout, st.stdout
        cfg = h.ssh(
            key, "stat -c %a /etc/lanecount/edge.yaml; /opt/lanecount/venv/bin/python -c 'import systemd'"
        )
        assert cfg.returncode == 0 and cfg.stdout.split()[0] == "640", cfg.stdout + cfg.stderr
        health = h.ssh(
            key, "/opt/lanecount/venv/bin/lanecount-edge model health --version 1.0.0 --timeout 60"
        )
        assert health.returncode == 0, health.stderr
    started = time.monotonic()
    again = _playbook("site.yml", inventory, common, tmp)
    assert again.returncode == 0 and all(r["changed"] == 0 for r in _recap(again).values()), again.stdout[
        -3000:
    ]
    _timed("site.yml again (idempotent)", started)

    # lane-2's daemon will not pick the new model up: its reload reaches nothing.
    sabotage = (
        f"mkdir -p {Path(DROP_IN).parent} && "
        f"printf '[Service]\\nExecReload=\\nExecReload=/bin/true\\n' > {DROP_IN} && systemctl daemon-reload"
    )
    assert hosts[1].ssh(key, sabotage).returncode == 0

    started = time.monotonic()
    res = _playbook(
        "update-model.yml",
        inventory,
        {**common, "lanecount_bundle": str(v2), "lanecount_batch": 1, "lanecount_health_timeout": 30},
        tmp,
    )
    _timed("update-model.yml (canary ok, lane-2 fails and rolls back, stop)", started)
    assert res.returncode != 0
    recap = _recap(res)
    assert recap["lane-1"]["failed"] == 0 and recap["lane-2"]["failed"] == 1, res.stdout[-4000:]
    assert "lane-3" not in recap or recap["lane-3"]["ok"] == 0, res.stdout[-4000:]
    assert "lane-2: model 1.1.0 failed its health check" in res.stdout
    assert _versions(hosts[0], key) == [("1.0.0", False), ("1.1.0", True)]
    assert _versions(hosts[1], key) == [("1.0.0", True), ("1.1.0", False)]
    assert _versions(hosts[2], key) == [("1.0.0", True)]  # the rollout stopped before it

    started = time.monotonic()
    res = _playbook("rollback.yml", inventory, {**common, "lanecount_hosts": "lane-1"}, tmp)
    assert res.returncode == 0, res.stdout[-4000:]
    _timed("rollback.yml (lane-1)", started)
    assert _versions(hosts[0], key) == [("1.0.0", True), ("1.1.0", False)]
    print("[fleet] times:", json.dumps(TIMES), flush=True)
    (FLEET / "last-run-times.json").write_text(json.dumps(TIMES, indent=2))

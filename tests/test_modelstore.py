"""The device's model store (`lanecount-edge model ...`): verification, atomic switch, rollback, crash safety.

Real parts: signed bundles (ed25519, tar) built per the bundle contract, the real CLI in a subprocess,
SIGKILL at every step boundary of an install/activate (a forked child killed by the store's own hook)
and at random moments from outside, a full tmpfs for "disk full", and the real daemon reloading on
SIGHUP in the end-to-end test. Nothing is faked.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from fleet.bundles import NAMES, keygen, make_bundle

from edge.config import load_config
from edge.errors import ModelError
from edge.modelstore import CRASH_ENV, ModelStore


@pytest.fixture
def env(tmp_path):
    """Keys, a store root, a config that points at the store and uses apple + milk_carton."""
    keys = tmp_path / "keys"
    keys.mkdir()
    priv, pub = keygen(keys)
    other_priv, _ = keygen(keys, "other")
    store = tmp_path / "models"
    config = tmp_path / "edge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "site": "s1",
                "device": "d1",
                "model": {"path": f"{store}/current/model.onnx", "public_key": str(pub)},
                "counting": {
                    "lines": [{"name": "lane", "start": [320, 480], "end": [320, 0], "classes": ["apple"]}]
                },
                "alerts": {"depletion": [{"product": "milk_carton", "stock": 5, "threshold": 1}]},
                "mqtt": {"enabled": False},
            }
        )
    )
    bundles = tmp_path / "bundles"
    bundles.mkdir()

    class Env:
        pass

    e = Env()
    e.priv, e.pub, e.other_priv, e.store, e.config, e.bundles, e.tmp = (
        priv,
        pub,
        other_priv,
        store,
        config,
        bundles,
        tmp_path,
    )
    e.bundle = lambda version, **kw: make_bundle(
        bundles / f"{version}.lcb", kw.pop("key", priv), version, **kw
    )
    e.cfg = lambda: load_config(config)
    return e


MODEL_CLI = (sys.executable, "-m", "edge.cli", "model")


def model_cli(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(extra_env or {})}
    return subprocess.run(
        [*MODEL_CLI, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def assert_store_sound(e, allowed: set[str]) -> str:
    """The invariant after anything, including a kill: `current` is a complete, verified release."""
    store = ModelStore(e.store)
    active = store.active_version()
    assert active in allowed, f"active {active!r} not in {allowed}"
    release = store.verify(e.pub)
    meta = json.loads((release.path / "model.json").read_text())
    assert meta["version"] == active
    assert (e.store / "current" / "model.onnx").read_bytes() == (
        release.path / "files" / meta["variant"]["file"]
    ).read_bytes()
    return active


# --- the happy path -------------------------------------------------------------------------------


def test_install_list_rollback_activate(env):
    marker = env.tmp / "reloaded"
    reload_cmd = f"sh -c 'echo x >> {marker}'"
    res = model_cli(
        "install",
        str(env.bundle("1.0.0")),
        "-c",
        str(env.config),
        "--store",
        str(env.store),
        "--reload-cmd",
        reload_cmd,
    )
    assert res.returncode == 0, res.stderr
    assert "1.0.0: installed and active" in res.stdout
    assert marker.read_text() == "x\n"
    assert assert_store_sound(env, {"1.0.0"}) == "1.0.0"
    meta = json.loads((env.store / "current" / "model.json").read_text())
    assert (meta["names"], meta["imgsz"], meta["version"]) == (NAMES, 320, "1.0.0")

    res = model_cli(
        "install",
        str(env.bundle("1.1.0", metrics={"map50_95": 0.7})),
        "-c",
        str(env.config),
        "--store",
        str(env.store),
        "--reload-cmd",
        reload_cmd,
    )
    assert res.returncode == 0, res.stderr
    assert os.readlink(env.store / "current") == "releases/1.1.0"
    assert ModelStore(env.store).rollback_target() == "1.0.0"

    res = model_cli("list", "--store", str(env.store))
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if "1." in line]
    assert rows[0].startswith("< 1.0.0") and "map50_95=0.61" in rows[0]
    assert rows[1].startswith("* 1.1.0") and "map50_95=0.7" in rows[1]
    listed = json.loads(model_cli("list", "--store", str(env.store), "--json").stdout)
    assert [(r["version"], r["active"]) for r in listed] == [("1.0.0", False), ("1.1.0", True)]
    assert all(len(r["sha256"]) == 64 and r["installed_at"].endswith("Z") for r in listed)

    res = model_cli("rollback", "--store", str(env.store), "--reload-cmd", reload_cmd)
    assert res.returncode == 0, res.stderr
    assert "1.0.0: active (rolled back)" in res.stdout
    assert assert_store_sound(env, {"1.0.0"}) == "1.0.0"
    res = model_cli("rollback", "--store", str(env.store), "--reload-cmd", reload_cmd)
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: {env.store}: nothing to roll back to (no previous release)"
    res = model_cli("activate", "1.1.0", "--store", str(env.store), "--reload-cmd", "")
    assert res.returncode == 0, res.stderr
    assert assert_store_sound(env, {"1.1.0"}) == "1.1.0"
    assert marker.read_text() == "x\n" * 3  # install, install, rollback; activate had reload off

    # The same bundle again is a no-op: no switch, no reload (Ansible reports "ok", not "changed").
    res = model_cli(
        "install",
        str(env.bundles / "1.1.0.lcb"),
        "-c",
        str(env.config),
        "--store",
        str(env.store),
        "--reload-cmd",
        reload_cmd,
    )
    assert res.returncode == 0, res.stderr
    assert "already active, nothing changed" in res.stdout
    assert marker.read_text() == "x\n" * 3
    res = model_cli("verify", "-c", str(env.config), "--store", str(env.store))
    assert (res.returncode, res.stdout.strip()) == (0, f"1.1.0: ok ({env.store / 'releases' / '1.1.0'})")


def test_keeps_the_last_n_but_never_current_or_previous(env):
    store = ModelStore(env.store, keep=3)
    for i in range(5):
        store.install(env.bundle(f"2.{i}"), env.cfg(), env.pub)
    assert [r.version for r in store.installed()] == ["2.2", "2.3", "2.4"]
    store.activate("2.2")
    store.install(env.bundle("2.5"), env.cfg(), env.pub)
    # Kept: 2.5 (active), 2.2 (the rollback target, though oldest), then the newest other: 2.4.
    assert {r.version for r in store.installed()} == {"2.2", "2.4", "2.5"}
    assert store.rollback().version == "2.2"
    store.activate("2.5")
    store.install(env.bundle("2.6"), env.cfg(), env.pub)
    assert {r.version for r in store.installed()} == {"2.4", "2.5", "2.6"}
    assert store.rollback().version == "2.5"


def test_verify_finds_a_file_changed_after_install(env):
    store = ModelStore(env.store)
    store.install(env.bundle("1.0"), env.cfg(), env.pub)
    victim = env.store / "releases" / "1.0" / "files" / "model.onnx"
    victim.write_bytes(victim.read_bytes()[:-1] + b"!")
    res = model_cli("verify", "-c", str(env.config), "--store", str(env.store))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {victim}: missing or sha256 mismatch with manifest.json"
    ]


# --- bad bundles are refused with one line; the active model stays --------------------------------


def _tampered(env) -> Path:
    path = env.bundle("9.0")
    data = bytearray(path.read_bytes())
    at = data.rfind(b"onnx model 9.0")
    data[at] ^= 0x20
    path.write_bytes(bytes(data))
    return path


BAD = {
    "tampered": (_tampered, "sha256"),
    "wrong-key": (lambda e: e.bundle("9.0", key=e.other_priv), "signature"),
    "missing-class": (
        lambda e: e.bundle("9.0", names=["apple", "orange"]),
        "alerts.depletion.product uses class 'milk_carton'",
    ),
    "not-a-bundle": (lambda e: _write(e.bundles / "junk.lcb", b"not a tar"), "junk.lcb"),
    "same-version-other-content": (
        lambda e: e.bundle("1.0", files={"model.onnx": b"different"}),
        "already installed with different contents",
    ),
    "bad-version": (lambda e: e.bundle("../../etc"), "not usable as a directory name"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", BAD)
def test_a_bad_bundle_is_refused_with_one_line_and_the_active_model_stays(env, kind):
    ModelStore(env.store).install(env.bundle("1.0"), env.cfg(), env.pub)
    make, expected = BAD[kind]
    bundle = make(env)
    marker = env.tmp / "reloaded"
    res = model_cli(
        "install",
        str(bundle),
        "-c",
        str(env.config),
        "--store",
        str(env.store),
        "--reload-cmd",
        f"touch {marker}",
    )
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], res.stderr
    assert lines[0].endswith("; model 1.0 stays active")
    assert "Traceback" not in res.stderr
    assert not marker.exists()
    assert assert_store_sound(env, {"1.0"}) == "1.0"
    assert [r.version for r in ModelStore(env.store).installed()] == ["1.0"]


def test_imgsz_and_class_id_mismatches_are_incompatible(env):
    cfg = env.cfg()
    bad_imgsz = cfg.model_copy(update={"model": cfg.model.model_copy(update={"imgsz": 640})})
    with pytest.raises(ModelError, match=r"model\.imgsz is 640, the model's input is 320"):
        ModelStore(env.store).install(env.bundle("1.0"), bad_imgsz, env.pub)
    bad_ids = cfg.model_copy(update={"backend": cfg.backend.model_copy(update={"classes": [0, 7]})})
    with pytest.raises(ModelError, match=r"backend\.classes has id 7"):
        ModelStore(env.store).install(env.bundle("1.0"), bad_ids, env.pub)
    assert not (env.store / "current").exists()


def test_tensorrt_backend_without_tensorrt_is_refused(env):
    """No TensorRT here: an ONNX-only bundle cannot become an engine, and says so."""
    pytest.importorskip("cryptography")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed: the engine would be built")
    except ImportError:
        pass
    cfg = env.cfg()
    trt = cfg.model_copy(update={"backend": cfg.backend.model_copy(update={"type": "tensorrt"})})
    with pytest.raises(ModelError, match="TensorRT is not installed here"):
        ModelStore(env.store).install(env.bundle("1.0"), trt, env.pub)
    assert not any((env.store / ".staging").iterdir())


def test_disk_full_is_refused_and_the_active_model_stays(env):
    """A real full file system: a 256 KiB tmpfs mounted over the store in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.decode().strip()}")
    small = env.bundle("1.0", files={"model.onnx": b"x" * 40_000})
    big = env.bundle("2.0", files={"model.onnx": os.urandom(400_000)})
    env.store.mkdir()
    cli = f"{sys.executable} -m edge.cli model"
    script = f"""
        set -u
        mount -t tmpfs -o size=256k tmpfs {env.store} || exit 99
        {cli} install {small} -c {env.config} --store {env.store} --reload-cmd '' || exit 98
        {cli} install {big} -c {env.config} --store {env.store} --reload-cmd ''
        echo "rc=$?"
        {cli} verify -c {env.config} --store {env.store}
        ls -A {env.store}/.staging {env.store}/releases
    """
    res = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if res.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    assert "rc=2" in res.stdout, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1 and "No space left on device" in errors[0] and "model 1.0 stays active" in errors[0]
    )
    assert "1.0: ok" in res.stdout
    assert res.stdout.split()[-1] == "1.0"  # releases/ holds only 1.0; .staging is empty


# --- kill at every step boundary, many times over -------------------------------------------------


def _killed_at(step: int, action) -> bool:
    """Run ``action`` in a forked child with the crash hook at ``step``; True when it was killed there."""
    pid = os.fork()
    if pid == 0:  # the child: any outcome but the kill is an exit code
        os.environ[CRASH_ENV] = str(step)
        try:
            action()
        except BaseException:
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the action failed without being killed"
    return False


def test_install_killed_at_every_step_leaves_old_or_new_active(env):
    store = ModelStore(env.store, keep=3)
    store.install(env.bundle("0"), env.cfg(), env.pub)
    old, steps_seen = "0", 0
    for rnd in range(3):  # rounds: first install into a fresh store part, then with gc and previous in play
        for step in range(1, 30):
            new = f"{rnd}.{step}"
            bundle = env.bundle(new)
            killed = _killed_at(
                step, lambda b=bundle: ModelStore(env.store, keep=3).install(b, env.cfg(), env.pub)
            )
            active = assert_store_sound(env, {old, new})
            # Recovery: the same install again completes, whatever the kill left behind.
            ModelStore(env.store, keep=3).install(bundle, env.cfg(), env.pub)
            assert assert_store_sound(env, {new}) == new
            assert not any((env.store / ".staging").iterdir())
            old = new
            if not killed:
                steps_seen = max(steps_seen, step - 1)
                assert active == new
                break
    assert steps_seen >= 9  # staging, extract, model.json, rename, fsync, history (2), current (2)


def test_rollback_killed_at_every_step(env):
    store = ModelStore(env.store)
    for v in "abc":
        store.install(env.bundle(v), env.cfg(), env.pub)
    for rnd in range(4):  # many times over
        for step in range(1, 10):
            killed = _killed_at(step, lambda: ModelStore(env.store).rollback())
            after = assert_store_sound(env, {"b", "c"})
            target = ModelStore(env.store).rollback_target()
            if after == "c":  # the switch did not happen: rollback still goes to b
                assert killed and target == "b", (rnd, step)
                continue
            assert target == "a", (rnd, step)  # never back to c, which was rolled back from
            ModelStore(env.store).activate("c")  # put it back for the next round
            assert ModelStore(env.store).rollback_target() == "b"
            if not killed:
                break
        else:
            pytest.fail("rollback never completed")


def test_rollback_never_returns_to_a_version_rolled_back_from(env):
    store = ModelStore(env.store)
    for v in ("1", "2", "3"):
        store.install(env.bundle(v), env.cfg(), env.pub)
    assert store.rollback().version == "2"  # 3 failed its health gate
    assert store.rollback().version == "1"
    with pytest.raises(ModelError, match="nothing to roll back to"):
        store.rollback()
    store.activate("3")  # chosen by name: no longer marked
    assert store.rollback_target() == "1"


@pytest.mark.slow
def test_install_killed_from_outside_at_random_moments(env):
    """SIGKILL from another process at random times during the real CLI (the hook is not used)."""
    ModelStore(env.store).install(env.bundle("0"), env.cfg(), env.pub)
    rng = random.Random(9)
    old = "0"
    big = os.urandom(3_000_000)  # big enough that extraction and fsync take a while
    for i in range(12):
        new = f"r{i}"
        bundle = env.bundle(new, files={"model.onnx": big + new.encode()})
        proc = subprocess.Popen(
            [
                *MODEL_CLI,
                "install",
                str(bundle),
                "-c",
                str(env.config),
                "--store",
                str(env.store),
                "--reload-cmd",
                "",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.3, 2.0))
        proc.kill()
        proc.wait()
        active = assert_store_sound(env, {old, new})
        ModelStore(env.store).install(bundle, env.cfg(), env.pub)
        assert assert_store_sound(env, {new}) == new
        old = new
        del active


@pytest.mark.slow
@pytest.mark.parametrize("syscall", ["fsync", "rename"])
def test_install_killed_by_strace_at_every_fsync_and_rename(env, syscall):
    """strace's fault injection SIGKILLs the real CLI at the n-th fsync (or rename), for every n.

    Finer than the store's own step hook: it also stops inside the bundle's extraction.
    """
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (make system-deps installs it)")
    ModelStore(env.store).install(env.bundle("0"), env.cfg(), env.pub)
    old, completed = "0", False
    for n in range(1, 60):
        new = f"{syscall}.{n}"
        bundle = env.bundle(new)
        inject = ["-e", f"trace={syscall}", "-e", f"inject={syscall}:signal=KILL:when={n}"]
        cli = [*MODEL_CLI, "install", str(bundle), "-c", str(env.config), "--store", str(env.store)]
        res = subprocess.run(
            [strace, "-f", "-qq", "-o", "/dev/null", *inject, *cli, "--reload-cmd", ""],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert_store_sound(env, {old, new})
        ModelStore(env.store).install(bundle, env.cfg(), env.pub)  # recovery: the next install completes
        assert assert_store_sound(env, {new}) == new
        old = new
        if res.returncode == 0:  # the n-th call never came: every earlier one was a kill point
            completed = True
            assert n > 3, f"only {n - 1} {syscall} calls: the store does not make its writes durable"
            break
        assert res.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), res.stderr
    assert completed

"""Signed model bundles: real ed25519 keys (cryptography), real tar archives, the demo model.

Every way of tampering the issue names is tried on a real bundle and must be refused with one line
naming the bundle: a byte of a model file changed, the manifest edited, a signature from another key,
a file missing, an extra file, the wrong public key; plus the archive-level tricks (path traversal,
a symlink member, members out of order).
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from edge.bundle import (
    Bundle,
    BundleError,
    DeviceGPU,
    canonical_json,
    local_gpu,
    read_bundle,
    select_variant,
)
from edge.model import file_sha256
from export.bundle import SigningError, bundle_models, generate_keys, write_bundle

NAMES = ["apple", "orange"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keys(tmp_path_factory.mktemp("other"))


def _manifest(files: dict[str, bytes], variants: list[dict]) -> dict:
    import hashlib

    return {
        "format": "lanecount-bundle/1",
        "name": "m",
        "version": "1.0",
        "created_at": "2026-12-01T00:00:00Z",
        "names": NAMES,
        "imgsz": 64,
        "input": {"name": "images", "shape": [1, 3, 64, 64], "dtype": "float32"},
        "output": {"name": "output0", "shape": [1, 6, 84], "layout": "yolov8 (1, 4+nc, anchors)"},
        "weights_sha256": None,
        "tools": {},
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for n, d in files.items()},
        "variants": variants,
    }


@pytest.fixture
def small(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    """A bundle of two small opaque files (the reader never parses the models)."""
    files = {"m.onnx": b"fp32 model bytes" * 100, "m.int8.onnx": b"int8 model bytes" * 50}
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    variants = [
        {"file": "m.onnx", "kind": "onnx", "precision": "fp32"},
        {"file": "m.int8.onnx", "kind": "onnx", "precision": "int8"},
    ]
    return write_bundle(tmp_path / "m.lcb", _manifest(files, variants), paths, keys[0])


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]


def _rewrite(path: Path, members: list[tuple[str, bytes]], symlink: str | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


def test_round_trip_of_the_demo_model(tmp_path: Path, keys: tuple[Path, Path], demo_model: Path) -> None:
    manifest = bundle_models(demo_model, tmp_path / "demo.lcb", keys[0], version="7.1")
    b = read_bundle(tmp_path / "demo.lcb", keys[1])
    assert b.manifest == manifest and b.version == "7.1" and b.imgsz == 320
    assert b.names == tuple(json.loads(demo_model.with_suffix(".json").read_text())["names"])
    assert b.manifest["input"] == {"name": "images", "shape": [1, 3, 320, 320], "dtype": "float32"}
    assert b.manifest["output"]["shape"] == [1, 10, 2100] and "onnxruntime" in b.manifest["tools"]
    assert [m for m, _ in _members(b.path)] == ["manifest.json", "manifest.sig", "files/demo.onnx"]
    assert _members(b.path)[0][1] == canonical_json(manifest)  # canonical bytes are what is signed
    out = b.extract(tmp_path / "x")
    assert (out / "files" / "demo.onnx").read_bytes() == demo_model.read_bytes()
    assert (out / "manifest.json").read_bytes() == b.manifest_bytes and len(
        (out / "manifest.sig").read_bytes()
    ) == 64


def test_keygen_private_key_is_0600_and_not_overwritten(tmp_path: Path) -> None:
    key, pub = generate_keys(tmp_path)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and b"PUBLIC KEY" in pub.read_bytes()
    with pytest.raises(SigningError, match="exists already"):
        generate_keys(tmp_path)


def test_a_valid_small_bundle_reads(small: Path, keys: tuple[Path, Path]) -> None:
    b = read_bundle(small, keys[1])
    assert isinstance(b, Bundle) and [v["precision"] for v in b.variants] == ["fp32", "int8"]


def test_one_byte_of_a_model_file_changed_is_refused(small: Path, keys: tuple[Path, Path]) -> None:
    data = bytearray(small.read_bytes())
    at = data.index(b"int8 model bytes") + 3
    data[at] ^= 0x01
    small.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"m\.lcb: files/m\.int8\.onnx: sha256 does not match"):
        read_bundle(small, keys[1])


def test_an_edited_manifest_is_refused(small: Path, keys: tuple[Path, Path]) -> None:
    members = _members(small)
    edited = json.loads(members[0][1])
    edited["version"] = "9.9"
    _rewrite(small, [("manifest.json", canonical_json(edited)), *members[1:]])
    with pytest.raises(BundleError, match=r"m\.lcb: signature does not match signing\.pub"):
        read_bundle(small, keys[1])


def test_a_signature_from_another_key_is_refused(
    small: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    members = _members(small)
    (tmp_path / "a").mkdir()
    for name, data in members[2:]:
        (tmp_path / "a" / name.split("/")[1]).write_bytes(data)
    paths = [tmp_path / "a" / n.split("/")[1] for n, _ in members[2:]]
    forged = write_bundle(tmp_path / "forged.lcb", json.loads(members[0][1]), paths, other_keys[0])
    with pytest.raises(BundleError, match="signature does not match"):
        read_bundle(forged, keys[1])
    assert read_bundle(forged, other_keys[1]).version == "1.0"  # the same bytes are fine for their key


def test_the_wrong_public_key_is_refused(small: Path, other_keys: tuple[Path, Path]) -> None:
    with pytest.raises(BundleError, match="signature does not match"):
        read_bundle(small, other_keys[1])


def test_a_missing_file_is_refused(small: Path, keys: tuple[Path, Path]) -> None:
    _rewrite(small, _members(small)[:-1])
    with pytest.raises(BundleError, match=r"files/m\.int8\.onnx is listed in the manifest but missing"):
        read_bundle(small, keys[1])


def test_an_extra_file_is_refused(small: Path, keys: tuple[Path, Path]) -> None:
    _rewrite(small, [*_members(small), ("files/evil.onnx", b"x")])
    with pytest.raises(
        BundleError, match=r"files/evil\.onnx is in the archive but not in the signed manifest"
    ):
        read_bundle(small, keys[1])


@pytest.mark.parametrize(
    "name", ["files/../../etc/cron.d/x", "/files/m.onnx", "other/m.onnx", "files/.hidden"]
)
def test_path_traversal_and_strange_members_are_refused(
    small: Path, keys: tuple[Path, Path], name: str
) -> None:
    _rewrite(small, [*_members(small), (name, b"x")])
    with pytest.raises(BundleError, match="unexpected member"):
        read_bundle(small, keys[1])


def test_symlinks_unsigned_and_reordered_archives_are_refused(small: Path, keys: tuple[Path, Path]) -> None:
    members = _members(small)
    _rewrite(small, members, symlink="files/link")
    with pytest.raises(BundleError, match="not a regular file"):
        read_bundle(small, keys[1])
    _rewrite(small, [members[0], *members[2:]])
    with pytest.raises(BundleError, match="unsigned or malformed: member 2"):
        read_bundle(small, keys[1])
    _rewrite(small, [members[0]])
    with pytest.raises(BundleError, match=r"unsigned: no manifest\.sig"):
        read_bundle(small, keys[1])
    small.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(BundleError, match="not a bundle"):
        read_bundle(small, keys[1])


def test_extract_rehashes_so_a_swap_after_verification_is_caught(
    small: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    b = read_bundle(small, keys[1])
    data = bytearray(small.read_bytes())
    data[data.index(b"fp32 model bytes")] ^= 0x01
    small.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="changed since the bundle was verified"):
        b.extract(tmp_path / "x")


def test_verify_command_exit_codes(
    small: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    def verify(pub: Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "export.cli", "verify", str(small), "--pub", str(pub)]
        return subprocess.run(cmd, capture_output=True, text=True)

    ok = verify(keys[1])
    assert ok.returncode == 0 and ok.stdout.startswith("valid: ") and "m 1.0" in ok.stdout
    bad = verify(other_keys[1])
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "signature does not match" in bad.stderr


# --- choosing the variant --------------------------------------------------------------------------

ORIN = DeviceGPU("Orin", "8.7", "10.3.0")


def _with_engines(*engines: dict) -> dict:
    variants = [
        {"file": "m.onnx", "kind": "onnx", "precision": "fp32"},
        {"file": "m.int8.onnx", "kind": "onnx", "precision": "int8"},
        *engines,
    ]
    return _manifest({v["file"]: b"x" for v in variants}, variants)


def _engine(precision: str, gpu: str = "Orin", cc: str = "8.7", trt: str = "10.3.0") -> dict:
    name = f"m.{gpu}.sm{cc.replace('.', '')}.trt{trt}.{precision}.engine"
    return {
        "file": name,
        "kind": "engine",
        "precision": precision,
        "gpu": gpu,
        "compute_capability": cc,
        "tensorrt": trt,
    }


def test_engine_for_this_gpu_wins_and_prefers_the_asked_precision() -> None:
    m = _with_engines(_engine("fp16"), _engine("int8"))
    v, why = select_variant(m, precision="fp16", gpu=ORIN)
    assert v["precision"] == "fp16" and v["kind"] == "engine" and "Orin" in why
    assert select_variant(m, precision=None, gpu=ORIN)[0]["precision"] == "int8"
    assert (
        select_variant(m, precision="int8", gpu=DeviceGPU("Orin", "8.7", "10.3.0.26"))[0]["kind"] == "engine"
    )


def test_without_tensorrt_int8_onnx_when_asked_else_fp32() -> None:
    m = _with_engines(_engine("fp16"))
    v, why = select_variant(m, precision="int8", gpu=None)
    assert (
        v["file"] == "m.int8.onnx"
        and "backend.precision is int8" in why
        and "TensorRT is not available" in why
    )
    assert select_variant(m, precision=None, gpu=None)[0]["file"] == "m.onnx"


def test_an_engine_for_another_gpu_or_tensorrt_is_refused_with_how_to_rebuild() -> None:
    for engine in (_engine("fp16", gpu="Xavier", cc="7.2"), _engine("fp16", trt="10.1.0")):
        v, why = select_variant(_with_engines(engine), precision=None, gpu=ORIN)
        assert v["file"] == "m.onnx"
        assert "lanecount-export engine m.onnx --precision fp16" in why and "this device is Orin" in why
    only_engine = _manifest(
        {"e.engine": b"x"}, [_engine("int8", gpu="Xavier", cc="7.2") | {"file": "e.engine"}]
    )
    with pytest.raises(BundleError, match=r"no variant runs here: engine e\.engine was built for Xavier"):
        select_variant(only_engine, precision=None, gpu=ORIN)
    with pytest.raises(BundleError, match="only TensorRT engines and TensorRT is not available"):
        select_variant(only_engine, precision=None, gpu=None)


def test_local_gpu_without_tensorrt() -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert local_gpu() is None
    else:
        pytest.skip("tensorrt is importable here")


# --- the daemon runs bundles -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def conveyor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A synthetic conveyor video with known crossings (seed 10: 5 in 10 s, as in test_daemon)."""
    from train.synth_video import render_video

    out = tmp_path_factory.mktemp("video")
    return out / "video.mp4", render_video(out, 10, 10)


def _run_daemon(tmp: Path, video: tuple[Path, dict], model: dict, **sections: object) -> tuple[dict, object]:
    import yaml

    from edge.daemon import Daemon

    cfg = {
        "state_dir": str(tmp / "state"),
        "source": {"type": "file", "path": str(video[0])},
        "model": model,
        "counting": {"lines": [video[1]["line"]]},
        "mqtt": {"enabled": False},
        **sections,
    }
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "edge.yaml").write_text(yaml.safe_dump(cfg))
    daemon = Daemon(tmp / "edge.yaml", counts_out=tmp / "counts.json")
    assert daemon.run() == 0
    return json.loads((tmp / "counts.json").read_text())["lines"], daemon


@pytest.mark.slow
def test_the_daemon_counts_from_a_bundle_exactly_as_from_the_bare_model(
    tmp_path: Path, keys: tuple[Path, Path], demo_model: Path, conveyor: tuple[Path, dict], caplog
) -> None:
    bare, _ = _run_daemon(tmp_path / "bare", conveyor, {"path": str(demo_model)})
    bundle_models(demo_model, tmp_path / "demo.lcb", keys[0], version="2026.12.01-b1")
    model = {"path": str(tmp_path / "demo.lcb"), "public_key": str(keys[1])}
    with caplog.at_level("INFO", logger="edge.model"):
        counted, daemon = _run_daemon(tmp_path / "lcb", conveyor, model)
    assert counted == bare == conveyor[1]["lines"]
    info = daemon.model  # type: ignore[attr-defined]
    assert info.version == "2026.12.01-b1" and info.bundle == tmp_path / "demo.lcb"
    assert info.path.is_relative_to(tmp_path / "lcb" / "state" / "models")
    assert (
        info.sha256
        == json.loads((info.path.parent.parent / "manifest.json").read_text())["files"]["demo.onnx"]["sha256"]
    )
    assert "running demo.onnx (FP32 ONNX model on ONNX Runtime)" in caplog.text


def test_a_bundle_without_public_key_or_tampered_is_refused_at_start(
    tmp_path: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path], small: Path
) -> None:
    from edge.config import ModelConfig
    from edge.model import load_model_info

    with pytest.raises(BundleError, match=r"m\.lcb: model\.public_key is required"):
        load_model_info(ModelConfig(path=str(small)))
    with pytest.raises(BundleError, match="signature does not match"):
        load_model_info(ModelConfig(path=str(small), public_key=str(other_keys[1])))
    info = load_model_info(ModelConfig(path=str(small), public_key=str(keys[1])))
    assert info.version == "1.0" and info.path.name == "m.onnx" and info.path.read_bytes().startswith(b"fp32")
    # The daemon refuses it at start-up: one line, exit 2.
    config = tmp_path / "edge.yaml"
    config.write_text(
        f"model: {{path: {small}, public_key: {other_keys[1]}}}\n"
        f"source: {{type: file, path: {small}}}\nstate_dir: {tmp_path / 'state'}\nmqtt: {{enabled: false}}\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "m.lcb: signature does not match signing.pub" in res.stderr.strip().splitlines()[-1]


def test_a_bundle_chooses_int8_when_the_backend_asks(
    tmp_path: Path, keys: tuple[Path, Path], small: Path
) -> None:
    from edge.config import parse_config
    from edge.model import load_model_info

    text = (
        f"model: {{path: {small}, public_key: {keys[1]}}}\n"
        f"backend: {{precision: int8}}\nstate_dir: {tmp_path / 's'}\n"
    )
    cfg = parse_config(text)
    assert cfg.model is not None
    info = load_model_info(cfg.model)
    extracted = info.path.parent.parent
    assert extracted.parent == tmp_path / "s" / "models" and extracted.name.startswith("m--1.0-")
    assert info.path == extracted / "files" / "m.int8.onnx" and info.sha256 == file_sha256(info.path)
    # Loaded again (a reload): the intact extraction is re-used, not rewritten.
    stamp = info.path.stat().st_mtime_ns
    assert load_model_info(cfg.model) == info and info.path.stat().st_mtime_ns == stamp
    # A damaged extraction is replaced from the (verified) bundle.
    info.path.write_bytes(b"damaged")
    assert load_model_info(cfg.model).path.read_bytes().startswith(b"int8 model bytes")
    assert info.variant is not None and info.variant.startswith("onnx int8")
    tensorrt = parse_config(text.replace("precision: int8", "type: tensorrt"))
    assert tensorrt.model is not None
    with pytest.raises(BundleError, match=r"backend\.type tensorrt needs an engine for this GPU"):
        load_model_info(tensorrt.model)


def test_a_new_bundle_version_replaces_the_old_extraction(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    from edge.config import parse_config
    from edge.model import load_model_info

    infos = []
    for version in ("1.0", "1.1"):
        (tmp_path / "m.onnx").write_bytes(f"model {version}".encode())
        files = {"m.onnx": (tmp_path / "m.onnx").read_bytes()}
        manifest = _manifest(files, [{"file": "m.onnx", "kind": "onnx", "precision": "fp32"}]) | {
            "version": version
        }
        write_bundle(tmp_path / "m.lcb", manifest, [tmp_path / "m.onnx"], keys[0])
        cfg = parse_config(
            f"model: {{path: {tmp_path / 'm.lcb'}, public_key: {keys[1]}}}\nstate_dir: {tmp_path / 's'}\n"
        )
        assert cfg.model is not None
        infos.append(load_model_info(cfg.model))
    assert [i.version for i in infos] == ["1.0", "1.1"] and infos[1].path.read_bytes() == b"model 1.1"
    assert [p.name for p in (tmp_path / "s" / "models").iterdir()] == [infos[1].path.parent.parent.name]


def test_an_engine_only_bundle_is_refused_by_onnx_runtime_with_the_bundle_named(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    from edge.config import ModelConfig
    from edge.model import load_model_info

    engine = tmp_path / "e.engine"
    engine.write_bytes(b"plan")
    variant = {"file": "e.engine", "kind": "engine", "precision": "fp16", "compute_capability": "8.7"}
    write_bundle(tmp_path / "e.lcb", _manifest({"e.engine": b"plan"}, [variant]), [engine], keys[0])
    with pytest.raises(BundleError, match=r"e\.lcb: the bundle holds only TensorRT engines"):
        load_model_info(ModelConfig(path=str(tmp_path / "e.lcb"), public_key=str(keys[1])))

"""``lanecount-export``: turn trained weights into what the edge daemon loads.

Today: ``onnx`` — a plain Ultralytics ONNX export plus the metadata JSON the daemon reads (class
names, imgsz, version, sha256). Versioned, signed bundles and TensorRT engines come with the export
issue; until then the JSON next to the ONNX file is the model's contract with ``edge/``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from edge.cli import run_cli
from edge.errors import LanecountError
from edge.model import file_sha256

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


class ExportError(LanecountError):
    """An export input is missing or unusable."""


def export_onnx(weights: Path, out: Path, imgsz: int, version: str | None = None, opset: int = 12) -> Path:
    """Export ``weights`` (.pt) to ``out`` (.onnx) and write ``out`` with .json beside it."""
    if not weights.exists():
        raise ExportError(f"{weights}: weights file not found")
    from ultralytics import YOLO

    model = YOLO(str(weights))
    onnx = Path(model.export(format="onnx", imgsz=imgsz, opset=opset, simplify=True, dynamic=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    if onnx.resolve() != out.resolve():
        shutil.copyfile(onnx, out)
    names = model.names
    meta = {
        "name": out.stem,
        "version": version or time.strftime("%Y.%m.%d"),
        "imgsz": imgsz,
        "names": [names[i] for i in sorted(names)],
        "source_weights": weights.name,
        "sha256": file_sha256(out),
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


@app.command()
def onnx(
    weights: Annotated[
        Path, typer.Argument(help="trained weights (.pt), e.g. runs/fit/train/weights/best.pt")
    ],
    out: Annotated[Path, typer.Option(help="output .onnx path; the .json goes beside it")] = Path(
        "model.onnx"
    ),
    imgsz: Annotated[
        int, typer.Option(help="network input size (static 1x3xNxN, as TensorRT 10 likes)")
    ] = 640,
    opset: Annotated[int, typer.Option(min=12, help="ONNX opset (TensorRT 10 parses up to 20)")] = 17,
    version: Annotated[str | None, typer.Option(help="model version (default: today's date)")] = None,
    data: Annotated[
        Path | None, typer.Option(help="dataset YAML for the parity images (default: the training data)")
    ] = None,
) -> None:
    """Export weights to ONNX plus the metadata JSON, and check parity with the PyTorch model."""
    from ultralytics import YOLO

    from export.parity import check_parity, sample_images

    path = export_onnx(weights, out, imgsz, version, opset=opset)
    model = YOLO(str(weights))
    trained_on = (getattr(model, "ckpt", None) or {}).get("train_args", {}).get("data")
    parity = check_parity(model.model, path, imgsz, sample_images(trained_on, data))
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["weights_sha256"] = file_sha256(weights)
    meta["parity"] = {
        "images": parity.images,
        "max_abs_diff": parity.max_abs_diff,
        "mismatches": parity.mismatches,
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    typer.echo(parity.summary())
    for line in parity.mismatches:
        typer.echo(f"  {line}")
    typer.echo(f"wrote {path} and {path.with_suffix('.json')}")
    if parity.mismatches:
        typer.echo(f"parity failed: {path} does not detect what {weights} detects", err=True)
        raise typer.Exit(1)


@app.command()
def int8(
    model: Annotated[Path, typer.Argument(help="the FP32 ONNX model (its .json beside it)")],
    data: Annotated[Path, typer.Option(help="dataset YAML: calibration from train, the gate on val")],
    out: Annotated[Path | None, typer.Option(help="the INT8 QDQ model (default: M.int8.onnx)")] = None,
    calib: Annotated[int, typer.Option(min=1, help="calibration images, balanced by class")] = 64,
    max_drop: Annotated[float, typer.Option(min=0, help="largest mAP50-95 loss allowed, in points")] = 1.0,
    quantize_head: Annotated[
        bool, typer.Option(help="quantize the Detect head too (shows what the gate catches)")
    ] = False,
    seed: Annotated[int, typer.Option(help="seed of the calibration pick")] = 0,
) -> None:
    """Quantize to an INT8 QDQ model; gate it on mAP50-95 (FP32 vs INT8 on val); exit 1 when it fails."""
    from edge.config import ModelConfig
    from edge.model import load_model_info
    from export.int8 import gate, quantize_int8, write_sidecar

    fp32 = load_model_info(ModelConfig(path=str(model)))
    out = out or model.with_name(f"{model.stem}.int8.onnx")
    report = quantize_int8(fp32.path, data, out, calib=calib, keep_head_fp32=not quantize_head, seed=seed)
    # The sidecar carries names/imgsz/version, so the INT8 model also loads on its own.
    out.with_suffix(".json").write_text(json.dumps(_edge_meta(fp32, out)))
    result = gate(fp32, load_model_info(ModelConfig(path=str(out))), data, max_drop)
    typer.echo(result.table())
    side = write_sidecar(out, fp32, report, result)
    kept = len(report["kept_fp32"])
    typer.echo(
        f"wrote {out} and {side} ({report['calibration']['images']} calibration images, {kept} nodes FP32)"
    )
    if not result.passed:
        typer.echo(f"INT8 gate failed: {out} is kept for inspection; `bundle` refuses it", err=True)
        raise typer.Exit(1)


def _edge_meta(info: Any, out: Path) -> dict[str, Any]:
    return {"name": out.stem, "version": info.version, "imgsz": info.imgsz, "names": list(info.names)}


@app.command()
def engine(
    model: Annotated[
        Path, typer.Argument(help="ONNX model: FP32 for fp16, the QDQ model from `int8` for int8")
    ],
    precision: Annotated[str, typer.Option(help="fp16 or int8")] = "fp16",
    out: Annotated[
        Path | None, typer.Option(help="engine file (default: named for GPU, TensorRT, precision)")
    ] = None,
    workspace: Annotated[int, typer.Option(min=16, help="builder workspace in MB")] = 1024,
    timing_cache: Annotated[Path | None, typer.Option(help="TensorRT timing cache, read and updated")] = None,
    data: Annotated[
        Path | None, typer.Option(help="dataset YAML: verify on val images, report the mAP delta")
    ] = None,
) -> None:
    """Build a TensorRT 10 engine on this device and verify it against ONNX Runtime."""
    from edge.config import ModelConfig
    from edge.model import load_model_info
    from export import engine as eng

    settings = eng.build_settings(precision, workspace, timing_cache)
    eng.check_onnx_for(precision, model)
    info = load_model_info(ModelConfig(path=str(model)))
    try:
        eng.require_tensorrt()
    except LanecountError:
        target = out or model.with_name(f"{model.stem.removesuffix('.int8')}.{precision}.engine")
        typer.echo(eng.trtexec_command(model, target, settings))
        raise
    from edge.bundle import local_gpu

    gpu = local_gpu()
    if gpu is None:
        raise eng.EngineError(
            "engine: TensorRT is installed but no CUDA GPU answers (cudaGetDeviceProperties)"
        )
    out = out or model.with_name(eng.engine_filename(model, gpu, precision))
    typer.echo(f"equivalent: {eng.trtexec_command(model, out, settings)}")
    eng.build_engine(model, out, settings)
    meta = eng.engine_metadata(_edge_meta(info, out) | {"name": out.stem}, gpu, precision, model, {})
    eng.write_metadata(out, meta)
    agreement, metrics = _verify_engine(info, out, data)
    eng.write_metadata(out, meta | metrics)
    typer.echo(agreement.summary(out.name))
    for line in agreement.unmatched:
        typer.echo(f"  {line}")
    typer.echo(f"wrote {out} and {out.with_suffix('.json')}")
    if agreement.unmatched:
        raise typer.Exit(1)


def _verify_engine(info: Any, engine_path: Path, data: Path | None) -> tuple[Any, dict[str, Any]]:
    """Engine vs ONNX Runtime: detections on sample images, and mAP on val when ``data`` is given."""
    import cv2
    import numpy as np

    from edge.backends import create_detector
    from edge.config import BackendConfig, ModelConfig
    from edge.model import load_model_info
    from export.dataset import load_split
    from export.engine import compare_detections
    from export.metrics import score_model

    engine_info = load_model_info(ModelConfig(path=str(engine_path)))
    val = load_split(data, "val") if data else []
    frames = [(s.image.name, cv2.imread(str(s.image))) for s in val[:16]]
    if not frames:
        rng = np.random.default_rng(0)
        frames = [(f"random frame {i}", rng.integers(0, 255, (480, 640, 3), np.uint8)) for i in range(4)]
    with (
        create_detector(BackendConfig(type="onnxruntime", device="cpu"), info) as ref,
        create_detector(BackendConfig(type="tensorrt"), engine_info) as cand,
    ):
        agreement = compare_detections(ref, cand, frames)
    if not val:
        return agreement, {}
    onnx_score, engine_score = score_model(info, val), score_model(engine_info, val, backend="tensorrt")
    delta = (engine_score.map50_95 - onnx_score.map50_95) * 100
    scores = f"ONNX Runtime {onnx_score.map50_95:.4f}, engine {engine_score.map50_95:.4f}"
    typer.echo(f"mAP50-95 on val: {scores} ({delta:+.2f} points)")
    return agreement, {"metrics": engine_score.as_dict("val")}


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="directory for signing.key (0600) and signing.pub")] = Path(
        "keys"
    ),
    force: Annotated[bool, typer.Option(help="replace an existing key pair")] = False,
) -> None:
    """Create the ed25519 key pair that signs bundles; only signing.pub goes to devices."""
    from export.bundle import generate_keys

    key, pub = generate_keys(out, force=force)
    typer.echo(f"wrote {key} (keep it secret) and {pub} (install it as model.public_key)")


@app.command()
def bundle(
    model: Annotated[Path, typer.Argument(help="the FP32 ONNX model (its .json beside it)")],
    key: Annotated[Path, typer.Option(help="signing.key from keygen")],
    out: Annotated[Path, typer.Option(help="the bundle to write (.lcb)")],
    int8: Annotated[Path | None, typer.Option(help="the INT8 QDQ ONNX model from `int8`")] = None,
    engine: Annotated[
        list[Path] | None, typer.Option(help="a TensorRT engine from `engine` (repeatable)")
    ] = None,
    version: Annotated[str | None, typer.Option(help="bundle version (default: the model's)")] = None,
) -> None:
    """Sign the model files into one bundle: manifest (checksums, metrics, versions) + files + signature."""
    from export.bundle import bundle_models

    manifest = bundle_models(model, out, key, int8=int8, engines=tuple(engine or ()), version=version)
    kinds = ", ".join(f"{v['file']} ({v['kind']} {v['precision']})" for v in manifest["variants"])
    typer.echo(f"wrote {out}: {manifest['name']} {manifest['version']}: {kinds}")


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="the bundle (.lcb)")],
    pub: Annotated[Path, typer.Option(help="signing.pub the bundle must be signed with")],
) -> None:
    """Check a bundle's signature and every file's checksum: exit 0 valid, exit 1 with what is wrong."""
    from edge.bundle import BundleError, read_bundle

    try:
        b = read_bundle(path, pub)
    except BundleError as exc:
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(1) from None
    kinds = ", ".join(f"{v['file']} ({v['kind']} {v['precision']})" for v in b.variants)
    typer.echo(f"valid: {path}: {b.name} {b.version}, {len(b.names)} classes, imgsz {b.imgsz}: {kinds}")


@app.command()
def version() -> None:
    """Print the lanecount version."""
    from edge import __version__

    typer.echo(__version__)


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    run_cli(app)


if __name__ == "__main__":
    main()

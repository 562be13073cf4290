"""The ``eval``, ``compare``, ``errors`` and ``report`` commands of ``lanecount-train``.

``train/cli.py`` calls :func:`register` on its typer app. Commands stay thin: they parse options,
call :mod:`train.evaluate`, :mod:`train.errors` or :mod:`train.report`, and print tables. User mistakes
are raised as ``LanecountError`` subclasses, which the CLI's ``main()`` prints as one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from train.evaluate import EvalResult

__all__ = ["register"]

Data = Annotated[Path, typer.Option("--data", "-d", help="YOLO data.yaml of the dataset.")]
Split = Annotated[str, typer.Option(help="Dataset split to score (test or val).")]
Imgsz = Annotated[int, typer.Option(help="Inference image size (an ONNX model uses its exported size).")]
Device = Annotated[str | None, typer.Option(help="Device: cpu, 0, 0,1 … (default: Ultralytics' choice).")]


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _delta(v: float | None) -> str:
    if v is None:
        return "—"
    colour = "green" if v > 0 else "red" if v < 0 else "white"
    return f"[{colour}]{v:+.3f}[/{colour}]"


def _column(table: Table, name: str, first: str) -> None:
    """Names never wrap or get cut (a narrow terminal squeezes the number columns instead)."""
    if name == first:
        table.add_column(name, no_wrap=True, min_width=12)
    else:
        table.add_column(name, justify="right")


def _print_eval(result: EvalResult) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{Path(result.weights).name} on {result.split}")
    for col in ("class", "images", "instances", "P", "R", "mAP50", "mAP50-95"):
        _column(t, col, first="class")
    t.add_row(
        "all",
        "",
        "",
        *(_fmt(result.metric(k)) for k in ("precision", "recall", "map50", "map50_95")),
        style="bold",
    )
    for c in result.classes:
        t.add_row(
            c.name, str(c.images), str(c.instances), *map(_fmt, (c.precision, c.recall, c.map50, c.map50_95))
        )
    console = Console()
    console.print(t)
    console.print("Speed per image: " + ", ".join(f"{k} {v:.1f} ms" for k, v in result.speed.items()))
    console.print(f"{result.fps:.1f} images/s on {result.device}; model version {result.version}")
    console.print(f"Wrote {Path(result.out_dir or '.') / 'eval.json'} and {result.confusion_png}")


def eval_cmd(
    weights: Annotated[Path, typer.Argument(help="Model weights (.pt or .onnx).")],
    data: Data,
    split: Split = "test",
    imgsz: Imgsz = 640,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 16,
    device: Device = None,
    conf: Annotated[float, typer.Option(help="Confidence floor for mAP.")] = 0.001,
    iou: Annotated[float, typer.Option(help="NMS IoU.")] = 0.6,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: runs/eval/<model>-<dataset>-<split>).")
    ] = None,
) -> None:
    """Evaluate a model: mAP, precision, recall per class, speed and a confusion matrix."""
    from train.evaluate import evaluate

    _print_eval(evaluate(weights, data, split, imgsz, batch, device, conf, iou, out))


def compare_cmd(
    baseline: Annotated[Path, typer.Argument(help="Baseline weights (e.g. COCO yolov8n.pt).")],
    finetuned: Annotated[Path, typer.Argument(help="Fine-tuned weights.")],
    data: Data,
    split: Split = "test",
    imgsz: Imgsz = 640,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 16,
    device: Device = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: runs/compare/<versions>-<dataset>-<split>).")
    ] = None,
) -> None:
    """Compare a baseline and a fine-tuned model on the same split, class by class (matched by name)."""
    from rich.console import Console
    from rich.table import Table

    from train.evaluate import OVERALL, ClassDelta, compare

    comp = compare(baseline, finetuned, data, split, imgsz, batch, device, out_dir=out)
    keys = ("map50", "map50_95", "precision", "recall")
    t = Table(title=f"{baseline.name} → {finetuned.name} on {split}: base → tuned (Δ)")
    for col in ("class", "mAP50", "mAP50-95", "P", "R"):
        _column(t, col, first="class")
    deltas = comp.overall_deltas()

    def cell(b: float | None, f: float | None, d: float | None) -> str:
        return f"{_fmt(b)} → {_fmt(f)} ({_delta(d)})"

    t.add_row(
        "all",
        *(cell(comp.baseline.metric(k), comp.finetuned.metric(k), deltas[k]) for k in keys),
        style="bold",
    )
    for c in comp.classes:
        values = [
            cell(ClassDelta._value(c.baseline, k), ClassDelta._value(c.finetuned, k), c.delta(k))
            for k in keys
        ]
        t.add_row(c.name, *values)
    console = Console()
    console.print(t)
    console.print("Δ overall: " + ", ".join(f"{k} {_delta(deltas[k])}" for k in OVERALL))
    folder = Path(comp.plot_png).parent if comp.plot_png else Path(out or ".")
    console.print(f"Wrote {folder / 'compare.json'} and {comp.plot_png}")


def errors_cmd(
    weights: Annotated[list[Path], typer.Argument(help="One or more models; deltas are second − first.")],
    data: Data,
    split: Split = "test",
    conf: Annotated[float, typer.Option(help="Confidence threshold (the operating point).")] = 0.25,
    iou: Annotated[float, typer.Option(help="IoU for a prediction to match a truth box.")] = 0.5,
    imgsz: Imgsz = 640,
    device: Device = None,
    top: Annotated[int, typer.Option(help="Images per gallery.")] = 12,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: runs/errors/<versions>-<dataset>-<split>).")
    ] = None,
) -> None:
    """Error analysis: TP/FP/FN, precision/recall/F1 and galleries of the worst images."""
    from rich.console import Console
    from rich.table import Table

    from train.errors import analyse

    report = analyse(weights, data, split, conf, iou, imgsz, out, top, device)
    t = Table(title=f"Errors on {split} (conf ≥ {conf}, IoU ≥ {iou})")
    for col in ("model", "TP", "FP", "FN", "precision", "recall", "F1"):
        _column(t, col, first="model")
    for m in report.models:
        t.add_row(m.name, str(m.tp), str(m.fp), str(m.fn), *map(_fmt, (m.precision, m.recall, m.f1)))
    console = Console()
    console.print(t)
    delta = report.deltas()
    if delta:
        console.print("Δ: " + ", ".join(f"{k} {_delta(v)}" for k, v in delta.items()))
    per_class = Table(title="Per class (TP/FP/FN, P, R, F1)")
    _column(per_class, "class", first="class")
    for m in report.models:
        _column(per_class, m.name, first="class")
    names = list(dict.fromkeys(c.name for m in report.models for c in m.classes))
    for name in names:
        cells = []
        for m in report.models:
            c = next((x for x in m.classes if x.name == name), None)
            cells.append(
                "—"
                if c is None
                else f"{c.tp}/{c.fp}/{c.fn}  P {_fmt(c.precision)} R {_fmt(c.recall)} F1 {_fmt(c.f1)}"
            )
        per_class.add_row(name, *cells)
    console.print(per_class)
    galleries = [g for m in report.models for g in (m.fp_gallery, m.fn_gallery) if g]
    console.print(f"Wrote {report.csv}" + (f" and {len(galleries)} galleries" if galleries else ""))


def report_cmd(
    out: Annotated[Path, typer.Option(help="Markdown file to write.")] = Path("report.md"),
    run_dir: Annotated[
        Path, typer.Option("--run-dir", "--eval-dir", help="Take every result under this folder.")
    ] = Path("runs"),
    runs: Annotated[
        list[Path] | None,
        typer.Option(
            "--run",
            help="Only these (repeatable): eval/compare/errors JSON or their folders, fit run folders.",
        ),
    ] = None,
    check: Annotated[
        Path | None, typer.Option(help="A dataset check in Markdown (check --md FILE) to include.")
    ] = None,
) -> None:
    """Write one Markdown report: check, training runs, one row per model version, comparisons, errors."""
    from train.evaluate import EvalError
    from train.report import Sources, collect, load_result, write_report

    if check is not None and not check.is_file():
        raise EvalError(f"{check}: check report not found")
    if runs:
        sources = Sources()
        for path in runs:
            load_result(path, sources)
    else:
        sources = collect(run_dir)
    for path in sources.used:
        typer.echo(f"using {path}")
    path = write_report(out, check_report=check, **sources.kwargs())
    typer.echo(f"Wrote {path} ({', '.join(sources.names() + (['check'] if check else []))})")


def register(app: typer.Typer) -> None:
    """Add ``eval``, ``compare``, ``errors`` and ``report`` to ``app``."""
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)
    app.command("errors")(errors_cmd)
    app.command("report")(report_cmd)

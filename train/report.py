"""One Markdown report: dataset check, training runs, every model version evaluated, comparisons, errors.

Image links are relative to the report's folder, so the report and its run folder can be moved or
committed together and still render. :func:`collect` finds every result under a runs folder (one row
per model version, not only the newest); the ``report`` command can instead be given the exact runs,
and it lists the files it used.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from train.errors import ErrorReport
from train.evaluate import _TITLES, Comparison, EvalError, EvalResult, _fmt, _link

__all__ = ["FitRun", "Sources", "collect", "load_fit_run", "load_result", "write_report"]

# What the training table shows of a run's args.yaml, in this order.
HYPER = ("model", "data", "epochs", "imgsz", "batch", "optimizer", "lr0", "freeze", "patience", "seed")


class _Section(Protocol):
    def to_markdown(self, rel_to: Path | None = None) -> str: ...


@dataclass
class FitRun:
    """A training run folder: its arguments, how many epochs ran, its final metrics and curves.

    Attributes:
        folder: the run (``runs/fit/train``).
        args: Ultralytics' ``args.yaml``.
        epochs_done: rows of ``results.csv``.
        final: the last row of ``results.csv`` (metric → value).
        best_fitness: the best mAP50-95 over the epochs (``None`` without results).
        curves: ``results.png`` when drawn.
    """

    folder: Path
    args: dict[str, Any]
    epochs_done: int
    final: dict[str, float] = field(default_factory=dict)
    best_map50_95: float | None = None
    curves: Path | None = None


def load_fit_run(folder: Path | str) -> FitRun:
    """Read a training run folder (``args.yaml``, ``results.csv``, ``results.png``).

    Raises:
        EvalError: the folder has no ``args.yaml`` (not an Ultralytics training run).
    """
    folder = Path(folder)
    args_file = folder / "args.yaml"
    if not args_file.is_file():
        raise EvalError(f"{folder}: not a training run (no args.yaml)")
    args = yaml.safe_load(args_file.read_text()) or {}
    rows: list[dict[str, float]] = []
    results = folder / "results.csv"
    if results.is_file():
        with results.open() as f:
            for raw in csv.DictReader(f):
                rows.append({k.strip(): _num(v) for k, v in raw.items() if k})
    maps = [r["metrics/mAP50-95(B)"] for r in rows if "metrics/mAP50-95(B)" in r]
    png = folder / "results.png"
    return FitRun(
        folder,
        args,
        len(rows),
        rows[-1] if rows else {},
        max(maps) if maps else None,
        png if png.is_file() else None,
    )


def _num(text: str | None) -> float:
    try:
        return float(text or "nan")
    except ValueError:
        return float("nan")


def _fits_markdown(fits: Sequence[FitRun], rel_to: Path) -> str:
    lines = [
        "| run | " + " | ".join(HYPER) + " | epochs run | best mAP50-95 |",
        "|---|" + "---|" * len(HYPER) + "---:|---:|",
    ]
    for run in fits:
        cells = [_short(run.args.get(k)) for k in HYPER]
        lines.append(
            f"| `{run.folder.name}` | " + " | ".join(cells) + f" | {run.epochs_done} | "
            f"{_fmt(run.best_map50_95)} |"
        )
    for run in fits:
        if run.curves:
            lines += [
                "",
                f"**{run.folder.name}: training curves**",
                "",
                f"![{run.folder.name} curves]({_link(run.curves, rel_to)})",
            ]
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    if value is None:
        return "—"
    text = str(value)
    return f"`{_model_name(text)}`" if "/" in text else text


def _model_name(path: str | Path) -> str:
    """``run/best.pt`` for a run's weights (every run has a best.pt), else the file name."""
    p = Path(path)
    return f"{p.parent.parent.name}/{p.name}" if p.parent.name == "weights" else p.name


def _versions_markdown(evals: Sequence[EvalResult]) -> str:
    """One row per model version (and split): the numbers a team reports."""
    head = ["model", "version", "split", "imgsz", *(_TITLES[k] for k in ("map50", "map50_95")), "P", "R"]
    lines = [
        "| " + " | ".join([*head, "images/s", "device"]) + " |",
        "|---|---|---|---:|" + "---:|" * 5 + "---|",
    ]
    for e in evals:
        metrics = " | ".join(_fmt(e.metric(k)) for k in ("map50", "map50_95", "precision", "recall"))
        lines.append(
            f"| `{_model_name(e.weights)}` | `{e.version or '?'}` | {e.split} | {e.imgsz} | {metrics} | "
            f"{e.fps:.1f} | {e.device or '—'} |"
        )
    return "\n".join(lines) + "\n"


_IMAGE_LINK = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")


def _check_section(check_report: Any, rel_to: Path) -> str:
    """A dataset check: a ``CheckReport``, a Markdown file from ``check --md`` (links re-rooted), or text."""
    if hasattr(check_report, "to_markdown"):
        return str(check_report.to_markdown(rel_to=rel_to))
    if isinstance(check_report, Path):
        base = check_report.parent

        def reroot(m: re.Match[str]) -> str:
            target = m.group(2)
            if re.match(r"^[a-z]+://", target) or Path(target).is_absolute():
                return m.group(0)
            moved = os.path.relpath((base / target).resolve(), rel_to.resolve())
            return m.group(1) + Path(moved).as_posix() + m.group(3)

        return _IMAGE_LINK.sub(reroot, check_report.read_text())
    return str(check_report)


T = TypeVar("T")


def _many(value: T | Sequence[T] | None) -> list[T]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]  # type: ignore[list-item]


def write_report(
    out_md: Path | str,
    eval: EvalResult | Sequence[EvalResult] | None = None,  # the section's name, as the CLI calls it
    comparison: Comparison | Sequence[Comparison] | None = None,
    errors: ErrorReport | Sequence[ErrorReport] | None = None,
    check_report: Any = None,
    fits: Sequence[FitRun] | None = None,
) -> Path:
    """Write one Markdown file with the sections that are given, in reading order.

    Args:
        out_md: the report to write (its folder is created).
        eval: one evaluation or several (:func:`train.evaluate.evaluate`): a summary table with one
            row per model version, then each in detail.
        comparison: baseline vs fine-tuned (:func:`train.evaluate.compare`), one or several.
        errors: error analyses (:func:`train.errors.analyse`), one or several.
        check_report: a dataset check: a ``train.dataset.CheckReport``, a Markdown file path, or text.
        fits: training runs (:func:`load_fit_run`): hyper-parameters, epochs and curves.

    Returns:
        ``out_md``.

    Raises:
        EvalError: nothing to report.

    Example:
        >>> write_report("runs/report.md", eval=[before, after], errors=report)  # doctest: +SKIP
    """
    out = Path(out_md)
    evals, comps, errs = _many(eval), _many(comparison), _many(errors)
    if check_report is None and not (evals or comps or errs or fits):
        raise EvalError(f"{out}: nothing to report (no evaluation, comparison or error analysis given)")
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"# lanecount model report\n\nGenerated {stamp}.\n"]
    if check_report is not None:
        parts.append("## Dataset check\n\n" + _check_section(check_report, base))
    if fits:
        parts.append("## Training\n\n" + _fits_markdown(fits, base))
    if evals:
        details = "\n".join(e.to_markdown(rel_to=base) for e in evals)
        parts.append("## Evaluation\n\n" + _versions_markdown(evals) + "\n" + details)
    sections: list[tuple[str, Sequence[_Section]]] = [("Before vs after", comps), ("Errors", errs)]
    parts += [
        f"## {title}\n\n" + "\n".join(s.to_markdown(rel_to=base) for s in items)
        for title, items in sections
        if items
    ]
    out.write_text("\n".join(parts))
    return out


@dataclass
class Sources:
    """What :func:`collect` found, and the files it came from (the command prints them)."""

    eval: list[EvalResult] = field(default_factory=list)
    comparison: list[Comparison] = field(default_factory=list)
    errors: list[ErrorReport] = field(default_factory=list)
    fits: list[FitRun] = field(default_factory=list)
    used: list[Path] = field(default_factory=list)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`write_report`."""
        return {"eval": self.eval, "comparison": self.comparison, "errors": self.errors, "fits": self.fits}

    def names(self) -> list[str]:
        """The sections found."""
        return [k for k, v in self.kwargs().items() if v]


_LOADERS: dict[str, tuple[str, Any]] = {
    "eval.json": ("eval", EvalResult),
    "compare.json": ("comparison", Comparison),
    "errors.json": ("errors", ErrorReport),
}


def load_result(path: Path | str, sources: Sources | None = None) -> Sources:
    """Add one result to ``sources``: an eval/compare/errors JSON, a folder holding one, or a fit run.

    Raises:
        EvalError: nothing usable there.
    """
    found = sources or Sources()
    path = Path(path)
    if path.is_dir() and (path / "args.yaml").is_file():
        found.fits.append(load_fit_run(path))
        found.used.append(path)
        return found
    if path.is_dir():
        files = [path / n for n in _LOADERS if (path / n).is_file()]
        if not files:
            raise EvalError(f"{path}: no eval.json, compare.json, errors.json or args.yaml here")
        path = files[0]
    if path.name not in _LOADERS or not path.is_file():
        raise EvalError(f"{path}: expected eval.json, compare.json, errors.json or a run folder")
    key, kind = _LOADERS[path.name]
    try:
        getattr(found, key).append(kind.from_dict(_read_json(path)))
    except (KeyError, TypeError) as exc:
        raise EvalError(f"{path}: not a lanecount {path.name} (missing or unexpected {exc})") from exc
    found.used.append(path)
    return found


def collect(run_dir: Path | str) -> Sources:
    """Every ``eval.json``, ``compare.json``, ``errors.json`` and training run under ``run_dir``.

    Results are ordered by time (oldest first), so the model versions read in the order they came.
    An ``eval.json`` that belongs to a comparison (under its ``baseline``/``finetuned`` folders) is
    skipped: the comparison already shows it.

    Raises:
        EvalError: ``run_dir`` is missing or holds none of those files.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise EvalError(f"{root}: run folder not found")
    found = Sources()
    paths = [p for name in _LOADERS for p in root.rglob(name) if not _inside_comparison(p)]
    paths += [p.parent for p in root.rglob("args.yaml") if (p.parent / "results.csv").is_file()]
    for path in sorted(paths, key=lambda p: (p.stat().st_mtime, str(p))):
        load_result(path, found)
    if not found.used:
        raise EvalError(
            f"{root}: no eval.json, compare.json, errors.json or training run found (run fit/eval first)"
        )
    return found


def _inside_comparison(path: Path) -> bool:
    return (
        path.name == "eval.json"
        and path.parent.name in ("baseline", "finetuned")
        and (path.parent.parent / "compare.json").exists()
    )


def _read_json(path: Path) -> Mapping[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EvalError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc

"""One Markdown report bringing the evaluation, comparison and error analysis together.

Image links are relative to the report's folder, so the report and its run folder can be moved or
committed together and still render.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from train.errors import ErrorReport
from train.evaluate import Comparison, EvalError, EvalResult, _link

__all__ = ["collect", "write_report"]


class _Section(Protocol):
    def to_markdown(self, rel_to: Path | None = None) -> str: ...


def _check_section(check_report: Any, rel_to: Path) -> str:
    """A dataset check: ``train.dataset.CheckReport`` (``to_text()``, ``plots``), a Markdown file, or text."""
    if hasattr(check_report, "to_text"):
        text = f"```text\n{check_report.to_text()}\n```\n"
        plots = getattr(check_report, "plots", None) or {}
        return text + "".join(f"\n![{name}]({_link(path, rel_to)})\n" for name, path in plots.items())
    if isinstance(check_report, Path):
        return check_report.read_text()
    return str(check_report)


def write_report(
    out_md: Path | str,
    eval: EvalResult | None = None,  # the section's name, as the CLI calls it
    comparison: Comparison | None = None,
    errors: ErrorReport | None = None,
    check_report: Any = None,
) -> Path:
    """Write one Markdown file with the sections that are given, in reading order.

    Args:
        out_md: the report to write (its folder is created).
        eval: an evaluation (:func:`train.evaluate.evaluate`).
        comparison: baseline vs fine-tuned (:func:`train.evaluate.compare`).
        errors: an error analysis (:func:`train.errors.analyse`).
        check_report: a dataset check: a ``train.dataset.CheckReport``, a Markdown file path, or text.

    Returns:
        ``out_md``.

    Raises:
        EvalError: nothing to report.

    Example:
        >>> write_report("runs/report.md", eval=result, errors=report)  # doctest: +SKIP
    """
    out = Path(out_md)
    sections: list[tuple[str, _Section | None]] = [
        ("Evaluation", eval),
        ("Before vs after", comparison),
        ("Errors", errors),
    ]
    if check_report is None and all(s is None for _, s in sections):
        raise EvalError(f"{out}: nothing to report (no evaluation, comparison or error analysis given)")
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"# lanecount model report\n\nGenerated {stamp}.\n"]
    if check_report is not None:
        parts.append("## Dataset check\n\n" + _check_section(check_report, base))
    parts += [
        f"## {title}\n\n" + section.to_markdown(rel_to=base)
        for title, section in sections
        if section is not None
    ]
    out.write_text("\n".join(parts))
    return out


def collect(run_dir: Path | str) -> dict[str, Any]:
    """Find the newest ``eval.json``, ``compare.json`` and ``errors.json`` under ``run_dir``.

    An ``eval.json`` that belongs to a comparison (under its ``baseline``/``finetuned`` folders) is skipped:
    the comparison already shows it.

    Returns:
        Keyword arguments for :func:`write_report` (only the sections found).

    Raises:
        EvalError: ``run_dir`` is missing or holds none of those files.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise EvalError(f"{root}: run folder not found")
    found: dict[str, Any] = {}
    loaders: dict[str, tuple[str, Any]] = {
        "eval.json": ("eval", EvalResult),
        "compare.json": ("comparison", Comparison),
        "errors.json": ("errors", ErrorReport),
    }
    for file_name, (key, kind) in loaders.items():
        paths = [p for p in root.rglob(file_name) if not _inside_comparison(p)]
        if paths:
            newest = max(paths, key=lambda p: p.stat().st_mtime)
            try:
                found[key] = kind.from_dict(_read_json(newest))
            except (KeyError, TypeError) as exc:
                raise EvalError(
                    f"{newest}: not a lanecount {file_name} (missing or unexpected {exc})"
                ) from exc
    if not found:
        raise EvalError(
            f"{root}: no eval.json, compare.json or errors.json found (run eval/compare/errors first)"
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

"""`make demo` installs only the edge extra and the video renderer: no PyTorch, no Ultralytics."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

# Python 3.11's tomllib; `make test-edge` runs on the Jetson's 3.10, where this workstation check skips.
tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "torchvision", "ultralytics"}


def _requirements(extra: str, extras: dict[str, list[str]]) -> set[str]:
    """Package names of an extra, following ``lanecount[...]`` references."""
    names: set[str] = set()
    for req in extras[extra]:
        name = re.split(r"[\s<>=;\[]", req, maxsplit=1)[0].lower()
        if name == "lanecount":
            for inner in re.search(r"\[(.*)\]", req).group(1).split(","):  # type: ignore[union-attr]
                names |= _requirements(inner.strip(), extras)
        else:
            names.add(name)
    return names


def test_the_demo_extra_has_no_training_stack() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    demo = _requirements("demo", extras)
    assert _requirements("edge", extras) <= demo and "tqdm" in demo
    assert not demo & HEAVY
    assert not _requirements("backoffice", extras) & HEAVY  # make demo runs the back office collector too


def test_make_demo_uses_its_own_environment() -> None:
    text = (ROOT / "Makefile").read_text()
    target = re.search(r"^demo:(.*)\n((?:\t.*\n)+)", text, re.M)
    assert target is not None
    deps, recipe = target.group(1).split(), target.group(2)
    assert "venv" not in deps and "$(DEMO_STAMP)" in deps
    assert "$(VENV)" not in recipe and "$(PY)" not in recipe
    stamp = re.search(r"^\$\(DEMO_STAMP\):.*\n((?:\t.*\n)+)", text, re.M)
    assert stamp is not None and "'.[demo,backoffice]'" in stamp.group(1) and "torch" not in stamp.group(1)


def test_what_the_demo_runs_imports_without_torch() -> None:
    # None in sys.modules makes any import of these fail, as in an environment without them.
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'ultralytics'): sys.modules[m] = None\n"
        "import edge.demo, edge.cli, train.cli, train.synth_video\n"
        "import backoffice.cli, backoffice.collector, backoffice.demo\n"
        "from typer.testing import CliRunner\n"
        "res = CliRunner().invoke(train.cli.app, ['synth-video', '--help'])\n"
        "assert res.exit_code == 0, res.output\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr

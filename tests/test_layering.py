"""Dependencies point one way: edge/ is the runtime core and installs on a Jetson without torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

EDGE = ROOT / "edge"
# Modules imported only when chosen: the Ultralytics backend (workstations), the TensorRT backend
# (needs JetPack's tensorrt), and the benchmark, which times Ultralytics for comparison.
OPTIONAL = {"edge.backends.ultralytics", "edge.backends.tensorrt", "edge.bench"}
HEAVY = ("torch", "ultralytics", "train", "export")


def _modules() -> list[str]:
    names = []
    for path in sorted(EDGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name not in OPTIONAL:
            names.append(name)
    return names


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_edge_never_imports_train_export_or_backoffice() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & {"train", "export", "backoffice"})
        for p in sorted(EDGE.rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_runtime_loads_without_torch_or_ultralytics() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {_modules()!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == []

"""The packages stay in layers: routers imports none of ours, gateway and evals never import
each other, only the command layer (expertgate) imports both. Checked on the source (every
import statement, including those inside functions), so a lazy import cannot hide."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"routers", "gateway", "evals", "expertgate", "tests"}
ALLOWED = {
    "routers": {"routers"},
    "gateway": {"gateway", "routers"},
    "evals": {"evals", "routers"},
    "expertgate": {"expertgate", "gateway", "evals", "routers"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_layers_below_it(package: str) -> None:
    bad = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        extra = _imports(f) - ALLOWED[package]
        if extra:
            bad[str(f.relative_to(ROOT))] = sorted(extra)
    assert not bad, f"{package} imports packages above or beside it: {bad}"

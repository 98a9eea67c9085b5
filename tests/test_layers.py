"""The house rules of docs/design.md, checked: layers only point down, no package imports another
of its own tier (so no package-level cycle can form), and the library imports without typer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sslkit

ROOT = Path(sslkit.__file__).parent

#: tiers, top to bottom (docs/design.md "Layers"): a module may import its own package and any lower tier
TIERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"viz", "datasets"},
    {"eval"},
    {"engine"},
    {"methods"},
    {"views"},
    {"transforms"},
    {"models"},
    {"proposals"},
    {"ops"},
    {"config", "dist"},
    {"io"},
    {"console", "_env", "_testing"},
    {"errors", "__init__"},
]
TIER = {pkg: i for i, tier in enumerate(TIERS) for pkg in tier}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        out.append((name[: -len(".__init__")] if name.endswith(".__init__") else name, f))
    return out


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every ``sslkit.*`` module a file imports, at any depth (function-local imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("sslkit"):
            if node.module == "sslkit":
                found += [(f"sslkit.{a.name}", node.lineno) for a in node.names]
            else:
                found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("sslkit.")]
    return found


def test_every_package_has_a_tier():
    packages = {_package(name) for name, _ in _modules() if name != "sslkit"}
    assert packages <= set(TIER), f"give these packages a tier in docs/design.md and here: {packages - set(TIER)}"


def test_layers_only_point_down():
    bad = []
    for name, path in _modules():
        src = _package(name) if name != "sslkit" else "__init__"
        for target, line in _imports(path):
            dst = _package(target)
            if dst == src or dst not in TIER:
                continue
            if TIER[dst] <= TIER[src]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} ({src}) imports {target} ({dst})")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_the_library_imports_without_typer():
    """Every module outside sslkit.cli imports with typer blocked (library code never needs the CLI)."""
    names = [name for name, _ in _modules() if _package(name) not in ("cli", "__main__") and name != "sslkit"]
    code = ("import sys, importlib\nsys.modules['typer'] = None\n"
            f"for n in {names!r}:\n    importlib.import_module(n)\n"
            "assert not any(m == 'typer' or m.startswith('sslkit.cli') for m in sys.modules if sys.modules[m])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert r.returncode == 0, r.stderr[-2000:]


#: function-local imports of sslkit modules the library keeps, each for an optional dependency
OPTIONAL_IMPORTS = {("sslkit/engine/feed.py", "sslkit.views.plan.device")}  # kornia: the `gpu` extra


def test_no_function_local_imports_in_the_library():
    """Library modules import sslkit at the top: a function-local import can hide a cycle (the CLI
    imports lazily, for a fast `sslkit --help`; an optional dependency is the only other reason)."""
    bad = []
    for name, path in _modules():
        if _package(name) in ("cli", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("sslkit") and \
                            (path.relative_to(ROOT.parent).as_posix(), sub.module) not in OPTIONAL_IMPORTS:
                        bad.append(f"{path.relative_to(ROOT.parent)}:{sub.lineno} imports {sub.module}")
    assert not bad, "move these imports to the top of their module:\n" + "\n".join(bad)


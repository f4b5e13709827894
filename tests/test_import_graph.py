"""Imports run downhill, and sampling never visits ``thinkpix/train/``.

The static check reads every ``import`` of the package (also those inside functions: a deferred import is
still a dependency) and compares the layers of importer and imported. The dynamic check runs
``thinkpix sample`` (with an RSR checkpoint) in a fresh interpreter and lists the modules it loaded.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "thinkpix"

# Lowest first. A module may import from its own unit or from a unit of a strictly lower layer.
LAYERS = [
    {"_lazy", "errors", "files"},
    {"argtypes", "core", "images"},
    {"flags", "models", "shapes"},
    {"pipelines"},
    {"sampling", "frozenlake"},
    {"train", "eval"},
    {"analysis"},
    {"demo"},
    {"cli", "__init__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """``thinkpix.train.loop`` -> ``train``; ``thinkpix`` (the package's own ``__init__``) -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(src: Path, name: str) -> bool:
    path = src / name.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").is_file()


def _imports(path: Path, src: Path = SRC) -> set[str]:
    """Absolute ``thinkpix.*`` modules imported anywhere in ``path`` (``from . import x`` names module x)."""
    name = _module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("thinkpix")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.startswith("thinkpix"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names if _is_module(src, f"{base}.{a.name}")}
    return found


def _lazy_exports(path: Path) -> set[str]:
    """Modules named in a ``lazy_exports(__name__, {...})`` table: imports in all but syntax."""
    package = _module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports":
            for key in node.args[1].keys:
                relative = key.value
                level = len(relative) - len(relative.lstrip("."))
                anchor = package.split(".")[: len(package.split(".")) - level + 1]
                found.add(".".join(anchor + [relative.lstrip(".")]))
    return found


def test_every_unit_of_the_package_has_a_layer():
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units <= set(RANK), f"give these a layer in LAYERS: {sorted(units - set(RANK))}"


def test_no_import_runs_upward():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for imported in _imports(path) | (_lazy_exports(path) if path.name == "__init__.py" else set()):
            if imported == "thinkpix":  # Python runs the root __init__ (lazy re-exports only) before any submodule
                continue
            a, b = _unit(importer), _unit(imported)
            if a != b and not RANK[b] < RANK[a]:
                upward.append(f"{importer} -> {imported}")
    assert not upward, upward


def test_the_checker_sees_an_upward_import(tmp_path):
    """The static check is only worth something if it would catch the import issue 20 named."""
    loop = tmp_path / "thinkpix" / "train" / "loop.py"
    loop.parent.mkdir(parents=True)
    loop.write_text("def f():\n    from ..analysis.routing import summarize_trace\n")
    imported = _imports(loop, tmp_path)
    assert "thinkpix.analysis.routing" in imported
    assert not RANK["analysis"] < RANK["train"]


def test_sample_with_rsr_does_not_import_train(tmp_path):
    from thinkpix import RSRConfig, apply_rsr, save_rsr
    from tiny import tiny_dit_pipeline

    pipe = tiny_dit_pipeline(tmp_path)
    apply_rsr(pipe.transformer, RSRConfig(num_experts=2, latent_steps=2, rank=4, layers=(1,)))
    save_rsr(pipe.transformer, tmp_path / "rsr")
    script = (
        "import json, sys\n"
        "from thinkpix.cli import main\n"
        f"rc = main(['sample', '--model', {str(tmp_path / 'pipe')!r}, '--rsr', {str(tmp_path / 'rsr')!r}, "
        f"'--class-label', '1', '--num-inference-steps', '2', '--out', {str(tmp_path / 'out')!r}])\n"
        "print(json.dumps({'rc': rc, 'modules': sorted(m for m in sys.modules if m.startswith('thinkpix'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0 and (tmp_path / "out" / "grid.png").is_file()
    assert "thinkpix.sampling" in report["modules"] and "thinkpix.models.checkpoint" in report["modules"]
    assert [m for m in report["modules"] if m == "thinkpix.train" or m.startswith("thinkpix.train.")] == []

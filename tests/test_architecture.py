"""The architecture's "never" rules, checked on the source (ast), so a violation fails CI:

- the core (``captioning/``) never imports Streamlit or ``ui``;
- the data layer (records, text, images) never imports the models, training or TensorFlow;
- pages import only the facade (the ``captioning`` package and ``captioning.captioner``) and ``ui``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_MODULES = ("data", "datasets", "files", "text", "images")
MODEL_SIDE = ("captioning.models", "captioning.training", "captioning.scst", "captioning.decoding",
              "captioning.captioner", "tensorflow", "keras")
PAGE_ALLOWED = ("captioning", "captioning.captioner", "ui", "streamlit", "pandas", "altair", "numpy", "PIL")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (relative imports inside the package resolved to ``captioning.x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = "captioning" if path.parent.name == "captioning" else None
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and package:
                found.add(f"{package}.{node.module}" if node.module else package)
            elif node.module:
                found.add(node.module)
    return found


def within(name: str, roots) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / "captioning").glob("*.py")):
        for name in imports(path):
            if within(name, ("streamlit", "ui")):
                found.append(f"captioning/{path.name} imports {name} (the core knows nothing of the app)")
            if path.stem in DATA_MODULES and within(name, MODEL_SIDE):
                found.append(f"captioning/{path.name} imports {name} (data never imports models)")
    for path in sorted((root / "pages").glob("*.py")):
        for name in imports(path):
            if within(name, ("captioning", "ui")) and not (name in PAGE_ALLOWED or within(name, ("ui",))):
                found.append(f"pages/{path.name} imports {name} (pages use the facade and ui only)")
    return found


def test_the_import_rules_hold():
    assert violations() == []


@pytest.mark.parametrize("where, line, rule", [
    ("captioning/text.py", "import streamlit as st", "knows nothing of the app"),
    ("captioning/images.py", "from .models import MergeDecoder", "data never imports models"),
    ("captioning/data.py", "import tensorflow as tf", "data never imports models"),
    ("pages/caption.py", "from captioning.decoding import DecodeConfig", "facade and ui only"),
])
def test_a_deliberate_violation_is_caught(tmp_path, where, line, rule):
    """Each rule fails on a planted import (in a copy of the sources), so the check above can fail."""
    for folder in ("captioning", "pages"):
        (tmp_path / folder).mkdir()
        for source in (ROOT / folder).glob("*.py"):
            (tmp_path / folder / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    target = tmp_path / where
    target.write_text(line + "\n" + target.read_text(encoding="utf-8"), encoding="utf-8")
    assert any(rule in v and where in v for v in violations(tmp_path))


def sys_path_hacks(root: Path = ROOT) -> list[str]:
    """Tracked .py files that edit ``sys.path`` (the project is installed, so ``import captioning`` and
    ``import ui`` work from anywhere: ``pip install -e .``, which scripts/setup.sh runs)."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True, check=True)
    needles = ("sys.path.insert", "sys.path.append")
    return [name for name in tracked.stdout.split()
            if (root / name).is_file() and any(n in (root / name).read_text(encoding="utf-8") for n in needles)
            and name != "tests/test_architecture.py"]


def test_no_file_edits_sys_path():
    assert sys_path_hacks() == []


def test_a_sys_path_edit_is_caught(tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "bench.py").write_text("import sys\nsys.path.insert(0, '..')\n", encoding="utf-8")
    (tmp_path / "clean.py").write_text("import sys\n", encoding="utf-8")
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    assert sys_path_hacks(tmp_path) == ["bench.py"]

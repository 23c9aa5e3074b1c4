"""The architecture's "never" rules, checked on the source (ast), so a violation fails CI:

- the core (``captioning/``) never imports Streamlit, ``ui`` or the pages;
- the data layer (``captioning/data/``, ``files``, the safe image loader) never imports the models, training or
  TensorFlow;
- each folder of the core imports only the folders below it in the data flow (:data:`LAYERS`), and the folders
  import each other without a cycle;
- ``ui/`` imports the core and itself, never the pages; pages import only the facade's modules and ``ui``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_MODULES = ("captioning.data", "captioning.files", "captioning.vision.images")
MODEL_SIDE = ("captioning.models", "captioning.training", "captioning.decoding", "captioning.service",
              "tensorflow", "keras")
# What each folder of the core may import besides itself and the stdlib/third parties: the folders below it in
# the data flow (records -> images -> features -> decoder -> decoding -> metrics -> bundle -> facade).
BASE = ("captioning.files",)
LAYERS = {
    "captioning.data": BASE + ("captioning.vision.images",),     # a user's captions file checks its photos
    "captioning.vision": BASE + ("captioning.data",),
    "captioning.models": BASE + ("captioning.data", "captioning.vision"),
    "captioning.decoding": BASE + ("captioning.data", "captioning.vision", "captioning.models"),
    "captioning.evaluation": BASE + ("captioning.data", "captioning.vision", "captioning.models",
                                     "captioning.decoding"),
    "captioning.artifacts": BASE + ("captioning.data", "captioning.vision", "captioning.models",
                                    "captioning.decoding", "captioning.evaluation"),
    "captioning.publish": BASE + ("captioning.data", "captioning.vision"),
    "captioning.service": BASE + ("captioning", "captioning.data", "captioning.vision", "captioning.models",
                                  "captioning.decoding", "captioning.evaluation", "captioning.artifacts",
                                  "captioning.publish"),
    # training builds bundles; its jobs run on the service's job runner
    "captioning.training": BASE + ("captioning", "captioning.data", "captioning.vision", "captioning.models",
                                   "captioning.decoding", "captioning.evaluation", "captioning.artifacts",
                                   "captioning.publish", "captioning.service.jobs"),
}
# The facade the pages use: the modules whose names the app's pages need (captioning, services, types, labels).
PAGE_ALLOWED = ("captioning", "captioning.service.captioner", "captioning.service.batch", "captioning.service.jobs",
                "captioning.service.records", "captioning.service.uploads", "captioning.service.progress",
                "captioning.training.jobs", "captioning.artifacts.manifest", "captioning.artifacts.bundle",
                "captioning.decoding.search", "captioning.decoding.options", "captioning.decoding.config",
                "captioning.decoding.captions", "captioning.evaluation.metrics",
                "captioning.publish.alttext", "captioning.publish.exports", "captioning.publish.metadata",
                "captioning.publish.exiftool", "captioning.vision.images", "captioning.data.text",
                "captioning.data.flickr8k", "ui", "streamlit", "pandas", "altair", "numpy", "PIL")
FOLDERS = ("captioning", "ui", "app_pages")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against the file's package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path, root) if path.name == "__init__.py" else module_name(path, root).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                found.add(f"{base}.{node.module}" if node.module else base)
                if not node.module:     # from . import x: the module x of that package
                    found.update(f"{base}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
                if node.module == "captioning":     # from captioning import data: the sub-package
                    found.update(f"captioning.{alias.name}" for alias in node.names
                                 if (root / "captioning" / alias.name).is_dir())
    return found


def within(name: str, roots) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def allowed(name: str, roots) -> bool:
    """``name`` is one of ``roots`` or inside one (the package ``captioning`` itself only by name)."""
    return name in roots or within(name, tuple(r for r in roots if r != "captioning"))


def folder_of(name: str) -> str:
    """The core folder a module belongs to (``captioning.data.text`` -> ``captioning.data``); the safe image loader
    stands alone (the data layer checks photos with it, and it imports nothing of the core but ``files``)."""
    if within(name, ("captioning.vision.images",)):
        return "captioning.vision.images"
    return ".".join(name.split(".")[:2]) if name.startswith("captioning.") else name


def sources(root: Path, folder: str) -> list[Path]:
    return sorted(p for p in (root / folder).rglob("*.py") if "__pycache__" not in p.parts)


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every edge a -> b of ``graph`` that closes a cycle (b reaches a again)."""
    def reaches(start, goal):
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    return [f"{a} -> {b}" for a in sorted(graph) for b in sorted(graph[a]) if reaches(b, a)]


def violations(root: Path = ROOT) -> list[str]:
    found = []
    folders: dict[str, set[str]] = {}
    for path in sources(root, "captioning"):
        where, me = path.relative_to(root).as_posix(), module_name(path, root)
        for name in imports(path, root):
            if within(name, ("streamlit", "ui", "app_pages")):
                found.append(f"{where} imports {name} (the core knows nothing of the app)")
            if within(me, DATA_MODULES) and within(name, MODEL_SIDE):
                found.append(f"{where} imports {name} (data never imports models)")
            mine, theirs = folder_of(me), folder_of(name)
            if mine in LAYERS and within(name, ("captioning",)) and not within(name, (mine,)) \
                    and not allowed(name, LAYERS[mine]):
                found.append(f"{where} imports {name} ({mine} imports only {', '.join(LAYERS[mine])})")
            if within(theirs, tuple(LAYERS)) and theirs != mine:
                folders.setdefault(mine, set()).add(theirs)
    found += [f"folders import each other in a cycle: {edge}" for edge in cycles(folders)]
    for path in sources(root, "ui"):
        for name in imports(path, root):
            if within(name, ("app_pages", "pages")):
                found.append(f"{path.relative_to(root).as_posix()} imports {name} (ui never imports the pages)")
    for path in sources(root, "app_pages"):
        for name in imports(path, root):
            if within(name, ("captioning", "ui", "app_pages")) and not (name in PAGE_ALLOWED or within(name, ("ui",))):
                found.append(f"app_pages/{path.name} imports {name} (pages use the facade and ui only)")
    return found


def test_the_import_rules_hold():
    assert violations() == []


@pytest.mark.parametrize("where, line, rule", [
    ("captioning/data/text.py", "import streamlit as st", "knows nothing of the app"),
    ("captioning/service/captioner.py", "from ui.state import get_captioner", "knows nothing of the app"),
    ("captioning/vision/images.py", "from captioning.models.decoders import MergeDecoder", "data never imports models"),
    ("captioning/data/flickr8k.py", "import tensorflow as tf", "data never imports models"),
    ("captioning/data/text.py", "from ..models import decoders", "data never imports models"),
    ("app_pages/caption.py", "from captioning.models.decoders import MergeDecoder", "facade and ui only"),
    ("app_pages/caption.py", "from captioning.training.fit import fit", "facade and ui only"),
    ("captioning/vision/features.py", "from captioning.decoding.search import decode", "imports only"),
    ("captioning/models/decoders.py", "from captioning.service.captioner import Captioner", "imports only"),
    ("captioning/decoding/search.py", "from captioning.evaluation import metrics", "imports only"),
    ("captioning/publish/alttext.py", "from captioning.service import batch", "imports only"),
    ("captioning/service/batch.py", "from captioning.training import recipes", "imports only"),
    ("ui/labels.py", "from app_pages import caption", "ui never imports the pages"),
])
def test_a_deliberate_violation_is_caught(tmp_path, where, line, rule):
    """Each rule fails on a planted import (in a copy of the sources), so the check above can fail."""
    for folder in FOLDERS:
        for source in sources(ROOT, folder):
            copy = tmp_path / source.relative_to(ROOT)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    assert violations(tmp_path) == []
    target = tmp_path / where
    target.write_text(line + "\n" + target.read_text(encoding="utf-8"), encoding="utf-8")
    assert any(rule in v and where in v for v in violations(tmp_path))


def test_a_cycle_between_folders_is_caught():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b", "b -> c", "c -> a"]


def test_the_core_imports_no_tensorflow_when_imported():
    """``import captioning`` (what every entry point does first) stays light: no TensorFlow, no Keras."""
    import subprocess
    import sys

    code = "import sys, captioning; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


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


def test_every_project_root_is_the_checkout():
    """Modules that find the checkout from their own file (weights/, artifacts/, .cache/) count their folder depth
    right: a module moved into a sub-package must not point at captioning/ instead."""
    from captioning.artifacts import bundle
    from captioning.training import jobs, settings
    from captioning.vision import encoders

    for module in (bundle, jobs, settings, encoders):
        assert module.PROJECT_ROOT == ROOT, module.__name__


def test_every_package_is_installed():
    """pyproject.toml lists its packages by hand: a sub-package missing there is missing from an install (and a
    name that is not a package fails `pip install -e .` itself)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {module_name(init, ROOT) for top in ("captioning", "ui") for init in (ROOT / top).rglob("__init__.py")}
    assert listed == found

"""The installed detectron2 provides every symbol this project imports (found by parsing the sources), so
a different detectron2 snapshot fails here, loudly and early, rather than deep inside a training run."""
import ast
import glob
import importlib
import os

import pytest

from conftest import REPO_ROOT
from semidetr import compat


def _detectron2_imports():
    sources = glob.glob(os.path.join(REPO_ROOT, "projects/SemiDETR/semidetr/**/*.py"), recursive=True)
    sources += glob.glob(os.path.join(REPO_ROOT, "tools/*.py"))
    found = set()
    for path in sources:
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("detectron2"):
                found.update((node.module, alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update((alias.name, None) for alias in node.names if alias.name.startswith("detectron2"))
    return sorted(found, key=str)


IMPORTS = _detectron2_imports()


def test_the_project_imports_detectron2():
    assert len(IMPORTS) > 20  # the parser found the imports (guards against an empty parametrisation)


@pytest.mark.parametrize("module, name", IMPORTS, ids=[f"{m}:{n}" for m, n in IMPORTS])
def test_detectron2_symbol_exists(module, name):
    imported = importlib.import_module(module)
    if name is not None:
        assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}") is not None, \
            f"detectron2 {compat.DETECTRON2_VERSION} lacks {module}.{name}"


def test_nothing_needs_compiled_detectron2_ops():
    # The project must run on the PyPI re-packaging, whose cp310 `_C` is removed: no module may import it.
    assert not any(module == "detectron2" and name == "_C" for module, name in IMPORTS)
    assert not any(module.startswith("detectron2._C") for module, _ in IMPORTS)
    compat.check_detectron2()

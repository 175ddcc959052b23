"""The import rule of DESIGN.md §1: a module imports only from its own layer or the layers below it."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnnnumba"

# DESIGN.md's table; `models` (layer 7, beside data and io) builds on nn and is used by train, cli and bench.
LAYER_OF = {
    "_config": 1, "shapes": 1, "_argtypes": 1,
    "kernels": 2,
    "autograd": 3,
    "ops": 4, "functional": 4,
    "graph": 5,
    "nn": 6, "optim": 6,
    "data": 7, "io": 7, "models": 7, "onnx": 7,
    "train": 8, "cli": 8, "bench": 8, "__main__": 8,
}


def _top_name(module_path):
    """The first component under cnnnumba/ of a module file (its folder or its own name)."""
    return module_path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_top_names(module_path):
    """(line, top-level cnnnumba name) for each import in the module, including imports inside functions."""
    parts = module_path.relative_to(PACKAGE).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(module_path.read_text(), str(module_path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = list(base) + (node.module.split(".") if node.module else [])
                names = [target] if target else [[alias.name] for alias in node.names]
            elif node.module and node.module.split(".")[0] == "cnnnumba":
                target = node.module.split(".")[1:]
                names = [target] if target else [[alias.name] for alias in node.names]
            else:
                continue
            found += [(node.lineno, name[0]) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[1]) for alias in node.names
                      if alias.name.startswith("cnnnumba.")]
    return found


MODULES = sorted(path for path in PACKAGE.rglob("*.py") if path != PACKAGE / "__init__.py")


def test_every_module_has_a_layer():
    assert {_top_name(path) for path in MODULES} <= set(LAYER_OF)


@pytest.mark.parametrize("module_path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_point_downward(module_path):
    own = LAYER_OF[_top_name(module_path)]
    upward = [f"line {line}: {name} (layer {LAYER_OF[name]})" for line, name in _imported_top_names(module_path)
              if LAYER_OF.get(name, 0) > own]
    assert not upward, f"{module_path.relative_to(PACKAGE)} (layer {own}) imports from above: {upward}"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a kernel module importing the graph executor is reported."""
    fake = PACKAGE / "kernels" / "conv2d.py"
    source = "from ..graph import capture\nimport cnnnumba.nn\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *args, **kwargs: source)
    assert _imported_top_names(fake) == [(1, "graph"), (2, "nn")]

"""The import rule of DESIGN.md §1: a module imports only from its own layer or the layers below it."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cnnnumba"

# DESIGN.md's table; `models` (layer 7, beside data and io) builds on nn and is used by train, cli and bench.
LAYER_OF = {
    "_config": 1, "shapes": 1, "_argtypes": 1, "distributed": 1,
    "kernels": 2, "reference": 2,
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


def _module_name(path):
    """cnnnumba.graph.nodes for cnnnumba/graph/nodes/__init__.py, cnnnumba.graph.lower for .../lower.py."""
    parts = ("cnnnumba",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(sources):
    """{module: set of modules it imports} among `sources` ({module name: (source text, is a package)}), counting
    every import, also those inside functions. `from P import x` imports the submodule P.x where there is one, else
    P itself; an import reaches a package's submodule only through that package's own name, as Python loads it."""
    edges = {name: set() for name in sources}
    for name, (source, is_package) in sources.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in sources else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in sources:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def _import_cycles(edges, scope):
    """The import cycles (strongly connected components of more than one module) among modules under `scope`."""
    inside = {name for name in edges if name.startswith(scope + ".") or name == scope}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(name):
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for target in sorted(edges[name] & inside):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while not component or component[-1] != name:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(inside):
        if name not in index:
            visit(name)
    return cycles


@pytest.mark.parametrize("scope", [
    "cnnnumba.graph",
    "cnnnumba.kernels",
])
def test_no_import_cycle(scope):
    sources = {_module_name(path): (path.read_text(), path.name == "__init__.py")
               for path in sorted(PACKAGE.rglob("*.py"))}
    cycles = _import_cycles(_import_graph(sources), scope)
    assert not cycles, f"import cycles under {scope}: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_sees_a_cycle():
    """The check itself can fail: a package and its submodule importing each other, through a function's import
    too, is one cycle; a submodule importing its sibling is none."""
    sources = {
        "cnnnumba.graph": ("from .capture import capture\n", True),
        "cnnnumba.graph.capture": ("def capture():\n    from . import plan\n    from .. import graph\n", False),
        "cnnnumba.graph.plan": ("import numpy\n", False),
    }
    edges = _import_graph(sources)
    assert edges["cnnnumba.graph.capture"] == {"cnnnumba.graph.plan", "cnnnumba.graph"}
    assert _import_cycles(edges, "cnnnumba.graph") == [["cnnnumba.graph", "cnnnumba.graph.capture"]]
    del sources["cnnnumba.graph.capture"]
    sources["cnnnumba.graph.capture"] = ("from . import plan\n", False)
    assert _import_cycles(_import_graph(sources), "cnnnumba.graph") == []


MAX_MODULE_LINES = 700


@pytest.mark.parametrize("module_path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_is_over_the_line_limit(module_path):
    """A module past MAX_MODULE_LINES holds more than one thing to read at once: split it by what it decides."""
    lines = len(module_path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module_path.relative_to(PACKAGE)} has {lines} lines"

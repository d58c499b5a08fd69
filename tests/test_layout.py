"""The layout the code promises (docs/design.md): no import cycles; the library (``hawq/``,
``tvm_benchmark/`` outside their ``apps``/``benchmarks`` packages) imports no program or benchmark;
``hawq``'s library imports nothing from ``tvm_benchmark``; every library module declares ``__all__``;
no module imports another's private name; the old ``python -m`` paths are thin shims.

Imports inside ``if __name__ == "__main__":`` (a library module's ``python -m`` entry delegating to
its program) are entry points, not dependencies, and are left out of the graph."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("hawq", "tvm_benchmark")
PROGRAM_PACKAGES = ("hawq.apps", "hawq.benchmarks", "tvm_benchmark.apps")
#: ``python -m`` paths kept working by a module that only calls its program's main.
SHIMS = ("hawq.demo", "hawq.release", "hawq.capture_report", "hawq.bench", "hawq.api_bench", "hawq.mpq_bench",
         "hawq.ptq_bench", "hawq.qat_methods", "hawq.ptq.__main__", "tvm_benchmark.verify", "tvm_benchmark.export",
         "tvm_benchmark.run", "tvm_benchmark.bench", "tvm_benchmark.layer_latency", "tvm_benchmark.gpu_bundle")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((Path(ROOT) / pkg).rglob("*.py")):
            rel = p.relative_to(ROOT)
            if "bundle_files" in rel.parts:        # shipped to the GPU machine as files, run there alone
                continue
            name = ".".join(rel.with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


MODULES = _modules()


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _imports(path: Path) -> list[tuple[str, str, int]]:
    """(module imported, name imported or '', line) of every import outside a __main__ guard."""
    tree = ast.parse(path.read_text())
    guarded = {id(n) for top in tree.body if _is_main_guard(top) for n in ast.walk(top)}
    out = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names]
    return out


def _private_uses(path: Path) -> list[str]:
    """``from ours import _x`` and ``alias._x`` where ``alias`` is a module of ours."""
    tree = ast.parse(path.read_text())
    aliases, out = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    out.append(f"{path.name}:{node.lineno}: {node.module}.{a.name}")
                if _target(node.module, a.name) == f"{node.module}.{a.name}":
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.asname and a.name.split(".")[0] in PACKAGES}
    out += [f"{path.name}:{n.lineno}: {n.value.id}.{n.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
            and n.attr.startswith("_") and not n.attr.startswith("__")]
    return out


def _target(module: str, name: str) -> str | None:
    """The module of ours an import refers to (``from pkg import mod`` is ``pkg.mod``)."""
    if name and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module if module in MODULES else None


def _is_program(name: str) -> bool:
    return name.startswith(PROGRAM_PACKAGES) or name in SHIMS


GRAPH = {m: sorted({t for mod, name, _ in _imports(p) if (t := _target(mod, name)) and t != m}) for m, p in MODULES.items()}


def test_the_import_graph_has_no_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in GRAPH[m]:
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in GRAPH:
        if m not in state:
            visit(m)


def test_the_library_imports_no_program_and_hawq_no_backend():
    bad = [f"{m} -> {t}" for m, ts in GRAPH.items() if not _is_program(m) for t in ts
           if _is_program(t) or (m.startswith("hawq") and t.startswith("tvm_benchmark"))]
    assert not bad, bad


def test_every_library_module_declares_all_and_no_private_name_crosses_modules():
    missing = [m for m, p in MODULES.items() if not _is_program(m) and not m.endswith("__main__")
               and "__all__" not in p.read_text() and any(
                   isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
                   for n in ast.parse(p.read_text()).body)]
    assert not missing, missing
    private = [u for p in [*MODULES.values(), *sorted((Path(ROOT) / "tests").rglob("*.py"))] for u in _private_uses(p)]
    assert not private, private


@pytest.mark.parametrize("shim", SHIMS)
def test_old_entry_points_are_thin_shims(shim):
    path = MODULES[shim]
    imports = {t for mod, name, _ in _imports(path) if (t := _target(mod, name))}
    assert len(path.read_text().splitlines()) <= 8 and all(_is_program(t) for t in imports), shim


def test_tests_mirror_the_layout():
    """tests/<package path>/test_*.py for a package's tests; only project-wide checks at the top."""
    tests = Path(ROOT) / "tests"
    for p in sorted(tests.rglob("test_*.py")):
        rel = p.parent.relative_to(tests)
        if rel == Path("."):
            assert p.name in ("test_layout.py", "test_readme.py"), f"{p.name}: move it under tests/<package>/"
        else:
            assert (Path(ROOT) / rel / "__init__.py").is_file(), f"tests/{rel} mirrors no package"

"""The layout shows the pipeline: a stage never imports a sibling stage, shared code never imports a stage, and no
module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "src" / "cxrgen"
STAGES = {"prepare", "train", "generate", "evaluate", "phantom"}
ABOVE = {"cxrgen.cli", "cxrgen.api", "cxrgen.demo", "cxrgen.__main__"}  # may call every stage
ABOVE_PACKAGES = ("cxrgen.app",)  # the web page is above the stages too, as the command line is


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module's imports of other cxrgen modules, at any depth of its code (lazy imports count too)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                if base.startswith("cxrgen"):
                    found.add(base)
                    found.update(f"{base}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("cxrgen"))
        graph[name] = {m for m in found if m != name}
    known = set(graph)
    return {name: {m for m in targets if m in known} for name, targets in graph.items()}


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_no_stage_imports_a_sibling_and_shared_code_imports_no_stage():
    graph = imports()
    assert "cxrgen.prepare.command" in graph and "cxrgen.model.loading" in graph
    wrong = []
    for module, targets in graph.items():
        if module in ABOVE or module.startswith(ABOVE_PACKAGES):
            continue
        for target in targets:
            if stage_of(target) is not None and stage_of(target) != stage_of(module):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_no_import_cycles():
    graph = imports()
    # a package's __init__ importing its own modules (the registration lines) is how packages load, not a cycle
    edges = {
        m: {t for t in ts if not (m.count(".") < t.count(".") and t.startswith(m + "."))} for m, ts in graph.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles[:5]


def test_every_folder_of_modules_is_a_package_an_install_ships():
    """setuptools' package finder skips a folder without __init__.py: a plain `pip install .` would lack it."""
    from setuptools import find_packages

    folders = {module_name(path.parent / "__init__.py") for path in PACKAGE.rglob("*.py")}
    assert folders <= set(find_packages(PACKAGE.parent))

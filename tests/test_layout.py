"""The host tools' layout keeps its rules: rooms by who uses them, arrows one way, no cycles, no giant modules.

Read with the standard library's `ast`: every `import` and `from ... import` in every module
of `host_tools/` (those inside functions too: a lazy import is still a dependency) and of
`firmware/`. The rules are the README's layout table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from host_tools.runtime.paths import FIRMWARE, REPO

HOST = REPO / "host_tools"
# MicroPython-side files of the virtual board: they run inside the unix port, not as host modules.
NOT_HOST_MODULES = (HOST / "emulator" / "rom",)

# package -> the packages its modules may import (besides itself). Read top-down: a room only
# looks down. `cli` is the top; `runtime` the bottom.
ALLOWED = {
    "cli": {"bench", "reliability", "backoffice", "fleet", "emulator", "codec", "boards", "runtime"},
    "bench": {"reliability", "backoffice", "fleet", "emulator", "codec", "boards", "runtime"},
    "reliability": {"backoffice", "fleet", "emulator", "codec", "boards", "runtime"},
    "backoffice": {"fleet", "codec", "boards", "runtime"},
    "fleet": {"codec", "boards", "runtime"},
    "emulator": {"codec", "boards", "runtime"},
    "codec": {"runtime"},
    "boards": {"runtime"},
    "runtime": set(),
}
LINE_LIMIT = 500
# Over the limit only when the module's header says why it is one cohesive thing.
COHESIVE_MARK = "one cohesive"


def host_modules() -> dict[str, Path]:
    out = {}
    for path in sorted(HOST.rglob("*.py")):
        if any(path.is_relative_to(p) for p in NOT_HOST_MODULES):
            continue
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = host_modules()


def imported_modules(path: Path, name: str) -> set[str]:
    """Every module `path` imports, resolved to a module of `MODULES` where it is one."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                found.add(arg.values[0].value.rstrip("."))
    resolved = set()
    for mod in found:
        while mod and mod not in MODULES:
            mod = mod.rpartition(".")[0]
        if mod and mod != name:
            resolved.add(mod)
    return resolved


GRAPH = {name: imported_modules(path, name) for name, path in MODULES.items()}


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # host_tools itself (the version) is no room


def test_every_module_lives_in_a_room():
    loose = [m for m in MODULES if m != "host_tools" and room(m) not in ALLOWED]
    assert not loose, f"modules outside the layout's packages: {loose} (see README, Layout)"


def test_arrows_run_one_way():
    wrong = []
    for module, deps in GRAPH.items():
        src = room(module)
        for dep in deps:
            dst = room(dep)
            if src is None or dst is None or dst == src:
                continue
            if dst not in ALLOWED[src]:
                wrong.append(f"{module} -> {dep} ({src} may import only {sorted(ALLOWED[src]) or 'nothing'})")
    assert not wrong, "\n".join(wrong)


def test_nothing_imports_cli_or_bench():
    wrong = [f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
             if room(d) in ("cli", "bench") and room(m) != room(d) and room(m) != "cli"]
    assert not wrong, wrong


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles_between_modules():
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_firmware_imports_nothing_from_host_tools():
    wrong = []
    for path in sorted(FIRMWARE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            wrong += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "host_tools"]
    assert not wrong, wrong


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_giant_modules(module):
    path = MODULES[module]
    text = path.read_text()
    lines = text.count("\n")
    if lines <= LINE_LIMIT:
        return
    doc = (ast.get_docstring(ast.parse(text)) or "").lower()
    assert COHESIVE_MARK in doc, (
        f"{path.relative_to(REPO)} has {lines} lines: split it along its seams, or say in its header why it is "
        f"one cohesive thing"
    )

"""The import rules between rooms (package folders) of launcher/, pipelines/ and transforms/.

Every module is read with `ast`, imports inside functions included, so a rule
holds for what a module may import at any time, not only at import. Each
violation is reported on one line: the importing module, what it imports, and
the rule it breaks.
"""

from __future__ import annotations

import ast
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("launcher", "pipelines", "transforms")
# What the launcher may import of transforms/: the Beam-free rooms and modules, and the kick-off scan.
LAUNCHER_MAY_IMPORT = ("transforms.fhir", "transforms.storage", "transforms.records", "transforms.errors",
                       "transforms.read.lookup")
# Modules that must import without Beam: no module-level `import apache_beam`, neither in them nor in
# what they import at module level (imports inside functions are fine).
BEAM_FREE = ("transforms.fhir", "transforms.storage", "transforms.records", "pipelines.settings", "pipelines.models",
             "pipelines.workers")
SHARED_FILE_NAMES = ("__init__.py", "__main__.py")


class Import(NamedTuple):
    """One import statement's target, resolved to a module of ours where it names one."""

    source: str  # the importing module, dotted
    target: str  # the imported module (ours: a real module; others: as written)
    line: int
    module_level: bool  # executed at import: not inside a function, nor under `if TYPE_CHECKING`


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


MODULES = _modules()


def room(module: str) -> str:
    """The package folder a module of ours lives in, e.g. `transforms/select`."""
    path = MODULES[module]
    return path.parent.relative_to(ROOT).as_posix()


def _resolve(name: str) -> str:
    """`name` as a module of ours (the longest prefix that is one), or as written."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return name


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, module_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child):
            yield from _walk(child, False)
        else:
            yield child, module_level
            yield from _walk(child, module_level)


def imports_of(module: str) -> list[Import]:
    """Every import in a module of ours, in functions too, each target resolved."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node, module_level in _walk(ast.parse(path.read_text(), str(path)), True):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]  # a submodule, or a name in `base`
        else:
            continue
        found += [Import(module, _resolve(name), node.lineno, module_level) for name in names]
    return found


# One entry per imported module (`from a import b, c` of one module is one import of it).
ALL_IMPORTS = list(dict.fromkeys(i for module in MODULES for i in imports_of(module) if i.target != i.source))


def _ours(target: str) -> bool:
    return target in MODULES


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _line(i: Import, rule: str) -> str:
    return f"{MODULES[i.source].relative_to(ROOT)}:{i.line}: imports {i.target}: {rule}"


def layer_violations(imports: list[Import]) -> list[str]:
    """Imports that break a rule between layers or between named rooms."""
    rules = [
        (("transforms",), ("pipelines", "launcher"), "transforms/ imports neither pipelines nor launcher"),
        (("pipelines",), ("launcher",), "pipelines/ does not import launcher"),
        (("transforms.select",), ("transforms.write",), "transforms/select and transforms/write never import each other"),
        (("transforms.write",), ("transforms.select",), "transforms/select and transforms/write never import each other"),
        (("transforms.steps",), ("transforms.read", "transforms.select", "transforms.write"),
         "transforms/steps imports none of read, select, write"),
    ]
    found = []
    for i in imports:
        if not _ours(i.target):
            continue
        for sources, targets, rule in rules:
            if _within(i.source, sources) and _within(i.target, targets):
                found.append(_line(i, rule))
        if (i.source.startswith("launcher") and _within(i.target, ("transforms",))
                and not _within(i.target, LAUNCHER_MAY_IMPORT) and i.target != "transforms"):
            found.append(_line(i, f"the launcher imports of transforms only {', '.join(LAUNCHER_MAY_IMPORT)}"))
    return found


def beam_violations(imports: list[Import]) -> list[str]:
    """Module-level Beam imports in the modules that must import without Beam, or in a module of ours
    they import at module level (reported with the chain of imports that reaches it)."""
    at_import: dict[str, list[Import]] = defaultdict(list)
    for i in imports:
        if i.module_level:
            at_import[i.source].append(i)
    found = []
    for module in sorted(m for m in MODULES if _within(m, BEAM_FREE)):
        chains, queue = {module: [module]}, [module]
        while queue:
            current = queue.pop(0)
            for i in at_import.get(current, []):
                if _within(i.target, ("apache_beam",)):
                    through = f" (through {' -> '.join(chains[current])})" if current != module else ""
                    found.append(_line(i, f"{module} must import without Beam{through}"))
                elif _ours(i.target) and i.target not in chains:
                    chains[i.target] = chains[current] + [i.target]
                    queue.append(i.target)
    return list(dict.fromkeys(found))


def room_loops(imports: list[Import]) -> list[str]:
    """Each set of rooms that import one another in a loop, with one import per step of the loop."""
    edges: dict[str, dict[str, Import]] = defaultdict(dict)
    for i in imports:
        if _ours(i.target) and room(i.source) != room(i.target):
            edges[room(i.source)].setdefault(room(i.target), i)
    found = []
    for component in _strongly_connected(edges):
        cycle = _cycle(edges, sorted(component))
        steps = "; ".join(f"{MODULES[i.source].relative_to(ROOT)}:{i.line} imports {i.target}"
                          for i in (edges[a][b] for a, b in zip(cycle, cycle[1:])))
        found.append(f"rooms in a loop: {' -> '.join(cycle)} ({steps})")
    return found


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's algorithm; only the components of more than one room."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def _cycle(edges: dict[str, dict[str, Import]], component: list[str]) -> list[str]:
    """A shortest loop through the component's first room, as rooms from and back to it."""
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges.get(node, {})):
            if nxt == start:
                return paths[node] + [start]
            if nxt in component and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no loop through {start}")


def duplicate_names(paths: list[Path]) -> list[str]:
    """Module file names used more than once (an import's last part then names two modules)."""
    counts = Counter(p.name for p in paths if p.name not in SHARED_FILE_NAMES)
    return [f"{name} is the name of {counts[name]} modules: "
            + ", ".join(str(p.relative_to(ROOT)) for p in paths if p.name == name)
            for name in sorted(n for n, c in counts.items() if c > 1)]


def _check(violations: list[str]) -> None:
    """Fails with one line per violation."""
    if violations:
        pytest.fail("\n".join(violations), pytrace=False)


def test_no_loop_between_rooms():
    _check(room_loops(ALL_IMPORTS))


def test_layers_and_named_rooms_import_only_what_they_may():
    _check(layer_violations(ALL_IMPORTS))


def test_beam_free_modules_import_beam_only_inside_functions():
    _check(beam_violations(ALL_IMPORTS))


def test_every_module_file_name_is_unique():
    _check(duplicate_names(list(MODULES.values())))


# ---- the checks find what they should ---------------------------------------------------------


def _fake(source: str, target: str, module_level: bool = True) -> Import:
    return Import(source, target, 1, module_level)


@pytest.mark.parametrize("source, target, says", [
    ("transforms.select.duplicates", "pipelines.models", "transforms/ imports neither"),
    ("transforms.fhir.r4", "launcher.stores", "transforms/ imports neither"),
    ("pipelines.plan", "launcher.core.audit", "pipelines/ does not import launcher"),
    ("transforms.select.duplicates", "transforms.write.manifest", "select and transforms/write never"),
    ("transforms.write.manifest", "transforms.select.duplicates", "select and transforms/write never"),
    ("transforms.steps", "transforms.read.ndjson", "transforms/steps imports none"),
    ("launcher.jobs.attempts", "transforms.read.chunks", "the launcher imports of transforms only"),
])
def test_a_forbidden_import_is_reported_in_one_line(source, target, says):
    [line] = layer_violations([_fake(source, target)])
    assert f"imports {target}: " in line and says in line and "\n" not in line


@pytest.mark.parametrize("target", ["transforms.fhir.r4", "transforms.storage.layout", "transforms.records",
                                    "transforms.read.lookup"])
def test_the_launcher_may_import_the_beam_free_rooms_and_the_scan(target):
    assert layer_violations([_fake("launcher.jobs.attempts", target)]) == []


def test_beam_at_module_level_in_a_beam_free_module_is_reported_and_inside_a_function_is_not():
    [line] = beam_violations([_fake("pipelines.models", "apache_beam")])
    assert line == "pipelines/models.py:1: imports apache_beam: pipelines.models must import without Beam"
    assert beam_violations([_fake("pipelines.models", "apache_beam", module_level=False)]) == []


def test_beam_imported_through_another_module_is_reported_with_the_chain():
    [line] = beam_violations([_fake("pipelines.models", "transforms.read.ndjson"),
                              _fake("transforms.read.ndjson", "apache_beam.io")])
    assert line == ("transforms/read/ndjson.py:1: imports apache_beam.io: pipelines.models must import without"
                    " Beam (through pipelines.models -> transforms.read.ndjson)")


def test_a_loop_between_rooms_is_reported_with_each_step():
    [line] = room_loops([_fake("transforms.read.ndjson", "transforms.select.duplicates"),
                         _fake("transforms.select.duplicates", "transforms.read.ndjson")])
    assert line.startswith("rooms in a loop: transforms/read -> transforms/select -> transforms/read (")
    assert "transforms/read/ndjson.py:1 imports transforms.select.duplicates" in line


def test_a_loop_within_one_room_is_allowed():
    assert room_loops([_fake("transforms.read.bundles", "transforms.read.ndjson"),
                       _fake("transforms.read.ndjson", "transforms.read.bundles")]) == []


def test_two_modules_of_one_name_are_reported():
    paths = [ROOT / "launcher/jobs/process.py", ROOT / "pipelines/process.py", ROOT / "launcher/__init__.py",
             ROOT / "pipelines/__init__.py"]
    assert duplicate_names(paths) == ["process.py is the name of 2 modules: launcher/jobs/process.py, "
                                      "pipelines/process.py"]


def test_imports_inside_functions_are_read():
    assert any(not i.module_level for i in ALL_IMPORTS if i.source == "launcher.cli.commands")

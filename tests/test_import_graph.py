"""The project's import graph, read from the source: no cycle, and every layer imports only what the house rules
of docs/architecture.md (Layers) allow.

The scan is static (ast: no project code is imported). It reads every module of the seven package folders,
instyle/ models/ kernels/ engine/ export/ train/ bench/, named instyle.* as pyproject's package-dir maps them
(a folder without __init__.py, such as bench/results, is no package and is skipped), and draws an edge for
- every import statement: module level, inside functions and methods (lazy imports) and under
  `if TYPE_CHECKING:`; relative imports are resolved against the module's package;
- `from pkg import name`: an edge to pkg.name when that is a module, else to pkg;
- every string literal that names a project module, alone ("instyle.export.cli") or as "module:attribute"
  ("instyle.export.ort_runner:make_runner"): registry rows, importlib.import_module arguments, `python -m`
  command lines. The bare word "instyle" is not read as one: it is the program's name (prog=, cache folders,
  torch.library's "instyle::op" namespace), and the package's __init__ is reached by importing from it.
An edge goes to the module named and only to it: `import instyle.engine.plan` is an edge to instyle.engine.plan,
not to instyle.engine's __init__, although Python runs that __init__ first (an __init__ that imports something is
a module like any other, with its own edges). A module naming itself (its own `python -m` line) is no edge.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("models", "kernels", "engine", "export", "train", "bench")  # folder f is instyle.f
FOLDERS = {"instyle": "instyle", **{f: f"instyle.{f}" for f in SUBPACKAGES}}

# The layers. A subpackage is its own layer. instyle/ holds three kinds of module: the app (public API, CLI glue,
# scale-out), which may import anything; checkpoint, the generators' file format (it builds models/ modules);
# and leaves (errors, specs, precision, paths, atomic, io, video, ...), which import nothing but other leaves, so
# that every layer may use them.
APP = {"instyle", "instyle.__main__", "instyle.cli", "instyle.distributed"}  # and every instyle/*_cli.py
SERVE = "instyle.serve"  # the server (instyle/serve/): a layer of its own, over the engine like the CLI

ALLOWED = {  # layer -> the other layers it may import; bench and app may import anything
    "leaf": set(),
    "models": set(),
    "kernels": {"leaf"},  # instyle.interpreter: whether TRITON_INTERPRET is on, read in one place
    "checkpoint": {"models", "leaf"},
    "engine": {"models", "kernels", "checkpoint", "leaf"},
    "export": {"models", "engine", "checkpoint", "leaf"},  # engine: parity compares a graph with the Stylizer
    "train": {"models", "kernels", "checkpoint", "leaf"},
    "serve": {"models", "engine", "leaf"},  # engine: it builds one Stylizer; models: the style mixes
}
# The backend table is one table (docs/architecture.md, The backend table): it names export's runners, loaded on
# first use. Allowed as registry strings only, never as import statements; the cycle test keeps those runners
# from importing engine.
REGISTRY_ROWS = {("instyle.engine.backends", f"instyle.export.{m}") for m in ("ort_runner", "ov_runner", "trt_runner")}
# Single edges a layer's rule does not cover, each for a reason: serve reads a mix with the CLI's own parser
# (`mix=candy=2,wave=1` means what `--mix` means).
EXTRA_EDGES = {("instyle.serve.options", "instyle.stylize_cli")}

# Developer-only packages: in the tree, left out of pyproject's package list, so a wheel does not carry them.
NOT_INSTALLED = {"instyle.bench.campaign"}  # GPU-loan logistics (docs/architecture.md, The GPU campaign)

MODULE_STRING = re.compile(r"(instyle(?:\.\w+)*)(?::(\w+(?:\.\w+)*))?")


def modules(root: Path = ROOT, folders: dict[str, str] = FOLDERS) -> dict[str, Path]:
    """Module name -> file, for every .py file of every package (a folder with __init__.py) under `folders`."""
    found = {}
    for folder, package in folders.items():
        top = root / folder
        for f in sorted(top.rglob("*.py")):
            if not all((d / "__init__.py").is_file() for d in [f.parent, *f.parent.parents] if d.is_relative_to(top)):
                continue
            parts = f.relative_to(top).with_suffix("").parts
            found[".".join((package, *parts[:-1], *([] if parts[-1] == "__init__" else parts[-1:])))] = f
    return found


def edges(files: dict[str, Path]) -> dict[str, dict[str, tuple[int, str]]]:
    """Module -> {module it names: (line, "import" | "string")}: its first import statement, else its first string."""
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out = graph[name] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            named = []
            if isinstance(node, ast.Import):
                named = [(a.name, "import") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x, from ..errors import E
                    base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0], node.module]))
                named = [(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base, "import") for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                m = MODULE_STRING.fullmatch(node.value.strip())
                if m and ("." in m[1] or m[2]):
                    named = [(m[1], "string")]
            for target, kind in named:
                if target in files and target != name:  # an import statement outranks a string, then the first line
                    out[target] = min(out.get(target, (node.lineno, kind)), (node.lineno, kind),
                                      key=lambda ref: (ref[1] != "import", ref[0]))
    return graph


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return parts[1]
    if name == SERVE or name.startswith(SERVE + "."):
        return "serve"
    if name in APP or name.endswith("_cli"):
        return "app"
    return "checkpoint" if name == "instyle.checkpoint" else "leaf"


def cycles(graph: dict[str, dict]) -> list[list[str]]:
    """One shortest cycle (a list of modules, first == last) per strongly connected component (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while v not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                found.append(shortest_cycle(graph, min(component), component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def shortest_cycle(graph, start, component):
    paths, queue = {start: [start]}, [start]
    for v in queue:
        for w in sorted(graph[v]):
            if w == start:
                return paths[v] + [start]
            if w in component and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def describe(chain, graph, files):
    """The cycle as one line of module names, then each edge with the file and line that makes it."""
    steps = [f"    {a} -> {b}   ({files[a].relative_to(ROOT) if files[a].is_relative_to(ROOT) else files[a]}:"
             f"{graph[a][b][0]}, {graph[a][b][1]})" for a, b in zip(chain, chain[1:])]
    return "\n".join(["  " + " -> ".join(chain), *steps])


def violations(graph):
    return [f"{a} ({layer(a)}) -> {b} ({layer(b)}), line {line}" for a in sorted(graph)
            for b, (line, kind) in sorted(graph[a].items())
            if layer(a) in ALLOWED and layer(b) not in ALLOWED[layer(a)] | {layer(a)}
            and not ((a, b) in REGISTRY_ROWS and kind == "string") and (a, b) not in EXTRA_EDGES]


def project_graph():
    files = modules()
    return files, edges(files)


def test_the_scan_sees_lazy_relative_and_string_references(tmp_path):
    """A planted layout: a lazy relative import one way, a registry string back, a TYPE_CHECKING import."""
    for folder in ("instyle", "engine", "export"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "engine" / "table.py").write_text(
        "def load():\n    from ..export import runner\n    return runner\n")
    (tmp_path / "export" / "runner.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import instyle.errors\n"
        "ROWS = {'x': 'instyle.engine.table:load'}\nNAME = 'instyle'\nOP = 'instyle::op'\n")
    (tmp_path / "instyle" / "errors.py").write_text("")
    files = modules(tmp_path, {"instyle": "instyle", "engine": "instyle.engine", "export": "instyle.export"})
    graph = edges(files)
    assert graph["instyle.engine.table"] == {"instyle.export.runner": (2, "import")}
    assert graph["instyle.export.runner"] == {"instyle.errors": (3, "import"),
                                              "instyle.engine.table": (4, "string")}
    assert cycles(graph) == [["instyle.engine.table", "instyle.export.runner", "instyle.engine.table"]]
    assert violations(graph) == ["instyle.engine.table (engine) -> instyle.export.runner (export), line 2"]


def test_the_scan_sees_the_project():
    files, graph = project_graph()
    assert len(files) > 60 and "instyle.engine.stylizer" in files and "instyle.zoo" in files
    assert graph["instyle"]["instyle.engine"][1] == "import"  # lazy, inside load()
    assert graph["instyle.cli"]["instyle.stylize_cli"][1] == "string"  # the COMMANDS table
    assert graph["instyle.engine.backends"]["instyle.export.ort_runner"][1] == "string"
    assert layer("instyle.serve") == layer("instyle.serve.app") == "serve" and layer("instyle.serve_cli") == "app"
    assert graph["instyle.serve.thumbnails"]["instyle.engine.stylizer"][1] == "import"  # lazy, inside a function
    assert {layer(m) for m in files} == set(ALLOWED) | {"bench", "app"}


def test_no_import_cycle():
    files, graph = project_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(c, graph, files) for c in found)


def test_layers_import_only_what_the_house_rules_allow():
    _, graph = project_graph()
    found = violations(graph)
    assert not found, "imports the house rules (docs/architecture.md, Layers) do not allow:\n  " + "\n  ".join(found)


def test_every_package_folder_is_installed():
    """pyproject lists packages one by one (package-dir maps the folders): a new subpackage left out of that list
    imports in an editable install and is missing from a wheel. Only NOT_INSTALLED is left out, on purpose."""
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {p: f for f, p in FOLDERS.items()}
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    listed = set(tool["packages"])
    assert packages - NOT_INSTALLED <= listed, sorted(packages - NOT_INSTALLED - listed)
    assert not NOT_INSTALLED & listed, sorted(NOT_INSTALLED & listed)


def test_nothing_installed_imports_what_is_not():
    """A wheel leaves NOT_INSTALLED out: an installed module that imported one would fail after `pip install .`."""
    _, graph = project_graph()
    found = [f"{a} -> {b}, line {line}" for a in sorted(graph) if not _not_installed(a)
             for b, (line, _) in sorted(graph[a].items()) if _not_installed(b)]
    assert not found, "installed modules that import a developer-only package:\n  " + "\n  ".join(found)


def _not_installed(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in NOT_INSTALLED)

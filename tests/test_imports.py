"""Imports: the clipvdb package has no import cycle (read from the source with ast), and neither
`clipvdb --help` nor `clipvdb classify --stage first` imports torch (seen with python -X importtime)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "clipvdb"

Graph = dict[str, dict[str, list[str]]]  # module -> imported module -> where ("path:line")


def _module_names(package_dir: Path, package: str) -> dict[str, Path]:
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package, *parts))] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import and ImportFrom node, at module level and in functions and classes, except those
    in the body of an `if TYPE_CHECKING:` (its else branch runs, so it counts)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph(package_dir: Path, package: str) -> Graph:
    """Edges from each module of the package to the package's modules it imports."""
    modules = _module_names(package_dir, package)

    def owner(name: str) -> str | None:
        """The longest prefix of a dotted name that is one of the package's modules."""
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    graph: Graph = {m: {} for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                # `from x import y`: y is a submodule when the package has it, else a name in x
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if alias.name != "*" and sub in modules else source)
            for target in targets:
                found = owner(target)
                if found is not None:
                    graph[module].setdefault(found, []).append(f"{path.relative_to(package_dir.parent)}:{node.lineno}")
    for edges in graph.values():
        for where in edges.values():
            where.sort(key=lambda w: int(w.rpartition(":")[2]))
    return graph


def strongly_connected_components(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components of more than one module, and single modules
    that import themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))
    return sorted(found)


def _a_cycle(graph: Graph, component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module (breadth first, inside the component)."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def describe_cycles(graph: Graph) -> list[str]:
    out = []
    for component in strongly_connected_components(graph):
        cycle = _a_cycle(graph, component)
        steps = [f"{a} -> {b} ({', '.join(graph[a][b])})" for a, b in zip(cycle, cycle[1:], strict=False)]
        out.append(f"{{{', '.join(component)}}}, e.g.\n    " + "\n    ".join(steps))
    return out


def test_the_checker_sees_cycles_through_every_kind_of_import_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import A\n",
        "a.py": "from . import b, c\nA = 1\n",  # a -> b and a -> c
        "b.py": "def f():\n    from pkg.sub.d import D\n",  # function level, absolute
        "sub/__init__.py": "",
        "sub/d.py": "import pkg.a\nD = 1\n",  # d -> a closes a -> b -> d -> a
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .e import E\nelse:\n    import os\n",
        "e.py": "from .c import *\nfrom ..outside import x\nimport json\n",  # e -> c only
        "f.py": "from .sub import d as _\nfrom . import f\n",  # f -> sub.d, and f imports itself
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg, "pkg")
    assert graph["pkg"] == {"pkg.a": ["pkg/__init__.py:1"]}
    assert set(graph["pkg.a"]) == {"pkg.b", "pkg.c"} and set(graph["pkg.b"]) == {"pkg.sub.d"}
    assert graph["pkg.sub.d"] == {"pkg.a": ["pkg/sub/d.py:1"]} and graph["pkg.c"] == {}
    assert set(graph["pkg.e"]) == {"pkg.c"} and set(graph["pkg.f"]) == {"pkg.sub.d", "pkg.f"}
    assert strongly_connected_components(graph) == [["pkg.a", "pkg.b", "pkg.sub.d"], ["pkg.f"]]
    described = describe_cycles(graph)
    assert "pkg.a -> pkg.b (pkg/a.py:1)" in described[0] and "pkg.sub.d -> pkg.a (pkg/sub/d.py:1)" in described[0]
    assert "pkg.f -> pkg.f (pkg/f.py:2)" in described[1]


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE_DIR, "clipvdb")
    assert "clipvdb.cli" in graph and "clipvdb.store" in graph and sum(map(len, graph.values())) > 20, graph
    cycles = describe_cycles(graph)
    assert not cycles, "import cycles in clipvdb/:\n" + "\n".join(cycles)


def _imported(stderr: str) -> list[str]:
    """The module names of `python -X importtime`'s report lines."""
    names = [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    return [n for n in names if n != "imported package"]  # the header line


def _torch_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m == "torch" or m.startswith("torch.")]


def _run_importtime(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "clipvdb", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_help_imports_no_torch():
    r = _run_importtime("--help")
    assert r.returncode == 0 and "Usage:" in r.stdout, r.stdout + r.stderr
    modules = _imported(r.stderr)
    assert "clipvdb.cli" in modules and "click" in modules, r.stderr[-2000:]  # the report was read
    assert not _torch_modules(modules), _torch_modules(modules)


def test_classify_at_stage_first_imports_no_torch(cli, db_url, syn_data):
    cli("ingest", "--stage", "first", "--data", syn_data, "--workers", "0")
    img = syn_data / "test" / "red-circle" / "0000.png"
    r = _run_importtime("classify", str(img), "--stage", "first", env={"CLIPVDB_DATABASE_URL": db_url})
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert any(line.split()[:2] == [str(img), "first"] for line in r.stdout.splitlines()), r.stdout  # a prediction
    modules = _imported(r.stderr)
    assert "clipvdb.cli" in modules and "psycopg" in modules, r.stderr[-2000:]  # the report was read
    assert not _torch_modules(modules), _torch_modules(modules)

"""The code's shape, checked on its source: no function in clipvdb/ takes more than eight parameters
(Click commands included: their options arrive as one object each), no job imports the Store (only
the entry points do), store.py stays a thin facade, and cli.py declares --stage and --dataset once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from test_imports import PACKAGE_DIR, import_graph

MAX_PARAMETERS = 8
MAX_STORE_LINES = 500
# the modules that may import the Store: the entry points and the package's own front door
ENTRY_POINTS = {"clipvdb", "clipvdb.__main__", "clipvdb.cli", "clipvdb.web", "clipvdb.demo", "clipvdb.store"}


def too_many_parameters(package_dir: Path, limit: int = MAX_PARAMETERS) -> list[str]:
    """Every function or method (self and cls not counted; *args and **kwargs not counted) with more
    than `limit` parameters, as "path:line name (n)"."""
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                named = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                n = len(named) - (1 if named and named[0].arg in ("self", "cls") else 0)
                if n > limit:
                    out.append(f"{path.relative_to(package_dir.parent)}:{node.lineno} {node.name} ({n})")
    return out


def store_importers(package_dir: Path, package: str) -> list[str]:
    """Modules outside the entry points that import the package's store module."""
    graph = import_graph(package_dir, package)
    store = f"{package}.store"
    entry = {m.replace("clipvdb", package, 1) for m in ENTRY_POINTS}
    return sorted(f"{m} ({', '.join(edges[store])})" for m, edges in graph.items() if store in edges and m not in entry)


def test_the_checkers_see_what_they_look_for(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "store.py").write_text("class Store:\n    def m(self, a, b, c, d, e, f, g, h):\n        pass\n")
    (pkg / "cli.py").write_text("from .store import Store\n")
    (pkg / "job.py").write_text(
        "import click\n\n@click.command()\ndef cmd(a, b, c, d, e, f, g, h, i):\n    pass\n\n"
        "def fine(session, *args, a=1, **kw):\n    from .store import Store\n"
    )
    assert too_many_parameters(pkg) == ["pkg/job.py:4 cmd (9)"]  # the method's 8 (self aside) pass
    assert store_importers(pkg, "pkg") == ["pkg.job (pkg/job.py:8)"]  # cli is an entry point


def test_no_function_takes_more_than_eight_parameters():
    found = too_many_parameters(PACKAGE_DIR)
    assert not found, f"more than {MAX_PARAMETERS} parameters (gather options into an object):\n" + "\n".join(found)


def test_no_job_imports_the_store():
    found = store_importers(PACKAGE_DIR, "clipvdb")
    assert not found, "only the entry points use the Store; a job takes the Session:\n" + "\n".join(found)


def test_the_store_is_a_thin_facade_and_options_are_declared_once():
    lines = len((PACKAGE_DIR / "store.py").read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_STORE_LINES, f"store.py has {lines} lines; move the work into a job on the Session"
    cli = (PACKAGE_DIR / "cli.py").read_text(encoding="utf-8")
    for option in ("--stage", "--dataset"):
        assert len(re.findall(rf'click\.option\(\s*"{option}"', cli)) == 1, option

"""The house rules a newcomer relies on, checked on the source: no import circles, a
domain library without Flask or the scheduler, imports at the top, every store table
in one module, one import name, and tests that never read the wall clock."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

# Where each import name's files are: the links retention/api and retention/pipelines
# point at the top-level folders, so those are read once, under their real paths.
ROOTS = {"retention": REPO / "retention", "retention.api": REPO / "api",
         "retention.pipelines": REPO / "pipelines"}
LINKS = ("api", "pipelines")
FRAMEWORKS = ("flask", "werkzeug", "apscheduler", "gunicorn", "prometheus_client")


def modules() -> dict[str, Path]:
    """Every module of the distribution by its import name."""
    found: dict[str, Path] = {}
    for name, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root)
            if name == "retention" and relative.parts[0] in LINKS:
                continue
            parts = [*name.split("."), *relative.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(tree: ast.Module, module: str, is_package: bool) -> Iterator[tuple[str, ast.stmt]]:
    """Each (imported module or module.symbol, statement) of a module's source."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base
                                                                            else []))
            for alias in node.names:
                yield f"{base}.{alias.name}", node


def dependencies() -> dict[str, set[str]]:
    """Module -> the distribution's modules it imports (a symbol counts as its module)."""
    known = modules()
    out: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        targets = set()
        for target, _ in imported(tree, name, path.name == "__init__.py"):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        out[name] = targets
    return out


def test_the_modules_import_each_other_without_a_circle() -> None:
    graph = dependencies()
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_domain_library_knows_no_web_framework_scheduler_or_job() -> None:
    found = []
    for name, path in modules().items():
        if name.startswith(("retention.api", "retention.pipelines")):
            continue
        for target, node in imported(ast.parse(path.read_text()), name,
                                     path.name == "__init__.py"):
            top = target.split(".")[0]
            if top in FRAMEWORKS or target.startswith(("retention.api", "retention.pipelines")):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} imports {target}")
    assert not found, found


def _under_type_checking(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def test_imports_are_at_the_top_of_modules() -> None:
    """An import inside a function hides a dependency (or a circle being dodged)."""
    found = []
    for path in modules().values():
        tree = ast.parse(path.read_text())
        typing_only = _under_type_checking(tree)
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top
                    and node.lineno not in typing_only):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, found


def test_every_table_of_the_store_is_defined_in_one_module() -> None:
    allowed = {REPO / "retention" / "store" / "tables.py",
               REPO / "retention" / "clinic" / "contract.py"}  # the clinic's tables, not ours
    found = []
    for path in modules().values():
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("Table", "sa.Table",
                                                                          "Index"):
                temporary = any(k.arg == "prefixes" and "TEMPORARY" in ast.unparse(k.value)
                                for k in node.keywords)  # a staging table of a bulk load
                if not temporary:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, found


@pytest.mark.parametrize("folder", ["retention", "api", "pipelines", "tests", "benchmarks",
                                    "migrations"])
def test_nothing_imports_the_folders_under_a_top_level_name(folder: str) -> None:
    """One import name: ``retention.api``, never ``api`` (it would load the files twice)."""
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        if folder == "retention" and path.relative_to(REPO / folder).parts[0] in LINKS:
            continue
        for target, node in imported(ast.parse(path.read_text()), "x", False):
            if target.split(".")[0] in LINKS:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} imports {target}")
    assert not found, found


WALL_CLOCK = ("datetime.now", "datetime.utcnow", "date.today", "time.time", "utcnow")


def test_no_test_reads_the_wall_clock() -> None:
    """Tests hand apps and jobs a fixed clock; a date a test depends on is pinned."""
    found = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path == Path(__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in WALL_CLOCK:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    assert not found, found

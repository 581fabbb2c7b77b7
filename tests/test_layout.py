"""The package layout of issue 17: the tree shows the architecture (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import sync_worker

PACKAGE = Path(sync_worker.__file__).parent


def test_at_most_a_dozen_modules_at_the_top() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in {"__init__", "__main__"})
    assert len(top) <= 12, top


def test_every_package_says_what_it_owns() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text("utf-8")))
        assert doc, f"{init.parent.name}/__init__.py has no docstring"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every sync_worker module this one imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif node.module in modules:
                    found.add(node.module)
    return found


def test_no_import_cycle() -> None:
    """No module imports, even late, one that imports it back (celery_app and tasks did)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for imported in sorted(graph[name]):
            if state.get(imported) == 1:
                cycle = [*stack[stack.index(imported) :], imported]
                raise AssertionError(" -> ".join(cycle))
            if imported not in state:
                visit(imported)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_no_lua_in_python_strings() -> None:
    """Redis scripts live in `.lua` files, read with highlighting (sync_worker/lua.py)."""
    holding = [
        _module_name(p)
        for p in sorted(PACKAGE.rglob("*.py"))
        if "redis.call(" in p.read_text("utf-8")
    ]
    assert holding == []


def _lua_files_asked() -> dict[str, list[str]]:
    """`.lua` path -> the modules that read it through `lua.script`, which only takes literals."""
    asked: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and (node.func.value.id, node.func.attr) == ("lua", "script")
            ):
                continue
            for arg in node.args:
                # Literal paths only, so that this test sees every file a module reads.
                assert isinstance(arg, ast.Constant), _module_name(path)
                assert isinstance(arg.value, str), _module_name(path)
                asked.setdefault(arg.value, []).append(_module_name(path))
    return asked


def test_every_lua_file_is_read_and_every_file_read_exists() -> None:
    """No orphan script and no dangling name: a renamed `.lua` file fails here, not in Redis."""
    asked = _lua_files_asked()
    on_disk = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.lua")}
    assert sorted(set(asked) - on_disk) == [], "read but missing"
    assert sorted(on_disk - set(asked)) == [], "never read"


def test_a_lua_file_lies_beside_a_module_that_reads_it() -> None:
    for path, modules in _lua_files_asked().items():
        package = "sync_worker." + path.rpartition("/")[0].replace("/", ".")
        assert any(m.rpartition(".")[0] == package for m in modules), (path, modules)


def test_no_module_over_500_lines() -> None:
    """A module a reader can hold in mind (issue 17): split by responsibility past that."""
    long = {
        _module_name(p): n
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text("utf-8").splitlines())) > 500
    }
    assert long == {}

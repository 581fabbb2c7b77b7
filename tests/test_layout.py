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

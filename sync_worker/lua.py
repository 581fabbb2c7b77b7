"""The Redis Lua scripts, kept as `.lua` files beside the module that runs them.

A module reads its scripts once, at import, with `script`; tests/test_layout.py checks that
every `.lua` file in the package is read by some module and that every file named exists.
"""

from __future__ import annotations

from importlib.resources import files


def script(*paths: str) -> str:
    """The text of one script: the named files (relative to the package, shared functions
    first), each starting on a line of its own.

    The leading newline of each part keeps a script's text, and so its SHA1 (the name Redis
    caches it under), what it was when the scripts lived in Python strings."""
    root = files(__package__)
    return "".join("\n" + root.joinpath(*path.split("/")).read_text("utf-8") for path in paths)

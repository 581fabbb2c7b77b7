"""Fixtures shared by the whole suite live in tests/fixtures/, one module per service; the order
in which pytest-xdist's workers run the tests is set here."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "pytester",
    "tests.fixtures.logs",
    "tests.fixtures.redis_server",
    "tests.fixtures.sandbox",
    "tests.fixtures.runtime",
    "tests.fixtures.stack",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, put the tests marked `slow` (15 to 40 s each) at the head of the workers'
    shares, spread evenly, instead of wherever their modules fall.

    `--dist worksteal` first hands each worker an equal, contiguous share of this list, and an
    idle worker later steals from the tail of a busy one's queue, but never its last two tests.
    Slow tests at the tail of one share ran one after another while the other workers had
    nothing left to take (test_faults.py's three, 70 s on one worker, its last 30 s alone).
    At the heads they run while everything else can still be balanced behind them."""
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if workers < 2 or not slow:
        return
    rest = [item for item in items if item.get_closest_marker("slow") is None]
    ordered: list[pytest.Item] = []
    remaining = len(items)
    for index in range(workers):
        share = remaining // (workers - index)  # worksteal's first split
        head = slow[index::workers]
        take = max(0, share - len(head))
        ordered += head + rest[:take]
        rest = rest[take:]
        remaining -= share
    items[:] = ordered + rest

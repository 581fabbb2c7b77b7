"""Fixtures shared by the whole suite live in tests/fixtures/, one module per service."""

pytest_plugins = [
    "pytester",
    "tests.fixtures.logs",
    "tests.fixtures.redis_server",
    "tests.fixtures.sandbox",
    "tests.fixtures.stack",
]

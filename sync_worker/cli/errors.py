"""The one line a command prints when Redis fails it: what went wrong and which setting to fix."""

from __future__ import annotations


def redis_error_line(error: Exception) -> str:
    """`error: Redis: ...` naming REDIS_URL (and REDIS_SENTINEL_MASTER when the sentinels know
    no such master), cut before the client objects redis-py appends to some messages."""
    text = str(error).split(" : <", 1)[0].splitlines()
    what = text[0] if text and text[0] else type(error).__name__
    if what.startswith("No master found"):
        return f"error: Redis: {what} (check REDIS_URL and REDIS_SENTINEL_MASTER)"
    return f"error: Redis: {what} (check REDIS_URL)"

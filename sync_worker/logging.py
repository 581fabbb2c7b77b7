"""Structured logs: one event per line, JSON when not on a terminal, readable when it is.

Configured once per entry point with `configure_logging(settings)`. A processor drops any value
that looks like a secret, so a careless `log.info(..., headers=...)` cannot leak a key.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from sync_worker.settings import Settings

_SECRET_VALUE = re.compile(r"(sk|pk|rk)_(test|live)_[A-Za-z0-9]+|whsec_[A-Za-z0-9+/=]+|Bearer \S+")
_SECRET_KEYS = {"authorization", "secret_key", "webhook_secret", "admin_token", "password"}


def redact(text: str) -> str:
    """`text` with every key, webhook secret and bearer token replaced."""
    return _SECRET_VALUE.sub("[redacted]", text)


def _redact_event(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # uvicorn attaches a copy of its message with terminal colour codes; the message is enough.
    event.pop("color_message", None)
    for key, value in list(event.items()):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif isinstance(value, str):
            event[key] = redact(value)
    return event


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """Route structlog and the standard library (Celery, uvicorn) through one renderer."""
    output = stream if stream is not None else sys.stderr
    as_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not output.isatty()
    )
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=output.isatty())
    )
    # JSON has no other place for a traceback: render `exc_info` into an `exception` string
    # before redaction, so an exception's text is redacted too. The console renderer formats
    # `exc_info` itself (and warns if it was already turned into text).
    tracebacks: list[Any] = [structlog.processors.format_exc_info] if as_json else []
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *tracebacks,
        _redact_event,
    ]
    structlog.configure(
        processors=[
            # First: an event below the level is dropped before the time stamp, the redaction
            # and the rest are worked out for it (the worker logs an info line per user).
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # Extras first: uvicorn's `color_message` extra must reach `_redact_event`, which drops
            # it (after it, the raw escape codes would be printed on every start line).
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(settings.log_level)
    # Celery's "Task received"/"succeeded" lines repeat what our own outcome lines say, once per
    # task, with the whole argument list; failures still come through at ERROR.
    for noisy in ("httpx", "httpcore", "celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger for a module."""
    return structlog.stdlib.get_logger(name)

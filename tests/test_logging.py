"""JSON logs carry a failure's traceback, redacted, from structlog and the stdlib alike."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
import structlog

from sync_worker.logging import configure_logging, get_logger
from sync_worker.settings import Settings
from tests.fixtures.logs import log_lines


def _fail() -> None:
    raise RuntimeError("upstream said Bearer sk_test_abc123")


def test_log_exception_puts_the_traceback_in_the_json_line(json_log: io.StringIO) -> None:
    try:
        _fail()
    except RuntimeError:
        get_logger("tests.logging").exception("sync_failed", user_id="user_1")

    [line] = log_lines(json_log)
    assert line["event"] == "sync_failed"
    assert line["user_id"] == "user_1"
    assert "Traceback (most recent call last)" in line["exception"]
    assert "in _fail" in line["exception"]
    assert "RuntimeError: upstream said [redacted]" in line["exception"]
    assert "sk_test_abc123" not in json_log.getvalue()


def test_a_stdlib_exc_info_record_carries_its_traceback_too(json_log: io.StringIO) -> None:
    # Celery and uvicorn log failures through the standard library with exc_info=True.
    try:
        _fail()
    except RuntimeError:
        logging.getLogger("celery.worker").error("Task failed", exc_info=True)

    [line] = log_lines(json_log)
    assert line["event"] == "Task failed"
    assert "Traceback (most recent call last)" in line["exception"]
    assert "RuntimeError: upstream said [redacted]" in line["exception"]
    assert "sk_test_abc123" not in json_log.getvalue()


def test_events_below_the_level_are_dropped_before_any_processing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sync_worker.logging as logging_module

    saved_config = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    redacted: list[str] = []
    real = logging_module._redact_event

    def counted(logger: Any, method: str, event: Any) -> Any:
        redacted.append(method)
        return real(logger, method, event)

    monkeypatch.setattr(logging_module, "_redact_event", counted)
    stream = io.StringIO()
    try:
        configure_logging(Settings(log_format="json", log_level="WARNING"), stream=stream)
        log = get_logger("tests.level")
        for _ in range(3):
            log.info("sync_outcome", user_id="u1")
        log.warning("kept", user_id="u1")
    finally:
        structlog.configure(**saved_config)
        root.handlers, root.level = saved_handlers, saved_level
    assert redacted == ["warning"]
    assert [line["event"] for line in log_lines(stream)] == ["kept"]

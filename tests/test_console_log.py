"""The console log of a real `sync-worker web`: uvicorn's lines without its colour copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sync_worker.settings import Settings
from tests.fixtures.redis_server import free_port
from tests.fixtures.stack import WEBHOOK_SECRET, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_web_start_lines_carry_no_color_message(tmp_path: Path, log_format: str) -> None:
    env = {
        key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields
    }
    env |= {
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "LOG_FORMAT": log_format,
        "PYTHONPATH": str(ROOT),
    }
    port = free_port()
    log_path = tmp_path / "web.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "sync_worker", "web", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        # uvicorn logs "Uvicorn running on ..." (with its colour copy) once it listens.
        wait_for(lambda: "Uvicorn running" in log_path.read_text(errors="replace"), timeout=30)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=20)
    text = log_path.read_text(errors="replace")
    assert "Started server process" in text
    assert "color_message" not in text, text
    assert "\x1b[" not in text, text

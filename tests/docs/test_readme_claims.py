"""README claims that no other test held: each name the README tells an operator to look for
is one the code really produces."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from sync_worker import redis_keys as keys
from sync_worker.settings import Settings
from sync_worker.telemetry.stats import Stats
from tests.fixtures.redis_server import free_port
from tests.fixtures.stack import WEBHOOK_SECRET, Stack, wait_for

ROOT = Path(__file__).resolve().parents[2]
SERIES = re.compile(r"\brecur_sync_[a-z0-9_]+\b")
# A counter is produced where the code adds to it: `incr("name", ...)` or a `COUNTER = "name"`.
COUNTED = re.compile(r"""(?:\bincr\(\s*|\bCOUNTER\s*=\s*)"([a-z0-9_]+_total)\"""")


def readme_series() -> set[str]:
    """Every `recur_sync_...` name in the README, with a family's `_total` or `_` prefix form
    expanded (`recur_sync_events_received_total`, `_accepted_total` -> both full names)."""
    text = (ROOT / "README.md").read_text("utf-8")
    names = set(SERIES.findall(text))
    for row in re.findall(r"`(recur_sync_events)_received_total`((?:, `_[a-z_]+`)+)", text):
        family, rest = row
        names |= {family + suffix for suffix in re.findall(r"`(_[a-z_]+)`", rest)}
    return names


def counters_in_code() -> set[str]:
    """The counters some module of sync_worker adds to."""
    found: set[str] = set()
    for source in (ROOT / "sync_worker").rglob("*.py"):
        found |= set(COUNTED.findall(source.read_text("utf-8")))
    return {"recur_sync_" + name for name in found}


def test_every_metric_the_readme_names_is_exported_or_counted(web_stack: Stack) -> None:
    # What a running deployment has after its first sync and its first night: an applied
    # change (the collapse ratio is events per applied change) and a reconciliation report.
    stats = Stats(web_stack.redis)
    stats.incr("syncs_applied_total")
    stats.flush()
    report = {"status": "finished", "finished_at": "2026-11-24T03:01:00.000+00:00", "scanned": 3}
    web_stack.redis.lpush(keys.RECONCILE_REPORTS, json.dumps(report))
    text = httpx.get(web_stack.web_url + "/metrics", timeout=10).text
    # A family is declared (`# TYPE`) even before its first labelled sample.
    exported = set(re.findall(r"^# TYPE (recur_sync_[a-z0-9_]+) ", text, re.M))
    exported |= {name + "_total" for name in exported}
    counted = counters_in_code()
    unknown = sorted(
        name
        for name in readme_series()
        if name not in exported and not (name.endswith("_total") and name in counted)
    )
    assert not unknown, f"README names series that /metrics never exports: {unknown}"


def test_healthz_is_liveness_and_readyz_says_redis_is_unreachable(tmp_path: Path) -> None:
    # Deploying: /healthz answers 200 while the process runs; /readyz 503 naming the reason.
    env = {
        key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields
    }
    env |= {
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "PYTHONPATH": str(ROOT),
    }
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_worker", "web", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def healthz() -> int | None:
            try:
                return httpx.get(base + "/healthz", timeout=5).status_code
            except httpx.TransportError:
                return None

        assert wait_for(healthz, timeout=30) == 200
        ready = httpx.get(base + "/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["reason"] == "redis_unreachable"
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_first_sender_steps_install_what_the_python_example_imports() -> None:
    # "From nothing to a 202" runs examples/python/send_event.py in the venv `make run` made,
    # which holds only the package and its `run` extra.
    text = (ROOT / "README.md").read_text("utf-8")
    steps = text.split("\n### From nothing to a 202\n", 1)[1].split("\n### ", 1)[0]
    tree = ast.parse((ROOT / "examples" / "python" / "send_event.py").read_text("utf-8"))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
        )
    }
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party, "the example imports its signing library"
    for module in sorted(third_party):
        assert f"pip install {module}" in steps, f"the steps never install {module}"

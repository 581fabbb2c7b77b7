"""The shipped alerting rules: valid for Prometheus, each alert tested by `promtool test rules`,
and every series they name is one that `/metrics` of a real app exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sync_worker import redis_keys as keys
from sync_worker.runtime import Runtime
from sync_worker.settings import load_settings
from sync_worker.web.metrics import render

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = Path(__file__).with_name("alerts_test.yml")
SERIES = re.compile(r"\brecur_sync_[a-z_]+\b")


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        # CI installs it (.ci/run), so there a missing promtool is a failure, not a skip.
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return binary


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text("utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_fires_when_it_should_and_only_then() -> None:
    tested = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    covered = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text("utf-8")))
    assert covered == {rule["alert"] for rule in rules()}, "an alert without a promtool test"


def test_every_alert_says_how_bad_and_what_to_do() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert "`" in rule["annotations"]["description"] or "check" in (
            rule["annotations"]["description"].lower()
        ), f"{rule['alert']}: the description should name what to run or check"


def exported(runtime: Runtime) -> set[str]:
    """Series names in one scrape of a system with some history."""
    report = {"status": "finished", "finished_at": "2026-11-24T03:01:00.000+00:00", "scanned": 3}
    runtime.redis.lpush(keys.RECONCILE_REPORTS, json.dumps(report))
    runtime.stats.incr("dead_letters_total", reason="rejected")
    runtime.stats.flush()
    text = render(runtime).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def test_every_series_an_alert_reads_is_exported(redis_url: str) -> None:
    runtime = Runtime(load_settings(redis_url=redis_url))
    try:
        names = exported(runtime)
    finally:
        runtime.close()
    for rule in rules():
        used = set(SERIES.findall(rule["expr"]))
        assert used, f"{rule['alert']} reads no recur_sync_ series"
        assert used <= names, f"{rule['alert']}: not exported: {sorted(used - names)}"

"""`python -m bench`: its help and its mistakes answer at once, without running a benchmark."""

from __future__ import annotations

import subprocess
import sys

from bench.__main__ import BENCHMARKS


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=30
    )


def test_help_lists_the_benchmarks_and_runs_none() -> None:
    done = bench("--help")
    assert done.returncode == 0
    assert "===" not in done.stdout
    for name in BENCHMARKS:
        assert name in done.stdout


def test_an_unknown_benchmark_is_refused_before_any_runs() -> None:
    done = bench("intake", "nosuch")
    assert done.returncode == 2
    assert "no benchmark nosuch" in done.stderr
    assert "===" not in done.stdout

"""The operator tests' fixtures (settings, a runtime on the test Redis and the sandbox, the web
app in-process), shared here rather than copied."""

from tests.operators.conftest import operator_env, runtime, web

__all__ = ["operator_env", "runtime", "web"]

"""A dead letter's triage when Recur was not asked or did not answer (a wrong key, the first
mistake of a new operator): its "Recur now" column says "(not fetched)", and "(no customer)"
only when Recur answered that it has none."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from sync_worker.cli import app
from sync_worker.runtime import Runtime
from tests.fixtures.stack import ADMIN_TOKEN
from tests.operators.conftest import make_dead_letter, serve


def show(entry_id: str) -> str:
    result = CliRunner().invoke(app, ["dlq", "show", entry_id])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_the_cli_tells_a_missing_customer_from_one_not_fetched(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_id = make_dead_letter(runtime, "user_gone")
    shown = show(entry_id)
    assert "(no customer)" in shown
    assert "(not fetched)" not in shown

    monkeypatch.setenv("RECUR_SECRET_KEY", "sk_test_refused")
    shown = show(entry_id)
    assert "(not fetched)" in shown
    assert "(no customer)" not in shown
    assert "401" in shown

    monkeypatch.delenv("RECUR_SECRET_KEY")
    shown = show(entry_id)
    assert "(not fetched)" in shown
    assert "RECUR_SECRET_KEY: not set" in shown


def test_the_dead_letter_page_tells_them_apart_too(runtime: Runtime) -> None:
    entry_id = make_dead_letter(runtime, "user_gone")
    with serve(runtime) as web:
        login = web.post("/admin/login", data={"token": ADMIN_TOKEN})
        assert login.status_code in (200, 303)
        page = web.get(f"/admin/dead-letters/{entry_id}")
        assert page.status_code == 200
        assert "(no customer)" in page.text
    wrong_key = {"recur_secret_key": SecretStr("sk_test_refused")}
    refused = Runtime(runtime.settings.model_copy(update=wrong_key))
    try:
        with serve(refused) as web:
            web.post("/admin/login", data={"token": ADMIN_TOKEN})
            page = web.get(f"/admin/dead-letters/{entry_id}")
            assert page.status_code == 200
            assert "(not fetched)" in page.text
            assert "(no customer)" not in page.text
    finally:
        refused.close()

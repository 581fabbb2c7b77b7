"""The operator API over HTTP, served by the real app, against real Redis and the sandbox."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sync_worker.runtime import Runtime
from sync_worker.settings import load_settings
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import ADMIN_TOKEN
from tests.operators.conftest import make_dead_letter, serve, sync_due

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    ],
)
def test_refused_without_the_token_and_ids_do_not_leak(
    runtime: Runtime, web: httpx.Client, headers: dict[str, str]
) -> None:
    real = make_dead_letter(runtime, "user_a")
    answers = [
        web.get("/admin/api/dead-letters", headers=headers),
        web.get(f"/admin/api/dead-letters/{real}", headers=headers),
        web.get("/admin/api/dead-letters/dl_nope", headers=headers),
        web.post(f"/admin/api/dead-letters/{real}/replay", headers=headers),
        web.post("/admin/api/dead-letters/replay", headers=headers, json={"nonsense": 1}),
        web.delete(f"/admin/api/dead-letters/{real}", headers=headers),
        web.delete("/admin/api/dead-letters/dl_nope", headers=headers),
        web.get("/admin/api/status", headers=headers),
        web.post("/admin/api/resume", headers=headers),
    ]
    assert {r.status_code for r in answers} == {401}
    assert {r.json()["error"]["code"] for r in answers} == {"unauthorized"}
    assert answers[1].content == answers[2].content  # existing and unknown ids look the same
    assert answers[0].headers["www-authenticate"] == "Bearer"
    assert runtime.dlq.ids() == [real]


@pytest.fixture
def web_without_token(monkeypatch: pytest.MonkeyPatch, runtime: Runtime) -> Iterator[httpx.Client]:
    monkeypatch.delenv("ADMIN_TOKEN")
    settings = load_settings()
    assert settings.admin_token is None
    with serve(Runtime(settings, client=runtime.redis)) as client:
        yield client


def test_disabled_without_admin_token(web_without_token: httpx.Client) -> None:
    for path in ("/admin/api/status", "/admin/api/dead-letters"):
        response = web_without_token.get(path, headers=AUTH)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "admin_disabled"
        assert "ADMIN_TOKEN is not set" in response.json()["error"]["message"]
    assert web_without_token.get("/admin").status_code == 503


def test_list_filters_and_get(runtime: Runtime, web: httpx.Client) -> None:
    a = make_dead_letter(runtime, "user_a")
    b = make_dead_letter(runtime, "user_b")
    listed = web.get("/admin/api/dead-letters", headers=AUTH).json()
    assert [e["id"] for e in listed["data"]] == [b, a]
    assert listed["count"] == 2
    one = web.get("/admin/api/dead-letters", headers=AUTH, params={"user_id": "user_a"}).json()
    assert [e["id"] for e in one["data"]] == [a]
    limited = web.get("/admin/api/dead-letters", headers=AUTH, params={"limit": 1}).json()
    assert [e["id"] for e in limited["data"]] == [b]
    none = web.get("/admin/api/dead-letters", headers=AUTH, params={"reason": "conflict"}).json()
    assert none["data"] == []
    bad = web.get("/admin/api/dead-letters", headers=AUTH, params={"reason": "nope"})
    assert bad.status_code == 422

    entry = web.get(f"/admin/api/dead-letters/{a}", headers=AUTH).json()
    assert entry["user_id"] == "user_a"
    assert entry["reason"] == "not_found"
    assert entry["request"] == {"name": "name of user_a"}
    missing = web.get("/admin/api/dead-letters/dl_nope", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "no dead letter dl_nope"}}


def test_get_with_triage_fetches_recur(
    runtime: Runtime, web: httpx.Client, sandbox: SandboxHandle
) -> None:
    entry_id = make_dead_letter(runtime, "user_a")
    sandbox.control.create_customer("a@x.tw", name="now", external_id="user_a")
    found = web.get(f"/admin/api/dead-letters/{entry_id}?triage=true", headers=AUTH).json()
    assert found["entry"]["id"] == entry_id
    assert found["recur"]["name"] == "now"
    assert found["recur_error"] is None


def test_replay_one_then_the_entry_goes_once_synced(
    runtime: Runtime, web: httpx.Client, sandbox: SandboxHandle
) -> None:
    entry_id = make_dead_letter(runtime, "user_a", name="新")
    sandbox.control.create_customer("a@x.tw", external_id="user_a")

    dry = web.post(f"/admin/api/dead-letters/{entry_id}/replay?dry_run=true", headers=AUTH)
    assert dry.status_code == 200
    assert dry.json()["outcome"] == "would_replay"
    assert dry.json()["request"] == {"name": "新"}

    replayed = web.post(f"/admin/api/dead-letters/{entry_id}/replay", headers=AUTH)
    assert replayed.status_code == 202
    assert replayed.json()["outcome"] == "replayed"
    again = web.post(f"/admin/api/dead-letters/{entry_id}/replay", headers=AUTH)
    assert again.status_code == 409
    assert again.json()["outcome"] == "busy"

    assert [o.result for o in sync_due(runtime)] == ["applied"]
    assert web.get(f"/admin/api/dead-letters/{entry_id}", headers=AUTH).status_code == 404
    assert web.post(f"/admin/api/dead-letters/{entry_id}/replay", headers=AUTH).status_code == 404


def test_replay_by_filter(runtime: Runtime, web: httpx.Client) -> None:
    ids = {make_dead_letter(runtime, f"user_{n}") for n in range(3)}
    refused = web.post("/admin/api/dead-letters/replay", headers=AUTH, json={})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "filter_required"

    dry = web.post(
        "/admin/api/dead-letters/replay", headers=AUTH, json={"all": True, "dry_run": True}
    ).json()
    assert dry["counts"] == {"would_replay": 3}
    one = web.post(
        "/admin/api/dead-letters/replay", headers=AUTH, json={"user_id": "user_1"}
    ).json()
    assert one["counts"] == {"replayed": 1}
    rest = web.post(
        "/admin/api/dead-letters/replay", headers=AUTH, json={"reason": "not_found"}
    ).json()
    assert rest["counts"] == {"replayed": 2, "busy": 1}
    assert {r["id"] for r in rest["results"]} == ids


def test_delete(runtime: Runtime, web: httpx.Client) -> None:
    entry_id = make_dead_letter(runtime, "user_a")
    assert web.delete(f"/admin/api/dead-letters/{entry_id}", headers=AUTH).json() == {
        "deleted": entry_id
    }
    assert runtime.dlq.ids() == []
    assert web.delete(f"/admin/api/dead-letters/{entry_id}", headers=AUTH).status_code == 404


def test_status_and_resume(runtime: Runtime, web: httpx.Client) -> None:
    make_dead_letter(runtime, "user_a")
    runtime.flow.pause(reason="unauthorized", status=401, message="bad key")
    status = web.get("/admin/api/status", headers=AUTH).json()
    assert status["dead_letters"]["not_found"] == 1
    assert status["paused"]["status"] == 401
    assert status["mode"] == "test"

    assert web.post("/admin/api/resume", headers=AUTH).json() == {"resumed": True}
    assert runtime.flow.paused() is None
    assert web.post("/admin/api/resume", headers=AUTH).json() == {"resumed": False}

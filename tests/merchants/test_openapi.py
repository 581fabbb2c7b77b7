"""The served OpenAPI documents, checked against the real `sync-worker web` and its routes.

Both documents are valid OpenAPI; together they describe every route the app serves and nothing
else; each documented operation answers on the real server; the intake's declared request
examples are accepted and its real answers match the declared schemas.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from sync_worker.settings import load_settings
from sync_worker.web.app import create_app
from sync_worker.web.openapi import INTAKE_EXAMPLES
from tests.fixtures.stack import ADMIN_TOKEN, Stack, user_event

BEARER = {"authorization": f"Bearer {ADMIN_TOKEN}"}
PARAMETER = re.compile(r"\{[^}]+\}")


@pytest.fixture
def web_stack(shared_web_stack: Stack) -> Stack:
    """This module's tests share one web process, each test finding it as new."""
    return shared_web_stack


def fetch(stack: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    public = httpx.get(stack.web_url + "/openapi.json", timeout=10)
    admin = httpx.get(stack.web_url + "/admin/api/openapi.json", headers=BEARER, timeout=10)
    assert (public.status_code, admin.status_code) == (200, 200)
    return public.json(), admin.json()


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


def schema_of(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema whose `#/components/...` references resolve in the document."""
    return {**schema, "components": document["components"]}


def test_both_documents_are_valid_and_split_public_from_admin(web_stack: Stack) -> None:
    public, admin = fetch(web_stack)
    validate(public)
    validate(admin)
    assert {"/webhooks/user-updated", "/healthz", "/readyz", "/metrics"} <= set(public["paths"])
    assert not [path for path in public["paths"] if path.startswith("/admin")]
    assert all(path.startswith("/admin") for path in admin["paths"])
    assert "/admin/api/dead-letters" in admin["paths"]
    # FastAPI's own document, which would list the admin routes to anyone, is not served.
    assert "/admin/api/dead-letters" not in httpx.get(web_stack.web_url + "/openapi.json").text


def test_the_admin_document_needs_the_token(web_stack: Stack) -> None:
    url = web_stack.web_url + "/admin/api/openapi.json"
    assert httpx.get(url, timeout=10).status_code == 401
    wrong = httpx.get(url, headers={"authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert "/admin/api" not in wrong.text.replace("/admin/api/openapi.json", "")


def test_the_documents_describe_exactly_the_apps_routes(
    web_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in web_stack.env.items():
        monkeypatch.setenv(name, value)
    served_routes = operations(create_app(load_settings()).openapi())
    public, admin = fetch(web_stack)
    assert operations(public).isdisjoint(operations(admin))
    assert operations(public) | operations(admin) == served_routes


def test_every_documented_operation_answers_on_the_real_server(web_stack: Stack) -> None:
    public, admin = fetch(web_stack)
    with httpx.Client(base_url=web_stack.web_url, timeout=10) as client:
        login = client.post("/admin/login", data={"token": ADMIN_TOKEN})
        assert login.status_code == 303
        # Logging out ends the session the other dashboard routes need: last.
        everything = operations(public) | operations(admin)
        documented = sorted(everything, key=lambda operation: "logout" in operation[1])
        for method, path in documented:
            url = PARAMETER.sub("missing_1", path)
            headers = BEARER if path.startswith("/admin/api/") else {}
            body = {"json": {}} if method in {"POST", "PUT", "PATCH"} else {}
            response = client.request(method, url, headers=headers, **body)  # type: ignore[arg-type]
            unrouted = response.status_code == 405 or (
                response.status_code == 404 and response.text == '{"detail":"Not Found"}'
            )
            assert not unrouted, f"{method} {path} is documented but not served"
            assert response.status_code < 500, f"{method} {path}: {response.status_code}"


def test_intake_examples_are_accepted_and_answers_match_the_schemas(web_stack: Stack) -> None:
    public, _ = fetch(web_stack)
    operation = public["paths"]["/webhooks/user-updated"]["post"]
    content = operation["requestBody"]["content"]["application/json"]
    request_schema = schema_of(public, content["schema"])
    assert set(content["examples"]) == set(INTAKE_EXAMPLES)

    def check(response: httpx.Response) -> None:
        declared = operation["responses"][str(response.status_code)]
        answer_schema = declared["content"]["application/json"]["schema"]
        jsonschema.validate(response.json(), schema_of(public, answer_schema))

    for number, (name, example) in enumerate(content["examples"].items()):
        jsonschema.validate(example["value"], request_schema)
        body = json.dumps(example["value"]).encode()
        response = web_stack.post(body, msg_id=example["value"].get("id", f"bare_{number}"))
        assert response.status_code == 202, f"{name}: {response.text}"
        check(response)
    again = web_stack.post(json.dumps(INTAKE_EXAMPLES["user.updated"]).encode())
    assert again.status_code == 200
    check(again)

    invalid = user_event("evt_invalid", "user 1", name="x")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(invalid, request_schema)
    refused = web_stack.post(invalid)
    assert refused.status_code == 422
    check(refused)

    body = json.dumps(user_event("evt_old", "user_1", name="x")).encode()
    stale = web_stack.sign(body, msg_id="evt_old", at=int(time.time()) - 3600)
    unsigned = httpx.post(
        web_stack.web_url + "/webhooks/user-updated", content=body, headers=stale, timeout=10
    )
    assert unsigned.status_code == 401
    check(unsigned)
    assert f"`{unsigned.json()['error']['code']}`" in operation["responses"]["401"]["description"]
    for status, payload in ((400, b"{nope"), (413, b"[" + b" " * 70_000 + b"]")):
        response = web_stack.post(payload, msg_id="m")
        assert response.status_code == status
        check(response)

    web_stack.redis_server.stop()
    try:
        unavailable = web_stack.post(user_event("evt_503", "user_1", name="x"))
    finally:
        web_stack.redis_server.start()
    assert unavailable.status_code == 503
    check(unavailable)

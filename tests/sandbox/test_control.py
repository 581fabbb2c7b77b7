"""The `/_sandbox` control endpoints and the request log, over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sync_worker.sandbox import RunningServer, SandboxControl, create_app, start_in_thread
from tests.fixtures.sandbox import SandboxHandle


def test_reset_forgets_customers_faults_and_log(
    sandbox: SandboxHandle, sandbox_api: httpx.Client
) -> None:
    sandbox.control.seed(3)
    sandbox.control.update_faults(latency_ms=1, scripts={"user_1": [500]})
    sandbox_api.get("/customers")
    sandbox.control.reset()
    assert sandbox.control.health()["customers"] == 0
    assert sandbox.control.requests() == []
    assert sandbox.control.faults()["scripts"] == {}
    assert sandbox.control.faults()["latency_ms"] == 0
    sandbox_api.get("/customers")
    assert [e["seq"] for e in sandbox.control.requests()] == [1]


def test_create_customers_returns_them(sandbox: SandboxHandle) -> None:
    created = sandbox.control.create_customers(
        [
            {"email": "a@x.tw", "name": "甲", "external_id": "a", "metadata": {"k": "v"}},
            {"email": "b@x.tw", "status": "BANNED"},
        ]
    )
    assert [c["email"] for c in created] == ["a@x.tw", "b@x.tw"]
    assert created[0]["metadata"] == {"k": "v"}
    assert created[1]["status"] == "BANNED"
    assert created[1]["external_id"] is None
    assert created[0]["id"] < created[1]["id"]
    assert sandbox.control.customer(created[1]["id"]) == created[1]


@pytest.mark.parametrize(
    ("customers", "status"),
    [
        ([{"email": "a@x.tw"}, {"email": "a@x.tw"}], 409),
        ([{"email": "b@x.tw", "external_id": "taken"}], 409),
        ([{"email": "c@x.tw", "external_id": "bad id"}], 422),
        ([{"name": "no email"}], 400),
        ({"email": "not a list"}, 400),
    ],
)
def test_create_customers_is_all_or_nothing(
    sandbox: SandboxHandle, customers: object, status: int
) -> None:
    sandbox.control.create_customer("first@x.tw", external_id="taken")
    response = httpx.post(sandbox.url + "/_sandbox/customers", json=customers)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"code", "message"}
    assert sandbox.control.health()["customers"] == 1


def test_seed_creates_numbered_demo_customers(sandbox: SandboxHandle) -> None:
    result = sandbox.control.seed(3, prefix="member_", start=10)
    assert (result["created"], result["total"]) == (3, 3)
    last = sandbox.control.customer(result["last_id"])  # type: ignore[arg-type]
    assert last is not None
    assert last["external_id"] == "member_12"
    assert last["email"] == "member_12@example.com"
    assert last["name"]
    assert sandbox.control.customer_by_external_id("member_9") is None
    assert sandbox.control.seed(0)["first_id"] is None


def test_request_log_records_every_v1_request(
    sandbox: SandboxHandle, sandbox_api: httpx.Client
) -> None:
    sandbox.control.seed(1)
    sandbox_api.patch("/customers/external/user_1", json={"name": "新名字"})
    sandbox_api.get("/customers", params={"limit": "5"})
    httpx.get(sandbox.api_url + "/customers")
    sandbox_api.patch(
        "/customers/user_1?by_external_id=true",
        content=b"{oops",
        headers={"Content-Type": "application/json"},
    )
    sandbox.control.health()
    log = sandbox.control.requests()
    assert [(e["seq"], e["method"], e["status"]) for e in log] == [
        (1, "PATCH", 200),
        (2, "GET", 200),
        (3, "GET", 401),
        (4, "PATCH", 400),
    ]
    first = log[0]
    assert set(first) == {"seq", "method", "path", "query", "external_id", "body", "status", "at"}
    assert first["path"] == "/v1/customers/external/user_1"
    assert first["external_id"] == "user_1"
    assert first["body"] == {"name": "新名字"}
    assert first["at"].endswith("Z")
    assert log[1]["query"] == {"limit": "5"}
    assert log[1]["external_id"] is None
    assert log[1]["body"] is None
    assert log[3]["body"] == "{oops"
    assert log[3]["external_id"] == "user_1"


def test_request_log_filters_and_clear(sandbox: SandboxHandle, sandbox_api: httpx.Client) -> None:
    sandbox.control.seed(2)
    for user in ["user_1", "user_2", "user_1"]:
        sandbox_api.patch(f"/customers/external/{user}", json={"name": "x"})
        sandbox_api.get(f"/customers/external/{user}")
    control = sandbox.control
    assert [e["seq"] for e in control.requests(method="PATCH")] == [1, 3, 5]
    assert [e["seq"] for e in control.requests(external_id="user_2")] == [3, 4]
    assert [e["seq"] for e in control.requests(since=4)] == [5, 6]
    assert [e["seq"] for e in control.requests(since=1, method="PATCH", limit=1)] == [3]
    assert [e["seq"] for e in control.requests(status=200, since=5)] == [6]
    control.clear_requests()
    assert control.requests() == []
    sandbox_api.get("/customers")
    assert [e["seq"] for e in control.requests()] == [7]


def test_request_log_bad_filter_is_400(sandbox: SandboxHandle) -> None:
    response = httpx.get(sandbox.url + "/_sandbox/requests", params={"since": "yesterday"})
    assert response.status_code == 400


@pytest.fixture
def small_log_sandbox() -> Iterator[RunningServer]:
    server = start_in_thread(create_app(request_log_size=3))
    yield server
    server.stop()


def test_request_log_is_bounded(small_log_sandbox: RunningServer) -> None:
    for _ in range(5):
        httpx.get(small_log_sandbox.url + "/v1/customers")
    with SandboxControl(small_log_sandbox.url) as control:
        assert [e["seq"] for e in control.requests()] == [3, 4, 5]
        assert control.health()["requests_logged"] == 3


def test_control_reads_do_not_touch_faults_or_log(sandbox: SandboxHandle) -> None:
    sandbox.control.seed(1)
    sandbox.control.set_faults(outage=True, scripts={"user_1": [500]})
    assert sandbox.control.customer_by_external_id("user_1") is not None
    assert sandbox.control.faults()["scripts"] == {"user_1": [500]}
    assert sandbox.control.requests() == []

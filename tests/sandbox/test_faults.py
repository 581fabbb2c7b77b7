"""Each fault kind, as a client of the sandbox sees it over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sync_worker.sandbox import RunningServer, create_app, start_in_thread
from sync_worker.sandbox.control import LoggedRequest
from tests.fixtures.sandbox import SandboxHandle


@pytest.fixture
def user_1(sandbox: SandboxHandle) -> str:
    sandbox.control.seed(2)
    return "user_1"


def statuses(api: httpx.Client, path: str, count: int) -> list[int]:
    return [api.patch(path, json={"name": f"名{n}"}).status_code for n in range(count)]


def test_error_rate_one_fails_everything_and_changes_nothing(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, user_1: str
) -> None:
    sandbox.control.set_faults(error_rate=1.0)
    response = sandbox_api.patch("/customers/external/user_1", json={"name": "不應套用"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert sandbox.control.customer_by_external_id("user_1")["name"] == "測試用戶 1"  # type: ignore[index]
    assert sandbox_api.get("/customers").status_code == 500


def test_error_rate_fails_a_fraction(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, user_1: str
) -> None:
    sandbox.control.set_faults(error_rate=0.5)
    seen = [sandbox_api.get("/customers/external/user_1").status_code for _ in range(120)]
    assert set(seen) == {200, 500}
    assert 20 < seen.count(500) < 100


def test_latency_delays_without_serialising_requests(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, user_1: str
) -> None:
    sandbox.control.set_faults(latency_ms=300)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda _: httpx.get(sandbox.api_url + "/customers").status_code, range(8))
        )
    elapsed = time.monotonic() - started
    assert codes == [401] * 8
    assert 0.3 <= elapsed < 1.5


def test_latency_makes_a_client_time_out(sandbox: SandboxHandle, user_1: str) -> None:
    sandbox.control.set_faults(latency_ms=2000)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(sandbox.api_url + "/customers", timeout=0.2)


def test_apply_delay_lands_a_patch_after_its_client_gave_up(
    sandbox: SandboxHandle, user_1: str
) -> None:
    sandbox.control.set_faults(apply_delay_ms=1500)
    with pytest.raises(httpx.ReadTimeout):
        httpx.patch(
            sandbox.api_url + "/customers/external/user_1",
            json={"name": "late"},
            headers={"Authorization": f"Bearer {sandbox.secret_key}"},
            timeout=0.3,
        )
    customer = sandbox.control.customer_by_external_id("user_1")
    assert customer is not None
    assert customer["name"] != "late"  # not yet: the client has given up, the write is pending

    def landed() -> list[LoggedRequest]:
        return sandbox.control.requests(method="PATCH", status=200)

    deadline = time.monotonic() + 10
    while not landed() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["body"] for r in landed()] == [{"name": "late"}]
    customer = sandbox.control.customer_by_external_id("user_1")
    assert customer is not None
    assert customer["name"] == "late"


def test_rate_limit_answers_429_with_retry_after() -> None:
    # A sandbox of its own: the bucket counts every request the sandbox sees, and the session's
    # sandbox also hears from whatever else of the session still talks to it (once, in CI, a
    # request answered 401 took a token within this test's first five).
    server = start_in_thread(create_app(customers=2, rate_limit_rps=5))
    try:
        with httpx.Client(
            base_url=server.url + "/v1", headers={"Authorization": "Bearer sk_test_sandbox"}
        ) as api:
            responses = [api.get("/customers/external/user_1") for _ in range(12)]
            codes = [r.status_code for r in responses]
            assert codes[:5] == [200] * 5
            assert 429 in codes[5:]
            limited = next(r for r in responses if r.status_code == 429)
            assert limited.json()["error"]["code"] == "rate_limited"
            assert int(limited.headers["retry-after"]) >= 1
            time.sleep(1.0)
            assert api.get("/customers/external/user_1").status_code == 200
    finally:
        server.stop()


def test_outage_refuses_every_v1_request_until_switched_off(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, user_1: str
) -> None:
    sandbox.control.update_faults(outage=True)
    response = sandbox_api.patch("/customers/external/user_1", json={"name": "x"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert httpx.get(sandbox.api_url + "/customers").status_code == 503
    assert sandbox.control.health()["status"] == "ok"
    sandbox.control.update_faults(outage=False)
    assert sandbox_api.get("/customers").status_code == 200


def test_script_is_consumed_one_status_per_request(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, user_1: str
) -> None:
    sandbox.control.set_faults(
        scripts={"user_1": [500, 500, 429, "ok", 503]}, retry_after_seconds=7
    )
    assert sandbox.control.faults()["scripts"] == {"user_1": [500, 500, 429, 200, 503]}
    responses = [
        sandbox_api.patch("/customers/external/user_1", json={"name": f"第{n}次"}) for n in range(6)
    ]
    assert [r.status_code for r in responses] == [500, 500, 429, 200, 503, 200]
    assert responses[2].headers["retry-after"] == "7"
    assert responses[2].json()["error"]["code"] == "rate_limited"
    assert responses[4].json()["error"]["code"] == "service_unavailable"
    assert sandbox.control.customer_by_external_id("user_1")["name"] == "第5次"  # type: ignore[index]
    assert sandbox.control.faults()["scripts"] == {}


def test_script_targets_only_its_external_id(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, user_1: str
) -> None:
    sandbox.control.set_faults(scripts={"user_1": [409, 409]})
    assert statuses(sandbox_api, "/customers/external/user_2", 2) == [200, 200]
    customer_id = sandbox.control.customer_by_external_id("user_1")["id"]  # type: ignore[index]
    # A request by customer id does not name the external id, so it does not consume the script.
    assert statuses(sandbox_api, f"/customers/{customer_id}", 1) == [200]
    assert statuses(sandbox_api, "/customers/user_1?by_external_id=true", 1) == [409]
    assert statuses(sandbox_api, "/customers/external/user_1", 2) == [409, 200]


def test_unauthenticated_requests_do_not_consume_a_script(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, user_1: str
) -> None:
    sandbox.control.set_faults(scripts={"user_1": [500]})
    assert httpx.get(sandbox.api_url + "/customers/external/user_1").status_code == 401
    assert sandbox_api.get("/customers/external/user_1").status_code == 500


def test_put_replaces_and_patch_merges(sandbox: SandboxHandle) -> None:
    control = sandbox.control
    control.set_faults(latency_ms=5, error_rate=0.1)
    merged = control.update_faults(outage=True)
    assert (merged["latency_ms"], merged["error_rate"], merged["outage"]) == (5, 0.1, True)
    replaced = control.set_faults(rate_limit_rps=100)
    assert (replaced["latency_ms"], replaced["outage"], replaced["rate_limit_rps"]) == (
        0,
        False,
        100,
    )
    assert control.clear_faults()["rate_limit_rps"] == 0


@pytest.mark.parametrize(
    "body",
    [
        *[{"error_rate": 2}, {"latency_ms": "slow"}, {"flood": True}, {"outage": 1}, [1]],
        *[{"scripts": {"u": [418]}}, {"scripts": {"u": 500}}, {"scripts": ["u"]}],
    ],
)
def test_bad_fault_settings_are_400(sandbox: SandboxHandle, body: object) -> None:
    response = httpx.put(sandbox.url + "/_sandbox/faults", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert sandbox.control.faults()["error_rate"] == 0


@pytest.fixture
def failing_live_sandbox() -> Iterator[RunningServer]:
    app = create_app(secret_key="sk_live_abc", customers=3, error_rate=1.0, random_seed=1)
    server = start_in_thread(app)
    yield server
    server.stop()


def test_create_app_arguments_set_key_seed_and_faults(failing_live_sandbox: RunningServer) -> None:
    url = failing_live_sandbox.url
    headers = {"Authorization": "Bearer sk_live_abc"}
    assert httpx.get(url + "/v1/customers", headers=headers).status_code == 500
    httpx.put(url + "/_sandbox/faults", json={}).raise_for_status()
    body = httpx.get(url + "/v1/customers", headers=headers).json()
    assert body["livemode"] is True
    assert [c["external_id"] for c in body["data"]] == ["user_1", "user_2", "user_3"]
    assert all(c["livemode"] for c in body["data"])
    refused = httpx.get(url + "/v1/customers", headers={"Authorization": "Bearer sk_test_sandbox"})
    assert refused.status_code == 401


def test_a_lost_answer_applies_the_change_and_answers_after_the_client_gave_up(
    sandbox: SandboxHandle,
) -> None:
    sandbox.control.create_customer("a@b.tw", name="old", external_id="user_1")
    sandbox.control.update_faults(lost_answers={"user_1": 1}, lost_answer_ms=3000)
    headers = {"Authorization": f"Bearer {sandbox.secret_key}"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.patch(
            sandbox.api_url + "/customers/external/user_1",
            json={"name": "applied"},
            headers=headers,
            timeout=0.5,
        )
    customer = sandbox.control.customer_by_external_id("user_1")
    assert customer is not None
    assert customer["name"] == "applied"
    assert sandbox.control.faults()["lost_answers"] == {}
    # only the next request was delayed
    answered = httpx.get(
        sandbox.api_url + "/customers/external/user_1", headers=headers, timeout=0.5
    )
    assert answered.status_code == 200

"""The sandbox speaks the Recur Customers API as the seed doc describes it, over real HTTP."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from sync_worker.sandbox import DEFAULT_SECRET_KEY, SandboxControl, create_app, start_in_thread
from tests.fixtures.sandbox import SandboxHandle

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
BASE_FIELDS = {
    "object", "id", "email", "name", "external_id", "email_verified", "status",
    "created_at", "updated_at", "livemode",
}  # fmt: skip


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


@pytest.fixture
def customer(sandbox: SandboxHandle) -> dict[str, Any]:
    return sandbox.control.create_customer(
        "wang@example.tw", name="王小明", external_id="user_123", metadata={"plan": "pro"}
    )


# Authentication.

ROUTES = [
    ("GET", "/customers"),
    ("GET", "/customers/user_123?by_external_id=true"),
    ("PATCH", "/customers/user_123?by_external_id=true"),
    ("GET", "/customers/external/user_123"),
    ("PATCH", "/customers/external/user_123"),
]
BAD_AUTH = {
    "missing": {},
    "wrong key": {"Authorization": "Bearer sk_test_wrong"},
    "publishable key": {"Authorization": "Bearer pk_test_sandbox"},
    "not bearer": {"Authorization": "Basic c2tfdGVzdF9zYW5kYm94"},
    "bare key": {"Authorization": "sk_test_sandbox"},
}


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("headers", BAD_AUTH.values(), ids=BAD_AUTH.keys())
def test_only_the_secret_key_is_accepted(
    sandbox: SandboxHandle,
    customer: dict[str, Any],
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    response = httpx.request(method, sandbox.api_url + path, headers=headers, json={"name": "竄改"})
    error = assert_error(response, 401, "unauthorized")
    assert "需要 Secret Key 認證" in error["message"]
    assert sandbox.control.customer(customer["id"])["name"] == "王小明"  # type: ignore[index]


def test_publishable_key_is_named_in_the_message(sandbox: SandboxHandle) -> None:
    response = httpx.get(
        sandbox.api_url + "/customers", headers={"Authorization": "Bearer pk_live_x"}
    )
    assert "publishable" in assert_error(response, 401, "unauthorized")["message"]


# The customer object.


def test_get_by_id_returns_the_documented_object(
    sandbox_api: httpx.Client, customer: dict[str, Any]
) -> None:
    response = sandbox_api.get(f"/customers/{customer['id']}")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == BASE_FIELDS | {"subscriptions"}
    assert body["object"] == "customer"
    assert re.fullmatch(r"cus_[0-9a-z]+", body["id"])
    assert body["email"] == "wang@example.tw"
    assert body["name"] == "王小明"
    assert body["external_id"] == "user_123"
    assert body["email_verified"] is False
    assert body["status"] == "ACTIVE"
    assert ISO_MS.fullmatch(body["created_at"])
    assert ISO_MS.fullmatch(body["updated_at"])
    assert body["livemode"] is False
    assert "metadata" not in body  # stored (the control API shows it) but never answered
    assert sandbox_api.get("/customers/external/user_123").json() == body
    assert body["subscriptions"] == []


@pytest.mark.parametrize(
    "path", ["/customers/external/user_123", "/customers/user_123?by_external_id=true"]
)
def test_get_by_external_id(sandbox_api: httpx.Client, customer: dict[str, Any], path: str) -> None:
    response = sandbox_api.get(path)
    assert response.status_code == 200
    assert response.json() == sandbox_api.get(f"/customers/{customer['id']}").json()


@pytest.mark.parametrize(
    "path",
    [
        "/customers/user_123",
        "/customers/user_123?by_external_id=false",
        "/customers/external/cus_unknown",
        "/customers/external/nobody",
        "/customers/cus_00000000000000000000000000",
    ],
)
def test_unknown_customer_is_404(
    sandbox_api: httpx.Client, customer: dict[str, Any], path: str
) -> None:
    assert_error(sandbox_api.get(path), 404, "resource_not_found")
    assert_error(sandbox_api.patch(path, json={"name": "x"}), 404, "resource_not_found")


def test_name_may_be_null_and_subscriptions_are_listed(sandbox: SandboxHandle) -> None:
    subscription = {"id": "sub_1", "status": "ACTIVE", "product": {"id": "prod_1"}}
    sandbox.control.create_customers(
        [{"email": "a@x.tw", "external_id": "a", "subscriptions": [subscription]}]
    )
    headers = {"Authorization": f"Bearer {sandbox.secret_key}"}
    body = httpx.get(sandbox.api_url + "/customers/external/a", headers=headers).json()
    assert body["name"] is None
    assert body["subscriptions"] == [subscription]
    item = httpx.get(sandbox.api_url + "/customers", headers=headers).json()["data"][0]
    assert item["subscriptions_count"] == 1
    assert item["orders_count"] == 0


def test_bad_by_external_id_flag_is_400(
    sandbox_api: httpx.Client, customer: dict[str, Any]
) -> None:
    assert_error(
        sandbox_api.get("/customers/user_123?by_external_id=maybe"), 400, "invalid_request"
    )
    assert sandbox_api.get("/customers/user_123?by_external_id=1").status_code == 200
    assert sandbox_api.get(f"/customers/{customer['id']}?by_external_id=false").status_code == 200


# Listing.


def test_list_shape_and_default_limit(sandbox: SandboxHandle, sandbox_api: httpx.Client) -> None:
    sandbox.control.seed(15)
    body = sandbox_api.get("/customers").json()
    assert set(body) == {"object", "data", "has_more", "next_cursor", "livemode"}
    assert body["object"] == "list"
    assert body["livemode"] is False
    assert len(body["data"]) == 10
    assert body["has_more"] is True
    assert body["next_cursor"] == body["data"][-1]["id"]
    item = body["data"][0]
    assert set(item) == BASE_FIELDS | {"subscriptions_count", "orders_count"}
    assert item["external_id"] == "user_1"


@pytest.mark.parametrize("total", [0, 1, 100, 101, 250])
@pytest.mark.parametrize("limit", [100, 7])
def test_paging_reaches_every_customer_once(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, total: int, limit: int
) -> None:
    sandbox.control.seed(total)
    seen: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    pages = 0
    while True:
        body = sandbox_api.get("/customers", params=params).json()
        pages += 1
        seen += [c["id"] for c in body["data"]]
        if not body["has_more"]:
            assert body["next_cursor"] is None
            break
        assert len(body["data"]) == limit
        assert body["next_cursor"] == body["data"][-1]["id"]
        params["starting_after"] = body["next_cursor"]
    assert pages == max(1, -(-total // limit))
    assert len(seen) == len(set(seen)) == total
    assert seen == sorted(seen)
    externals = [sandbox.control.customer(i)["external_id"] for i in seen[:3]]  # type: ignore[index]
    assert externals == [f"user_{n}" for n in range(1, min(total, 3) + 1)]


@pytest.mark.parametrize("limit", ["0", "101", "-5", "ten", "2.5", ""])
def test_bad_limit_is_400(sandbox_api: httpx.Client, limit: str) -> None:
    assert_error(sandbox_api.get("/customers", params={"limit": limit}), 400, "invalid_request")


def test_limit_bounds_are_inclusive(sandbox: SandboxHandle, sandbox_api: httpx.Client) -> None:
    sandbox.control.seed(101)
    assert len(sandbox_api.get("/customers?limit=1").json()["data"]) == 1
    assert len(sandbox_api.get("/customers?limit=100").json()["data"]) == 100


def test_unknown_cursor_is_400(sandbox: SandboxHandle, sandbox_api: httpx.Client) -> None:
    sandbox.control.seed(3)
    response = sandbox_api.get("/customers", params={"starting_after": "cus_nope"})
    assert_error(response, 400, "invalid_request")


def test_email_filter_is_exact(sandbox: SandboxHandle, sandbox_api: httpx.Client) -> None:
    sandbox.control.seed(5)
    found = sandbox_api.get("/customers", params={"email": "user_3@example.com"}).json()
    assert [c["external_id"] for c in found["data"]] == ["user_3"]
    assert found["has_more"] is False
    for near in ["USER_3@example.com", "user_3@example", "user_3"]:
        assert sandbox_api.get("/customers", params={"email": near}).json()["data"] == []


def test_status_filter(sandbox: SandboxHandle, sandbox_api: httpx.Client) -> None:
    sandbox.control.create_customers(
        {"email": f"u{n}@x.tw", "status": "BANNED" if n in (2, 5) else "ACTIVE"} for n in range(8)
    )
    banned = sandbox_api.get("/customers", params={"status": "BANNED", "limit": 1}).json()
    assert [c["email"] for c in banned["data"]] == ["u2@x.tw"]
    assert banned["has_more"] is True
    rest = sandbox_api.get(
        "/customers", params={"status": "BANNED", "starting_after": banned["next_cursor"]}
    ).json()
    assert [c["email"] for c in rest["data"]] == ["u5@x.tw"]
    assert rest["has_more"] is False
    active = sandbox_api.get("/customers", params={"status": "ACTIVE"}).json()["data"]
    assert len(active) == 6
    assert {c["status"] for c in active} == {"ACTIVE"}
    assert_error(sandbox_api.get("/customers?status=active"), 400, "invalid_request")


# Updating.


@pytest.mark.parametrize(
    "path",
    [
        "/customers/external/user_123",
        "/customers/user_123?by_external_id=true",
        "{id}",
    ],
)
def test_patch_name_by_each_route(
    sandbox_api: httpx.Client, customer: dict[str, Any], path: str
) -> None:
    path = path.format(id=f"/customers/{customer['id']}")
    time.sleep(0.002)
    response = sandbox_api.patch(path, json={"name": "王大明"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == BASE_FIELDS
    assert body["name"] == "王大明"
    assert body["id"] == customer["id"]
    assert body["created_at"] == customer["created_at"]
    assert body["updated_at"] > customer["updated_at"]
    assert sandbox_api.get(f"/customers/{customer['id']}").json()["name"] == "王大明"


def test_every_successful_patch_moves_updated_at(
    sandbox_api: httpx.Client, customer: dict[str, Any]
) -> None:
    stamps = [customer["updated_at"]]
    for body in [{"name": "甲"}, {"name": "甲"}, {}]:
        stamps.append(
            sandbox_api.patch("/customers/external/user_123", json=body).json()["updated_at"]
        )
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 4


@pytest.mark.parametrize(
    ("name", "ok"),
    [("名" * 255, True), ("名" * 256, False), ("a", True), ("", False), ("😀" * 255, True)],
)
def test_name_length_is_1_to_255_characters(
    sandbox_api: httpx.Client, customer: dict[str, Any], name: str, ok: bool
) -> None:
    response = sandbox_api.patch("/customers/external/user_123", json={"name": name})
    if ok:
        assert response.status_code == 200
        assert response.json()["name"] == name
    else:
        assert_error(response, 400, "invalid_request")
        assert sandbox_api.get("/customers/external/user_123").json()["name"] == "王小明"


def test_email_cannot_be_changed(sandbox_api: httpx.Client, customer: dict[str, Any]) -> None:
    response = sandbox_api.patch(
        "/customers/external/user_123", json={"email": "new@x.tw", "name": "新"}
    )
    assert "email" in assert_error(response, 400, "invalid_request")["message"]
    body = sandbox_api.get("/customers/external/user_123").json()
    assert (body["email"], body["name"]) == ("wang@example.tw", "王小明")


@pytest.mark.parametrize(
    "content",
    [
        *[b"not json", b"", b"[]", b"null", b'"name"', b'{"name": 1}', b'{"nick": "x"}'],
        *[b'{"name": null}', b'{"external_id": 42}', b'{"metadata": [1]}', b"\xff\xfe"],
    ],
)
def test_malformed_patch_bodies_are_400(
    sandbox_api: httpx.Client, customer: dict[str, Any], content: bytes
) -> None:
    response = sandbox_api.patch(
        "/customers/external/user_123",
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "invalid_request")


def test_external_id_rebind_unbind_and_reuse(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, customer: dict[str, Any]
) -> None:
    moved = sandbox_api.patch("/customers/external/user_123", json={"external_id": "new_user_456"})
    assert moved.status_code == 200
    assert moved.json()["external_id"] == "new_user_456"
    assert_error(sandbox_api.get("/customers/external/user_123"), 404, "resource_not_found")
    assert sandbox_api.get("/customers/external/new_user_456").json()["id"] == customer["id"]

    unbound = sandbox_api.patch("/customers/external/new_user_456", json={"external_id": None})
    assert unbound.json()["external_id"] is None
    assert_error(sandbox_api.get("/customers/external/new_user_456"), 404, "resource_not_found")

    other = sandbox.control.create_customer("other@x.tw", external_id="new_user_456")
    assert other["external_id"] == "new_user_456"


def test_external_id_used_by_another_customer_is_409(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, customer: dict[str, Any]
) -> None:
    sandbox.control.create_customer("b@x.tw", external_id="user_b")
    response = sandbox_api.patch(
        "/customers/external/user_123", json={"external_id": "user_b", "name": "不應套用"}
    )
    assert_error(response, 409, "conflict")
    assert sandbox.control.customer(customer["id"]) == customer
    same = sandbox_api.patch("/customers/external/user_123", json={"external_id": "user_123"})
    assert same.status_code == 200


@pytest.mark.parametrize("external_id", ["has space", "", "用戶_1", "a/b", "a.b", "x@y"])
def test_malformed_external_id_is_422(
    sandbox_api: httpx.Client, customer: dict[str, Any], external_id: str
) -> None:
    response = sandbox_api.patch("/customers/external/user_123", json={"external_id": external_id})
    assert_error(response, 422, "validation_error")
    assert sandbox_api.get("/customers/external/user_123").status_code == 200


def test_metadata_is_replaced_whole(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, customer: dict[str, Any]
) -> None:
    first = sandbox_api.patch("/customers/external/user_123", json={"metadata": {"a": 1, "b": 2}})
    assert first.status_code == 200
    assert sandbox.control.customer(customer["id"])["metadata"] == {"a": 1, "b": 2}  # type: ignore[index]
    second = sandbox_api.patch("/customers/external/user_123", json={"metadata": {"c": "三"}})
    assert second.json()["name"] == "王小明"
    assert sandbox.control.customer(customer["id"])["metadata"] == {"c": "三"}  # type: ignore[index]


# Metadata is write-only, as in the doc.


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/customers"),
        ("GET", "/customers?email=wang@example.tw"),
        ("GET", "{id}"),
        ("GET", "/customers/user_123?by_external_id=true"),
        ("GET", "/customers/external/user_123"),
        ("PATCH", "{id}"),
        ("PATCH", "/customers/user_123?by_external_id=true"),
        ("PATCH", "/customers/external/user_123"),
    ],
)
def test_no_answer_carries_metadata(
    sandbox_api: httpx.Client, customer: dict[str, Any], method: str, path: str
) -> None:
    path = path.format(id=f"/customers/{customer['id']}")
    body = {"metadata": {"plan": "team"}} if method == "PATCH" else None
    response = sandbox_api.request(method, path, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    customers = answer["data"] if answer["object"] == "list" else [answer]
    assert [c["id"] for c in customers] == [customer["id"]]
    assert all("metadata" not in c for c in customers)
    assert "metadata" not in response.text


def test_echo_metadata_returns_it_everywhere() -> None:
    server = start_in_thread(create_app(echo_metadata=True))
    try:
        with (
            SandboxControl(server.url) as control,
            httpx.Client(
                base_url=server.url + "/v1",
                headers={"Authorization": f"Bearer {DEFAULT_SECRET_KEY}"},
            ) as api,
        ):
            control.create_customer("a@x.tw", external_id="u1", metadata={"plan": "pro"})
            assert api.get("/customers").json()["data"][0]["metadata"] == {"plan": "pro"}
            assert api.get("/customers/external/u1").json()["metadata"] == {"plan": "pro"}
            patched = api.patch("/customers/external/u1", json={"metadata": {"k": 1}})
            assert patched.json()["metadata"] == {"k": 1}
    finally:
        server.stop()


# Customers without an external id, as Recur Checkout creates them.


def test_checkout_customers_are_found_by_email_only(
    sandbox: SandboxHandle, sandbox_api: httpx.Client
) -> None:
    sandbox.control.seed(2)
    seeded = sandbox.control.seed(3, prefix="checkout_", bound=False)
    assert seeded["created"] == 3
    listed = sandbox_api.get("/customers").json()["data"]
    assert [c["external_id"] for c in listed] == ["user_1", "user_2", None, None, None]
    found = sandbox_api.get("/customers", params={"email": "checkout_2@example.com"}).json()
    (item,) = found["data"]
    assert (item["external_id"], item["name"]) == (None, "測試用戶 2")
    assert sandbox_api.get(f"/customers/{item['id']}").json()["external_id"] is None
    # Bound by id, as the sync does once it found the customer by email.
    bound = sandbox_api.patch(f"/customers/{item['id']}", json={"external_id": "user_9"})
    assert bound.json()["external_id"] == "user_9"
    assert sandbox_api.get("/customers/external/user_9").json()["id"] == item["id"]


# Everything else under /v1.


def test_unknown_route_is_404_and_wrong_method_405(sandbox_api: httpx.Client) -> None:
    assert_error(sandbox_api.get("/invoices"), 404, "resource_not_found")
    listing = sandbox_api.post("/customers", json={})
    assert_error(listing, 405, "invalid_request")
    assert listing.headers["allow"] == "GET"
    for path in ["/customers/external/x", "/customers/cus_x", "/customers/x?by_external_id=true"]:
        one = sandbox_api.put(path, json={"name": "x"})
        assert_error(one, 405, "invalid_request")
        assert one.headers["allow"] == "GET, PATCH"


@pytest.mark.parametrize("raw", ["%0A", "%0D%0Ax", "%00", "%1F%7F", "a%0Ab/c"])
def test_control_characters_in_a_path_get_the_json_envelope(
    sandbox: SandboxHandle, sandbox_api: httpx.Client, raw: str
) -> None:
    for prefix in ["/customers/", "/customers/external/", "/"]:
        response = sandbox_api.get(prefix + raw)
        assert_error(response, 404, "resource_not_found")
        assert sandbox.control.requests()[-1]["status"] == 404  # a /v1 request, logged
    assert_error(
        sandbox_api.get("/customers/" + raw, headers={"Authorization": ""}), 401, "unauthorized"
    )


def test_empty_cursor_is_the_first_page(sandbox: SandboxHandle, sandbox_api: httpx.Client) -> None:
    sandbox.control.seed(3)
    first = sandbox_api.get("/customers", params={"starting_after": "", "limit": 2}).json()
    assert [c["external_id"] for c in first["data"]] == ["user_1", "user_2"]


def test_request_id_names_the_log_entry(sandbox: SandboxHandle, sandbox_api: httpx.Client) -> None:
    sandbox_api.get("/customers")
    response = sandbox_api.get("/customers/external/nobody")
    seq = int(response.headers["x-request-id"].removeprefix("req_"))
    (entry,) = sandbox.control.requests(since=seq - 1)
    assert entry["path"] == "/v1/customers/external/nobody"
    assert entry["status"] == 404

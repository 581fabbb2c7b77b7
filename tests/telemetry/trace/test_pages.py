"""The user page, the search box and the charts on `/admin`, over real HTTP (the browser test
drives the same pages in Chromium)."""

from __future__ import annotations

import re

import httpx

from sync_worker.runtime import Runtime
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import wait_for
from tests.operators.conftest import accept, sync_due
from tests.operators.test_dashboard import log_in


def test_search_goes_to_the_user_page_once_logged_in(web: httpx.Client) -> None:
    anonymous = web.get("/admin/users", params={"user_id": "user_x"})
    assert anonymous.headers["location"] == "/admin/login"
    assert web.get("/admin/users/user_x").headers["location"] == "/admin/login"
    log_in(web)
    found = web.get("/admin/users", params={"user_id": " user/x "})
    assert found.status_code == 303
    assert found.headers["location"] == "/admin/users/user%2Fx"
    assert web.get("/admin/users", params={"user_id": ""}).headers["location"] == "/admin"


def test_user_page_tells_a_503_then_200_story_beside_recur(
    runtime: Runtime, web: httpx.Client, sandbox: SandboxHandle
) -> None:
    sandbox.control.create_customer("p@x.tw", external_id="user_p", name="old")
    sandbox.control.set_faults(scripts={"user_p": [503, 200]})
    accept(runtime, "user_p", name="新名字")
    sync_due(runtime)
    wait_for(lambda: [o for o in sync_due(runtime) if o.result == "applied"])
    log_in(web)

    page = web.get("/admin/users/user_p")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "<script" not in page.text
    kinds = re.findall(r"<tr data-kind='(\w+)'>", page.text)
    assert kinds == ["attempt", "attempt", "event"]
    assert "PATCH name -&gt; 200: applied" in page.text
    assert "-&gt; 503 service_unavailable" in page.text
    name_row = re.search(r"<tr data-field='name'>.*?</tr>", page.text)
    assert name_row is not None
    assert "&quot;新名字&quot;" in name_row.group(0)
    assert "<td class='same'>same</td>" in name_row.group(0)
    # The 503 may have landed late: the change is applied, and Recur is read back later.
    pending = re.search(r"<p id='pending'>(.*?)</p>", page.text)
    assert pending is not None
    assert pending.group(1).startswith("Sent; a read-back of Recur is due")


def test_user_page_escapes_and_says_when_nothing_is_known(web: httpx.Client) -> None:
    log_in(web)
    page = web.get("/admin/users/%3Cimg%20src%3Dx%3E")
    assert page.status_code == 200
    assert "<img src=x>" not in page.text
    assert "&lt;img src=x&gt;" in page.text
    assert "id='unknown'" in page.text
    assert "Recur has no customer" in page.text


def test_dashboard_draws_charts_and_reloads_itself_keeping_the_filters(
    runtime: Runtime, web: httpx.Client
) -> None:
    runtime.stats.incr("events_accepted_total", 3)
    runtime.stats.incr("patches_total", status_class="5xx")
    runtime.stats.flush()
    log_in(web)

    page = web.get("/admin", params={"reason": "conflict", "minutes": 360})
    assert page.status_code == 200
    assert "<script" not in page.text
    refresh = "<meta http-equiv='refresh' content='10; url=/admin?minutes=360&amp;reason=conflict'>"
    assert refresh in page.text
    for chart in ("events", "patches", "dead-letters", "backlog", "latency", "breaker"):
        assert f"id='chart-{chart}'" in page.text
    assert "data-series='events_accepted' data-points='360'" in page.text
    polyline = re.search(r"<polyline data-series='events_accepted'[^>]*points='([^']*)'", page.text)
    assert polyline is not None
    assert len(polyline.group(1).split()) == 360
    assert "<b>3</b>" in page.text  # the latest minute's value in the legend
    # No gauge was sampled: the backlog draws no line rather than zeros.
    assert "data-series='due_now' data-points='0'" in page.text
    assert "<polyline data-series='due_now'" not in page.text

    paused = web.get("/admin", params={"refresh": "off"})
    assert "http-equiv='refresh'" not in paused.text
    assert "minutes=60&amp;refresh=off" in paused.text  # the range links keep it paused

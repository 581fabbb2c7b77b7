"""Thousands of dead letters: paged in the admin API and on `/admin`, filtered by user; a dead
letter's page shows its triage (what `dlq show` prints)."""

from __future__ import annotations

import re

import httpx
import pytest

from sync_worker import redis_keys as keys
from sync_worker.deadletters.dlq import creation_record, failure_record
from sync_worker.pipeline.records import FieldState
from sync_worker.runtime import Runtime
from tests.fixtures.stack import ADMIN_TOKEN
from tests.operators.conftest import make_dead_letter
from tests.operators.test_dashboard import log_in

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ENTRIES = 1200


def write_entries(runtime: Runtime, count: int) -> list[str]:
    """`count` dead letters written as the dead-letter script writes them; newest first.
    Every third belongs to user_a."""
    pipe = runtime.redis.pipeline(transaction=False)
    ids = []
    for n in range(count):
        entry_id = f"dl_{n:06d}"
        user = "user_a" if n % 3 == 0 else f"user_{n}"
        record = failure_record(
            reason="not_found",
            http_status=404,
            error_code="resource_not_found",
            error_message="no such customer",
            request={"name": str(n)},
            fields={"name": FieldState(str(n), n)},
            event_ids=[f"evt_{n}"],
            attempts=1,
            now=1_000_000 + n,
        )
        record |= creation_record(entry_id=entry_id, user_id=user, first_failure=1_000_000 + n)
        pipe.hset(keys.dead_letter(entry_id), mapping=record)
        pipe.zadd(keys.DEAD_LETTERS, {entry_id: 1_000_000 + n})
        ids.append(entry_id)
    pipe.execute()
    return ids[::-1]


@pytest.mark.parametrize("user_id", [None, "user_a"])
def test_the_api_pages_through_every_entry_once(
    runtime: Runtime, web: httpx.Client, user_id: str | None
) -> None:
    newest_first = write_entries(runtime, ENTRIES)
    expected = [i for i in newest_first if user_id is None or int(i[3:]) % 3 == 0]
    seen: list[str] = []
    cursor: int | None = 0
    pages = 0
    while cursor is not None:
        params: dict[str, str | int] = {"limit": 250, "cursor": cursor}
        if user_id:
            params["user_id"] = user_id
        answer = web.get("/admin/api/dead-letters", params=params, headers=AUTH).json()
        assert answer["count"] == len(answer["data"]) <= 250
        seen += [entry["id"] for entry in answer["data"]]
        cursor = answer["next_cursor"]
        pages += 1
    assert seen == expected
    assert pages == -(-len(expected) // 250)


def test_the_dashboard_pages_and_filters_by_user(runtime: Runtime, web: httpx.Client) -> None:
    newest_first = write_entries(runtime, 450)
    log_in(web)

    first = web.get("/admin")
    rows = re.findall(r"<tr data-id='([^']+)'>", first.text)
    assert rows == newest_first[:200]
    link = re.search(r"<a href='([^']+)' id='next-page'>", first.text)
    assert link is not None
    second = web.get(link.group(1).replace("&amp;", "&"))
    assert re.findall(r"<tr data-id='([^']+)'>", second.text) == newest_first[200:400]
    assert "id='first-page'" in second.text

    only_a = web.get("/admin", params={"user_id": "user_a"})
    ids = re.findall(r"<tr data-id='([^']+)'>", only_a.text)
    assert ids == [i for i in newest_first if int(i[3:]) % 3 == 0]
    assert "id='next-page'" not in only_a.text
    assert "value='user_a'" in only_a.text


def test_a_dead_letters_page_shows_its_triage(runtime: Runtime, web: httpx.Client) -> None:
    entry_id = make_dead_letter(runtime, "user_gone", name="新名字")
    log_in(web)
    page = web.get(f"/admin/dead-letters/{entry_id}")
    assert page.status_code == 200
    row = re.search(r"<tr data-field='name'>.*?</tr>", page.text)
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row.group(0))
    assert cells[1] == "&quot;新名字&quot;"
    assert "(never applied)" in cells[2]
    assert "(no customer)" in cells[3]
    assert "Recur has no customer with external_id &#x27;user_gone&#x27;" in page.text
    assert "href='/admin/users/user_gone'" in page.text

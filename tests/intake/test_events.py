"""Inbound events: both forms, the rebind event, and an error naming each bad field."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_worker.intake.events import (
    EXTERNAL_ID_CHANGED,
    USER_UPDATED,
    EventValidationError,
    UserEvent,
    parse_event,
)

WEBHOOK_ID = "msg_hdr_1"
WEBHOOK_TS = 1_795_514_000
TS = "2026-11-24T10:00:00Z"
TS_MS = 1_795_514_400_000
NOW = TS_MS / 1000 + 60  # the server's clock in these tests: a minute after the event
TOLERANCE = 300
USER_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def parse(payload: Any) -> UserEvent:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_event(
        body,
        webhook_id=WEBHOOK_ID,
        webhook_timestamp=WEBHOOK_TS,
        now=NOW,
        max_future_seconds=TOLERANCE,
    )


def envelope(data: Any, **overrides: Any) -> dict[str, Any]:
    return {"id": "evt_01", "type": USER_UPDATED, "timestamp": TS, "data": data, **overrides}


def user(**fields: Any) -> dict[str, Any]:
    return {"user_id": "user_123", **fields}


def errors_of(payload: Any) -> list[dict[str, str]]:
    with pytest.raises(EventValidationError) as caught:
        parse(payload)
    errors = caught.value.errors
    assert errors
    assert str(caught.value) == "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return errors


def fields_of(payload: Any) -> set[str]:
    return {error["field"] for error in errors_of(payload)}


# What is accepted.


def test_the_envelope() -> None:
    event = parse(
        envelope(user(name="王大明", email="a@b.tw", metadata={"plan": "pro"}, extra="ignored"))
    )
    assert event == UserEvent(
        event_id="evt_01",
        type=USER_UPDATED,
        user_id="user_123",
        ts_ms=TS_MS,
        fields={"name": "王大明", "metadata": {"plan": "pro"}, "email": "a@b.tw"},
    )


def test_the_bare_form_takes_id_and_time_from_the_headers() -> None:
    event = parse({"userId": "user_123", "name": "王大明", "email": "a@b.tw"})
    assert event == UserEvent(
        event_id=WEBHOOK_ID,
        type=USER_UPDATED,
        user_id="user_123",
        ts_ms=WEBHOOK_TS * 1000,
        fields={"name": "王大明", "email": "a@b.tw"},
    )


def test_metadata_alone_is_enough() -> None:
    assert parse(envelope(user(metadata={}))).fields == {"metadata": {}}


def test_the_rebind_event() -> None:
    event = parse(envelope({"user_id": "old_1", "new_user_id": "new_1"}, type=EXTERNAL_ID_CHANGED))
    assert event == UserEvent(
        event_id="evt_01",
        type=EXTERNAL_ID_CHANGED,
        user_id="old_1",
        ts_ms=TS_MS,
        fields={"external_id": "new_1"},
    )


def test_the_unbind_event() -> None:
    event = parse(envelope({"user_id": "old_1", "new_user_id": None}, type=EXTERNAL_ID_CHANGED))
    assert event.user_id == "old_1"
    assert event.fields == {"external_id": None}


def test_a_rebind_without_new_user_id_is_refused() -> None:
    assert fields_of(envelope({"user_id": "old_1"}, type=EXTERNAL_ID_CHANGED)) == {
        "data.new_user_id"
    }


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-11-24T10:00:00Z",
        "2026-11-24T10:00:00+00:00",
        "2026-11-24T18:00:00+08:00",
        "2026-11-24T05:00:00-05:00",
        1_795_514_400,
    ],
)
def test_timestamps_name_one_instant(timestamp: str | int) -> None:
    assert parse(envelope(user(name="x"), timestamp=timestamp)).ts_ms == TS_MS


@pytest.mark.parametrize("timestamp", ["2026-11-24T10:00:00", "2026-11-24 10:00:00.5"])
def test_a_timestamp_without_a_time_zone_is_refused(timestamp: str) -> None:
    errors = errors_of(envelope(user(name="x"), timestamp=timestamp))
    assert errors == [
        {"field": "timestamp", "message": "must include a time zone, e.g. Z or +08:00"}
    ]


@pytest.mark.parametrize(
    ("ahead", "accepted"),
    [(TOLERANCE - 60, True), (TOLERANCE, True), (TOLERANCE + 1, False), (10**8, False)],
)
def test_a_timestamp_ahead_of_the_clock_by_more_than_the_tolerance_is_refused(
    ahead: int, accepted: bool
) -> None:
    moment = datetime.fromtimestamp(NOW + ahead, tz=UTC).isoformat()
    for payload in (
        envelope(user(name="x"), timestamp=moment),
        envelope({"user_id": "old_1", "new_user_id": "new_1"}, type=EXTERNAL_ID_CHANGED),
    ):
        payload["timestamp"] = moment
        if accepted:
            assert parse(payload).ts_ms == int((NOW + ahead) * 1000)
        else:
            assert fields_of(payload) == {"timestamp"}


def test_the_year_2099_is_refused() -> None:
    assert fields_of(envelope(user(name="x"), timestamp="2099-01-01T00:00:00Z")) == {"timestamp"}


@pytest.mark.parametrize(
    "number", ["1" * 5000, "-" + "9" * 4301, "1e400", "-1e400", "1" * 400 + ".0"]
)
def test_a_number_too_large_to_represent_is_a_validation_error(number: str) -> None:
    for body in (
        b'{"userId": "user_1", "name": "x", "metadata": {"n": %s}}' % number.encode(),
        json.dumps(envelope(user(name="x", metadata={"n": 0})))
        .replace('"n": 0', f'"n": {number}')
        .encode(),
    ):
        assert errors_of(body) == [
            {"field": "body", "message": "holds a number too large to represent"}
        ]


def test_timestamps_keep_milliseconds() -> None:
    event = parse(envelope(user(name="x"), timestamp="2026-11-24T10:00:00.123Z"))
    assert event.ts_ms == TS_MS + 123


def test_name_limits_count_utf16_units() -> None:
    assert parse(envelope(user(name="王" * 255))).fields["name"] == "王" * 255
    assert parse(envelope(user(name="😀" * 127 + "a"))).fields["name"] == "😀" * 127 + "a"
    assert fields_of(envelope(user(name="王" * 256))) == {"data.name"}
    # 128 emoji are 128 code points but 256 UTF-16 units, as Recur (JavaScript) counts them.
    errors = errors_of(envelope(user(name="😀" * 128)))
    assert errors == [{"field": "data.name", "message": "must be at most 255 characters"}]


def test_inner_spaces_are_kept() -> None:
    assert parse(envelope(user(name="Ada  Lovelace"))).fields["name"] == "Ada  Lovelace"


# What is refused, each error naming its field.


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        ("a\x00b", "control characters"),
        ("a\nb", "control characters"),
        ("a\tb", "control characters"),
        ("a\x7fb", "control characters"),
        ("x" * 256, "at most 255"),
    ],
    ids=["empty", "nul", "newline", "tab", "del", "256"],
)
def test_bad_names(name: str, message: str) -> None:
    (error,) = errors_of(envelope(user(name=name)))
    assert error["field"] == "data.name"
    assert message in error["message"]
    (error,) = errors_of({"userId": "user_123", "name": name})
    assert error["field"] == "name"


BAD_USER_IDS = [
    "../x",
    "..",
    "a/b",
    "%2F",
    "user?x=1",
    "user#1",
    "user 1",
    " user",
    "user\n",
    "üser",
    "用戶",
    "user.1",
    "",
    "x" * 256,
]


@pytest.mark.parametrize("user_id", BAD_USER_IDS)
def test_bad_user_ids(user_id: str) -> None:
    assert fields_of(envelope({"user_id": user_id, "name": "x"})) == {"data.user_id"}
    assert fields_of({"userId": user_id, "name": "x"}) == {"userId"}
    rebind = {"user_id": "ok_1", "new_user_id": user_id}
    assert fields_of(envelope(rebind, type=EXTERNAL_ID_CHANGED)) == {"data.new_user_id"}
    rebind = {"user_id": user_id, "new_user_id": "ok_1"}
    assert fields_of(envelope(rebind, type=EXTERNAL_ID_CHANGED)) == {"data.user_id"}


def test_user_id_limits() -> None:
    assert parse(envelope({"user_id": "A-z_09" + "x" * 249, "name": "n"})).user_id.startswith("A")


def test_email_alone_is_not_syncable() -> None:
    (error,) = errors_of(envelope(user(email="a@b.tw")))
    assert error["field"] == "data"
    assert "name" in error["message"]
    assert "metadata" in error["message"]
    (error,) = errors_of({"userId": "user_123", "email": "a@b.tw"})
    assert error["field"] == "body"
    assert fields_of(envelope(user())) == {"data"}


@pytest.mark.parametrize("email", ["no-at-sign", "a@b@c", "a\n@b.tw", "x" * 321 + "@b.tw"])
def test_bad_emails(email: str) -> None:
    assert fields_of(envelope(user(name="x", email=email))) == {"data.email"}


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def test_metadata_depth() -> None:
    assert parse(envelope(user(metadata=nested(5)))).fields["metadata"] == nested(5)
    assert fields_of(envelope(user(metadata=nested(6)))) == {"data.metadata"}
    assert fields_of(envelope(user(metadata={"a": [[[[[1]]]]]}))) == {"data.metadata"}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (envelope(user(name=5)), "data.name"),
        (envelope(user(name=["x"])), "data.name"),
        (envelope(user(name=None, metadata=[1])), "data.metadata"),
        (envelope(user(metadata="plan=pro")), "data.metadata"),
        (envelope(user(name="x", email=1)), "data.email"),
        (envelope({"user_id": 123, "name": "x"}), "data.user_id"),
        (envelope({"name": "x"}), "data.user_id"),
        (envelope(["user_123"]), "data"),
        (envelope(None), "data"),
        (envelope(user(name="x"), id=7), "id"),
        (envelope(user(name="x"), id=""), "id"),
        (envelope(user(name="x"), id="evt 01"), "id"),
        (envelope(user(name="x"), id="évt"), "id"),
        (envelope(user(name="x"), type="user.deleted"), "type"),
        (envelope(user(name="x"), timestamp="yesterday"), "timestamp"),
        (envelope(user(name="x"), timestamp=None), "timestamp"),
        ({"userId": 5, "name": "x"}, "userId"),
        ({"name": "x"}, "userId"),
    ],
)
def test_wrong_types_and_missing_fields(payload: dict[str, Any], field: str) -> None:
    assert field in fields_of(payload)


def test_missing_type_is_named() -> None:
    payload = envelope(user(name="x"))
    del payload["type"]
    assert fields_of(payload) == {"type"}


def test_missing_envelope_fields_are_all_named() -> None:
    assert fields_of({"data": user(name="x")}) == {"id", "type", "timestamp"}


def test_a_rebind_to_the_same_id() -> None:
    rebind = {"user_id": "same", "new_user_id": "same"}
    assert fields_of(envelope(rebind, type=EXTERNAL_ID_CHANGED)) == {"data.new_user_id"}


@pytest.mark.parametrize("value", [[1, 2], "user_123", 42, None, True, []])
def test_json_that_is_not_an_object(value: Any) -> None:
    assert errors_of(value) == [{"field": "body", "message": "must be a JSON object"}]


@pytest.mark.parametrize(
    "body", [b"", b"{", b"not json", b"\xff\xfe", b'{"userId": "u", "metadata": {"a": NaN}}']
)
def test_a_body_that_is_not_json(body: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):  # JSONDecodeError or UnicodeDecodeError: a 400
        parse(body)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_numbers_are_not_json(constant: str) -> None:
    body = f'{{"userId": "u", "metadata": {{"score": {constant}}}}}'.encode()
    with pytest.raises(json.JSONDecodeError):
        parse(body)


def test_an_unpaired_surrogate_is_refused() -> None:
    # Valid JSON syntax, but no UTF-8 text: the PATCH could never be sent.
    body = b'{"userId": "u", "metadata": {"note": "\\ud800"}}'
    assert errors_of(body) == [
        {"field": "body", "message": "must not contain unpaired UTF-16 surrogates"}
    ]
    paired = b'{"userId": "u", "metadata": {"note": "\\ud83d\\ude00"}}'
    assert parse(paired).fields["metadata"] == {"note": "😀"}


# Property: arbitrary JSON never breaks the parser, and what it accepts can be sent.

# Any text, unpaired surrogates included (json.dumps escapes them as \udxxx).
surrogates = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
any_text = st.text(surrogates | st.characters(), max_size=20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=20,
)
user_ids = st.one_of(st.from_regex(USER_ID, fullmatch=True), st.text(max_size=10), json_values)
names = st.one_of(st.text(max_size=300), json_values)
user_data = st.fixed_dictionaries(
    {},
    optional={
        "user_id": user_ids,
        "new_user_id": user_ids,
        "name": names,
        "email": st.one_of(st.emails(), json_values),
        "metadata": json_values,
    },
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.just("evt_1"), json_values),
        "type": st.one_of(st.sampled_from([USER_UPDATED, EXTERNAL_ID_CHANGED]), json_values),
        "timestamp": st.one_of(st.datetimes().map(lambda moment: moment.isoformat()), json_values),
        "data": st.one_of(user_data, json_values),
    },
)
bare = st.fixed_dictionaries(
    {},
    optional={"userId": user_ids, "name": names, "email": json_values, "metadata": json_values},
)


mostly_valid = st.fixed_dictionaries(
    {"userId": st.from_regex(USER_ID, fullmatch=True)},
    optional={"name": any_text, "metadata": st.dictionaries(any_text, json_values, max_size=4)},
)


@settings(max_examples=400)
@given(st.one_of(json_values, envelopes, bare, mostly_valid))
def test_arbitrary_json_is_accepted_or_refused_cleanly(value: Any) -> None:
    refused: list[dict[str, str]] | None = None
    try:
        event = parse(value)
    except EventValidationError as error:
        refused = error.errors
    if refused is not None:
        assert refused
        assert all(set(item) == {"field", "message"} for item in refused)
        return
    assert USER_ID.match(event.user_id)
    assert event.type in {USER_UPDATED, EXTERNAL_ID_CHANGED}
    assert set(event.fields) <= {"name", "metadata", "email", "external_id"}
    assert set(event.fields) & {"name", "metadata", "external_id"}
    json.dumps(event.fields, allow_nan=False, ensure_ascii=False).encode()
    if "name" in event.fields:
        assert 1 <= len(event.fields["name"].encode("utf-16-le")) // 2 <= 255

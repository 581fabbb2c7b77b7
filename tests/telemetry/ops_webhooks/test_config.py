"""OPS_WEBHOOK_* settings fail at start-up with one line naming the variable."""

from __future__ import annotations

import pytest

from sync_worker.settings import ConfigError, load_settings
from tests.telemetry.ops_webhooks.conftest import OPS_SECRET


@pytest.mark.parametrize(
    ("overrides", "starts"),
    [
        ({"ops_webhook_url": "https://ops.example.com/hooks"}, "OPS_WEBHOOK_SECRET: not set"),
        (
            {"ops_webhook_url": "https://ops.example.com/hooks", "ops_webhook_secret": "whsec_%%"},
            "OPS_WEBHOOK_SECRET: must be whsec_ followed by base64",
        ),
        ({"ops_webhook_url": "not a url", "ops_webhook_secret": OPS_SECRET}, "OPS_WEBHOOK_URL: "),
        (
            {"ops_webhook_backoff_base_seconds": 900, "ops_webhook_backoff_max_seconds": 60},
            "OPS_WEBHOOK_BACKOFF_BASE_SECONDS must not exceed",
        ),
    ],
)
def test_a_bad_ops_webhook_setting_is_one_line(overrides: dict[str, object], starts: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(**overrides)
    assert str(error.value).startswith(starts)
    assert "\n" not in str(error.value)


def test_the_feature_is_off_unless_a_url_is_set() -> None:
    assert load_settings().ops_webhook_url is None
    settings = load_settings(
        ops_webhook_url="https://ops.example.com/h", ops_webhook_secret=OPS_SECRET
    )
    assert str(settings.ops_webhook_url) == "https://ops.example.com/h"

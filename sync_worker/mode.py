"""Test and live never mix: the Redis state belongs to the mode of the first key that used it.

The first process that runs with a Recur key records its mode (`test` for `sk_test_`, `live` for
`sk_live_`) in Redis. A process whose key has the other mode refuses to start: its ledger,
pending changes and dead letters were written against the other environment's customers, and
comparing or applying them there would be wrong. Keep the two apart with a separate Redis (or
database number) per mode.
"""

from __future__ import annotations

import redis

from sync_worker import redis_keys as keys
from sync_worker.settings import ConfigError, Settings


def claim_mode(client: redis.Redis, settings: Settings) -> str | None:
    """Record the key's mode as the Redis state's if none is recorded; return it.

    None when no key is set (nothing will call Recur). `ConfigError` naming `RECUR_SECRET_KEY`
    when the state was written in the other mode.
    """
    if settings.recur_secret_key is None:
        return None
    mode = settings.mode_label
    client.set(keys.MODE, mode, nx=True)
    raw = client.get(keys.MODE)
    stored = raw.decode() if isinstance(raw, bytes) else str(raw)
    if stored != mode:
        raise ConfigError(
            f"RECUR_SECRET_KEY: is a {mode} key, but the state in this Redis was written with a "
            f"{stored} key; use a {stored} key, or a separate Redis (or database) for {mode}"
        )
    return mode

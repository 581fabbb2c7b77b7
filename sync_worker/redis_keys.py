"""Every Redis key recur-sync uses, each with what it holds.

All keys share one prefix so an operator can see ours at a glance (`SCAN MATCH rs:*`).
Celery's own keys (the `sync` and `control` queues, `unacked`, `_kombu.*`) are not listed:
kombu owns them.
"""

from __future__ import annotations

PREFIX = "rs:"

# Webhook intake.
EVENT_SEEN = PREFIX + "event:"
"""event:{event_id} -> user id; SET NX marks an accepted event id (dedup), expires after the TTL."""

REPLICATION_BARRIER = PREFIX + "replication-barrier"
"""counter written just before a WAIT, so the WAIT covers every write the primary had before it."""

WRITE_PROBE = PREFIX + "write-probe"
"""never exists: an empty SETRANGE of it asks Redis whether it takes writes (write_refusal.py)."""

# Operator routes.
AUTH_FAILURES = PREFIX + "auth-failures:"
"""auth-failures:{client address} -> failed admin logins in the current minute (expires)."""

# The pending store: work accepted but not yet applied. See pending.py for the hash layout.
PENDING = PREFIX + "pending:"
"""pending:{user_id} -> hash of the merged desired fields, version, event ids, attempts."""

DUE = PREFIX + "due"
"""zset user_id -> unix time at which its pending change should be sent."""

INFLIGHT = PREFIX + "inflight"
"""zset user_id -> unix time at which the claim of a worker on it lapses (its lease)."""

LEASE = PREFIX + "lease:"
"""lease:{user_id} -> token of the claim that may send for that user now."""

FENCE = PREFIX + "fence:"
"""fence:{user_id} -> hash: `until` (unix time) a PATCH that ended ambiguously (timeout, reset, 5xx)
may still land at Recur, and `m:{field}` what it carried; nothing that would change one of those
fields goes out before then. Expires then."""

REBOUND = PREFIX + "rebound:"
"""rebound:{user_id} -> the external id its customer was moved to by a rebind, so that replaying a
dead letter written under the old id reaches the customer; expires with the dead letters."""

# Applied state (the ledger). See ledger.py for the layout.
LEDGER_BUCKET = PREFIX + "ledger-bucket:"
"""ledger-bucket:{n} -> hash user id -> that user's applied values and event times, packed; a
user's bucket is `ledger(user_id)`, one of LEDGER_BUCKETS (ledger_fn.lua computes the same)."""

LEDGER_BUCKETS = 16384
"""About 61 customers a bucket at a million: each stays under Redis's default
`hash-max-listpack-entries` (512) up to several million (README, Sizing Redis)."""

LEDGER = PREFIX + "ledger:"
"""The layout before the buckets: ledger:{user_id} -> hash of one user's `v:{field}`,
`t:{field}` and `applied_at`; read until `Ledger.migrate` moved it into its bucket."""

LEDGER_INDEX = PREFIX + "ledger-index"
"""The layout before the buckets: the set of user ids with a `ledger:{user_id}` hash; gone once
they are all moved."""

EMAIL_USERS = PREFIX + "email-users"
"""hash email (ASCII-lowercased, `email_field`) -> user id, written by intake and ledger import:
reconciliation finds the user of a customer that has no external id (Checkout made it) by it."""


def email_field(email: str) -> str:
    """An email as EMAIL_USERS keys it: ASCII letters lowercased, as Lua's `string.lower`."""
    return email.encode().lower().decode()


# Dead letters. See dlq.py for the layout.
DEAD_LETTER = PREFIX + "dlq:"
"""dlq:{id} -> hash of one dead letter."""

DEAD_LETTERS = PREFIX + "dlq-index"
"""zset dead letter id -> unix time of its last failure."""

DEAD_LETTER_REPLAYING = PREFIX + "dlq-replaying:"
"""dlq-replaying:{id} -> guard that stops the same entry being replayed twice at once."""

# Flow control shared by every worker and the reconciliation.
PAUSED = PREFIX + "paused"

MODE = PREFIX + "mode"
"""`test` or `live`: the mode of the key the state was written with (mode.py)."""
"""JSON {reason, status, since}: set on 401/403; nothing is claimed while it exists."""

RATE_BUCKET = PREFIX + "rate-bucket"
"""hash {tokens, ts}: the token bucket of calls to Recur."""

COOLDOWN = PREFIX + "cooldown"
"""unix time until which nobody calls Recur (set from a 429's Retry-After); expires by itself."""

BREAKER = PREFIX + "breaker"
"""hash: the circuit breaker's state, cool-down and outage start (see breaker.py)."""

BREAKER_WINDOW = PREFIX + "breaker-window"
"""hash {second}:c / {second}:f -> calls and transient failures in that second (sliding window)."""

BREAKER_PROBE = PREFIX + "breaker-probe"
"""token of the one dispatcher sending the half-open probe; expires if it dies."""

BREAKER_OUTAGES = PREFIX + "breaker-outages"
"""zset "start:end" -> end of each finished outage, so the retry budget can leave them out."""

BREAKER_PROBED = PREFIX + "breaker-probed"
"""hash user id -> probes sent with that user's change this outage; deleted when it closes."""

# Operational webhooks. See ops_webhooks.py for the delivery layout.
OPS_OUTBOX = PREFIX + "ops:outbox"
"""list of JSON event envelopes, newest first, not yet taken for delivery; capped with LTRIM."""

OPS_DUE = PREFIX + "ops:due"
"""zset event id -> unix time of its next delivery attempt (claimed: when that claim lapses)."""

OPS_EVENT = PREFIX + "ops:event:"
"""ops:event:{id} -> hash {body, attempts} of one event being delivered."""

# Counters kept in Redis so every process adds to the same numbers (see metrics.py).
STATS = PREFIX + "stats"
"""hash counter name -> integer."""

# Operator history (see trace.py and history.py).
TRACE = PREFIX + "trace:"
"""trace:{user_id} -> list of what happened to that user, newest first (capped, expires)."""

HISTORY = PREFIX + "history:"
"""history:{minute} -> hash of the counters of that minute (unix time // 60); expires after 25 h."""

# Workers.
WORKER_HEARTBEAT = PREFIX + "worker:"
"""worker:{hostname} -> JSON about a live worker; expires unless refreshed."""

SWEEP_LOCK = PREFIX + "sweep-lock"
"""held by the process that is sweeping now, so sweeps across workers do not overlap."""

# Reconciliation.
RECONCILE_LOCK = PREFIX + "reconcile:lock"
"""token of the running reconciliation; renewed while it runs."""

RECONCILE_CHECKPOINT = PREFIX + "reconcile:checkpoint"
"""hash: cursor after the last finished page and the counts so far, for resuming a crashed run."""

RECONCILE_PROGRESS = PREFIX + "reconcile:progress"
"""JSON progress of the running reconciliation."""

RECONCILE_REPORTS = PREFIX + "reconcile:reports"
"""list of JSON reports, newest first, trimmed to RECONCILE_REPORTS_KEPT."""

RECONCILE_SEEN = PREFIX + "reconcile:seen:"
"""reconcile:seen:{run_id} -> set of the external ids a run has paged past (dropped at its end)."""

RECONCILE_SCHEDULED = PREFIX + "reconcile:scheduled:"
"""reconcile:scheduled:{date} -> set once the nightly run of that date finished (expires)."""


def event_seen(event_id: str) -> str:
    """The dedup marker of one event id."""
    return EVENT_SEEN + event_id


def pending(user_id: str) -> str:
    """The pending hash of one user."""
    return PENDING + user_id


def lease(user_id: str) -> str:
    """The lease token key of one user."""
    return LEASE + user_id


def fence(user_id: str) -> str:
    """The ambiguous-outcome fence of one user."""
    return FENCE + user_id


def rebound(user_id: str) -> str:
    """Where a rebind moved the customer of one external id."""
    return REBOUND + user_id


def ledger(user_id: str) -> str:
    """The bucket hash that holds one user's applied state: a 31-polynomial of its UTF-8 bytes
    mod 2**32, its high half added in, mod LEDGER_BUCKETS (as ledger_fn.lua's `ledger_bucket`)."""
    h = 0
    for byte in user_id.encode():
        h = (h * 31 + byte) % 4294967296
    return LEDGER_BUCKET + str((h + (h >> 16)) % LEDGER_BUCKETS)


def dead_letter(entry_id: str) -> str:
    """The hash of one dead letter."""
    return DEAD_LETTER + entry_id


def dead_letter_replaying(entry_id: str) -> str:
    """The replay guard of one dead letter."""
    return DEAD_LETTER_REPLAYING + entry_id


def reconcile_seen(run_id: str) -> str:
    """The set of external ids one reconciliation run has seen in Recur."""
    return RECONCILE_SEEN + run_id


def reconcile_scheduled(day: str) -> str:
    """The marker of the nightly reconciliation of one date (YYYY-MM-DD)."""
    return RECONCILE_SCHEDULED + day


def ops_event(event_id: str) -> str:
    """The delivery hash of one operational webhook event."""
    return OPS_EVENT + event_id


def trace(user_id: str) -> str:
    """The trace of one user."""
    return TRACE + user_id


def history(minute: int) -> str:
    """The counters of one minute (unix time // 60)."""
    return HISTORY + str(minute)


def worker_heartbeat(hostname: str) -> str:
    """The heartbeat key of one worker."""
    return WORKER_HEARTBEAT + hostname


def auth_failures(client: str) -> str:
    """The failed-login counter of one client address."""
    return AUTH_FAILURES + client

"""What the claims of one batch share while the worker syncs them (sync.py): each claim's
lease as far as this worker renewed it, and the batch's results so far, written by the sender
threads that may run its claims at once (senders.py)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sync_worker.pipeline.breaker import BreakerView
from sync_worker.pipeline.outcomes import SyncOutcome
from sync_worker.pipeline.records import Claim, Snapshot


@dataclass
class Lease:
    """A claim and when its lease lapses, as far as this worker renewed it."""

    claim: Claim
    until: float
    lost: bool = False


@dataclass
class Batch:
    """What the claims of one `sync_claims` call share while they are sent, maybe at once."""

    claims: list[Claim]
    snapshots: list[Snapshot | None]
    leases: list[Lease]
    paused: bool
    """Set once a call got a 401/403: the claims not yet sent are handed back."""
    held: BreakerView | None
    """The open breaker's view, once it opened: the claims not yet sent are held."""
    results: list[SyncOutcome | None] = field(init=False)
    """Per claim, the outcome of one that ended unapplied or was rebound and settled."""
    succeeded: list[tuple[Claim, Snapshot, float] | None] = field(init=False)
    """Per claim, one that was sent (or had nothing to send) and waits for the settle."""
    unsettled: list[Lease] = field(default_factory=list)
    rebound: set[str] = field(default_factory=set)
    answered: int = 0
    """Calls Recur answered, for the breaker."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.claims)
        self.succeeded = [None] * len(self.claims)

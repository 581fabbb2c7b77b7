"""Fetching one page of `GET /v1/customers` for the reconciliation, with retries.

A page that fails with 429, a 5xx or a timeout is tried again, the same cursor, after
`Retry-After` when Recur gives one (a 429 also sets the shared cool-down, so live syncs back off
too), else after a capped, jittered exponential; after `attempts` tries, the error is returned
instead of a page. Waiting stops early when `halt` is set (the run lost its lock).

There is no fetching thread: the reconciliation sends a page to Redis to compare and fetches the
next one while Redis works (`PageScript.compare(..., meanwhile=...)`), so the comparison is off
the critical path without a second Python thread contending for the GIL (measured with
bench/reconcile.py: a fetching thread and a comparing thread handing the GIL back and forth cost
a third more time than this one thread).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential_jitter,
)

from sync_worker.flow import FlowControl, Throttled
from sync_worker.logging import get_logger
from sync_worker.recur.client import RecurClient
from sync_worker.recur.errors import RateLimited, RecurError, is_transient
from sync_worker.recur.models import CustomerListing, ListedCustomer
from sync_worker.recur.retry import retry_after_of
from sync_worker.settings import RECONCILE_PAGE_SIZE

log = get_logger(__name__)

MAX_WAIT_SECONDS = 120.0
_BACKOFF = wait_exponential_jitter(multiplier=0.5, max=30.0, jitter=0.5)


@dataclass(frozen=True, slots=True)
class Page:
    """A page's customers, and where the next page starts (None: this is the last)."""

    customers: list[ListedCustomer]
    next: str | None

    @classmethod
    def of(cls, listing: CustomerListing) -> Page:
        """The page Recur listed; an empty page ends the listing whatever `has_more` says."""
        customers = listing["data"]
        if not listing["has_more"] or not customers:
            return cls(customers, None)
        return cls(customers, listing.get("next_cursor") or customers[-1]["id"])


Fetched = tuple[Page | RecurError | Throttled, int]
"""A page or the error its last try ended in, and how many tries failed before."""


def _retryable(error: BaseException) -> bool:
    return is_transient(error) or isinstance(error, Throttled)


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome is not None else None
    asked = error.wait if isinstance(error, Throttled) else retry_after_of(error)
    if asked is not None:
        return min(asked, MAX_WAIT_SECONDS)
    return float(_BACKOFF(state))


class PageFetcher:
    """Fetches pages by cursor with retries; `fetch` never raises a Recur or throttle error."""

    def __init__(
        self, client: RecurClient, *, flow: FlowControl, attempts: int, halt: threading.Event
    ) -> None:
        self._client = client
        self._flow = flow
        self._attempts = attempts
        self._halt = halt

    def fetch(self, cursor: str | None) -> Fetched:
        """The page from `cursor` (None: the first), or the error its last try ended in."""
        retried = 0

        def before_sleep(state: RetryCallState) -> None:
            nonlocal retried
            retried += 1
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning("reconcile_page_retry", cursor=cursor, attempt=retried, error=str(error))
            if isinstance(error, RateLimited) and error.retry_after:
                self._flow.cool_down(error.retry_after)

        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(self._attempts) | stop_when_event_set(self._halt),
            wait=_wait,
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            listing = retrying(
                self._client.list_customer_fields, limit=RECONCILE_PAGE_SIZE, starting_after=cursor
            )
        except (RecurError, Throttled) as error:
            return error, retried
        return Page.of(listing), retried

    def fetch_after(self, page: Page) -> Fetched | None:
        """The page after `page`, or None when `page` was the last."""
        return None if page.next is None else self.fetch(page.next)

    def _sleep(self, seconds: float) -> None:
        self._halt.wait(seconds)

"""Every page of `GET /v1/customers` from a cursor on, fetched ahead on a thread, with retries.

The reconciliation compares and checkpoints one page (inside Redis, which releases the GIL while
it waits) while the next is already on its way, so a pass takes about as long as the paging
alone. The thread pages on by itself into a queue of AHEAD pages, so memory stays a few pages.

A page that fails with 429, a 5xx or a timeout is tried again, the same cursor, after
`Retry-After` when Recur gives one (a 429 also sets the shared cool-down, so live syncs back off
too), else after a capped, jittered exponential; after `attempts` tries, the error is handed to
the reader instead of a page, and the thread stops.
"""

from __future__ import annotations

import queue
import threading

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential_jitter,
)

from sync_worker.logging import get_logger
from sync_worker.pipeline.flow import FlowControl, Throttled
from sync_worker.recur.client import RecurClient
from sync_worker.recur.errors import RateLimited, RecurError, is_transient
from sync_worker.recur.models import RawCustomerPage
from sync_worker.recur.retry import retry_after_of
from sync_worker.settings import RECONCILE_PAGE_SIZE

log = get_logger(__name__)

AHEAD = 2
"""Pages fetched but not yet read, at most."""
MAX_WAIT_SECONDS = 120.0
_BACKOFF = wait_exponential_jitter(multiplier=0.5, max=30.0, jitter=0.5)

Fetched = tuple[RawCustomerPage | RecurError | Throttled, int]
"""A page or the error its last try ended in, and how many tries failed before."""


def _retryable(error: BaseException) -> bool:
    return is_transient(error) or isinstance(error, Throttled)


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome is not None else None
    asked = error.wait if isinstance(error, Throttled) else retry_after_of(error)
    if asked is not None:
        return min(asked, MAX_WAIT_SECONDS)
    return float(_BACKOFF(state))


class PageStream:
    """Pages from `cursor` on; read them with `next()`, and `close()` when done."""

    def __init__(
        self, client: RecurClient, *, flow: FlowControl, cursor: str | None, attempts: int
    ) -> None:
        self._client = client
        self._flow = flow
        self._attempts = attempts
        self._queue: queue.Queue[Fetched | BaseException] = queue.Queue(maxsize=AHEAD)
        self._halt = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(cursor,), name="reconcile-pages", daemon=True
        )
        self._thread.start()

    def next(self) -> Fetched:
        """The next page (or the error that ended the stream), waiting for it if need be."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop fetching: a page being retried gives up at its next wait."""
        self._halt.set()
        self._thread.join()

    def _run(self, cursor: str | None) -> None:
        try:
            while not self._halt.is_set():
                page, retried = self._fetch(cursor)
                if not self._put((page, retried)):
                    return
                if not isinstance(page, RawCustomerPage) or page.next is None:
                    return
                cursor = page.next
        except Exception as error:  # noqa: BLE001 - handed to the reader, who raises it
            self._put(error)

    def _put(self, item: Fetched | BaseException) -> bool:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fetch(self, cursor: str | None) -> Fetched:
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
            page = retrying(
                self._client.list_customers_raw, limit=RECONCILE_PAGE_SIZE, starting_after=cursor
            )
        except (RecurError, Throttled) as error:
            return error, retried
        return page, retried

    def _sleep(self, seconds: float) -> None:
        self._halt.wait(seconds)

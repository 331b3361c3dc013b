"""The webhook notifier: Alertmanager-like JSON POSTed from background services, never blocking.

:class:`WebhookNotifier` only appends to a bounded in-memory queue per URL; one
:class:`~mnistops.runtime.BackgroundService` per URL POSTs, retrying connection errors and 5xx
answers with exponential backoff (tenacity), so a dead receiver cannot delay the others or the
monitor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
)

from mnistops.monitor.alerts.notify import Notification, webhook_payload
from mnistops.runtime import BackgroundService

__all__ = ["WebhookNotifier"]

log = logging.getLogger(__name__)


class _Retryable(Exception):
    """A delivery attempt worth retrying (connection error, timeout, 5xx)."""


class _Worker(BackgroundService):
    """Queue consumer delivering payloads to one URL, so a dead receiver cannot delay the others.

    Retries (connection errors, 5xx) follow tenacity's exponential backoff, cut short by ``abort``.
    """

    def __init__(self, owner: WebhookNotifier, url: str) -> None:
        super().__init__(f"mnistops-webhook-{url}", 0.0)
        self.owner = owner
        self.url = url
        self.queue: deque[dict[str, Any]] = deque()
        self.cond = threading.Condition()
        self.closing = False
        self.abort = threading.Event()  # set when close() times out: stop retrying
        self._client: httpx.Client | None = None

    def put(self, payload: dict[str, Any]) -> None:
        with self.cond:
            if self.closing:
                self.owner._count("dropped")
                log.warning("webhook %s: notifier closed, dropping a notification", self.url)
                return
            if len(self.queue) >= self.owner.queue_size:
                self.queue.popleft()  # drop the OLDEST: the newest state matters most
                self.owner._count("dropped")
                log.warning(
                    "webhook %s: queue full (%d), dropped the oldest", self.url, self.owner.queue_size
                )
            self.queue.append(payload)
            self.cond.notify()

    def close(self) -> None:
        """Deliver what is queued, then let the thread end."""
        with self.cond:
            self.closing = True
            self.cond.notify()

    def run(self) -> None:
        """Deliver payloads until closed and drained (one HTTP client for the thread's life)."""
        with httpx.Client(timeout=self.owner.timeout) as self._client:
            while self._next_payload():
                pass

    def _next_payload(self) -> bool:
        with self.cond:
            while not self.queue and not self.closing:
                self.cond.wait()
            if not self.queue:  # closing and drained
                return False
            payload = self.queue.popleft()
        if self.abort.is_set():
            self.owner._count("dropped")
        else:
            self.owner._count("delivered" if self._deliver(payload) else "failed")
        return True

    def step(self) -> None:
        """Not used: :meth:`run` is a queue consumer."""

    def _post(self, payload: dict[str, Any]) -> bool:
        assert self._client is not None
        try:
            resp = self._client.post(self.url, json=payload)
        except httpx.HTTPError as exc:  # connect errors, timeouts, protocol errors
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:  # the receiver rejects the payload: retrying cannot help
            log.error("webhook %s answered %d, not retrying", self.url, resp.status_code)
            return False
        return True

    def _before_sleep(self, rs: RetryCallState) -> None:
        self.owner._count("retries")
        exc = rs.outcome.exception() if rs.outcome is not None else None
        delay = rs.next_action.sleep if rs.next_action is not None else 0.0
        log.warning("webhook %s failed (%s), retry %d in %.2fs", self.url, exc, rs.attempt_number, delay)

    def _sleep(self, seconds: float) -> None:
        self.abort.wait(seconds)  # close() gave up: the backoff ends at once

    def _deliver(self, payload: dict[str, Any]) -> bool:
        o = self.owner
        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(o.max_retries + 1) | stop_when_event_set(self.abort),
            wait=wait_exponential(multiplier=o.backoff, max=o.max_backoff),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            return bool(retrying(self._post, payload))
        except _Retryable as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            log.error("webhook %s: giving up after %d attempts (%s)", self.url, attempts, exc)
            return False


class WebhookNotifier:
    """POSTs Alertmanager-like JSON to each URL from background threads; ``notify`` never blocks.

    Args:
        urls: receiver URLs (each gets every notification).
        timeout: per-request timeout in seconds.
        max_retries: retries after the first attempt on connection errors and 5xx answers.
        backoff: first retry delay in seconds; doubles each retry (capped at ``max_backoff``).
        queue_size: pending payloads kept per URL; when full the oldest is dropped and counted.
        max_backoff: upper bound of one retry delay.

    Counters (``stats()``): delivered, failed (gave up), dropped (queue full or closed), retries.
    """

    def __init__(
        self,
        urls: Sequence[str],
        timeout: float = 5.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        *,
        queue_size: int = 1000,
        max_backoff: float = 30.0,
    ) -> None:
        if timeout <= 0 or max_retries < 0 or backoff < 0 or queue_size < 1:
            raise ValueError("timeout > 0, max_retries >= 0, backoff >= 0 and queue_size >= 1 required")
        self.urls = list(urls)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._stats = {"delivered": 0, "failed": 0, "dropped": 0, "retries": 0}
        self._workers: list[_Worker] | None = None  # threads start on the first notification

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def stats(self) -> dict[str, int]:
        """Snapshot of the delivery counters."""
        with self._lock:
            return dict(self._stats)

    @property
    def pending(self) -> int:
        """Payloads waiting in the queues (not counting one being delivered)."""
        return sum(len(w.queue) for w in self._workers or ())

    def notify(self, notifications: Sequence[Notification]) -> None:
        """Enqueue one payload with all ``notifications`` for every URL (returns immediately)."""
        if not notifications or not self.urls:
            return
        payload = webhook_payload(notifications)
        with self._lock:
            if self._workers is None:
                self._workers = [_Worker(self, url).start() for url in self.urls]
            workers = self._workers
        for w in workers:
            w.put(payload)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for at most ``timeout`` seconds, then stop retrying and drop the rest.

        Returns after at most ``timeout`` plus one request timeout (a request in flight is not cut).
        """
        with self._lock:
            workers = self._workers or []
        for w in workers:
            w.close()
        deadline = time.monotonic() + timeout
        for w in workers:
            w.stop(max(0.0, deadline - time.monotonic()))
        for w in workers:
            if w.running:
                log.warning("webhook %s: close timed out with %d pending, dropping them", w.url, len(w.queue))
                w.abort.set()  # stop retrying; the thread drops what is left
        for w in workers:
            w.stop(self.timeout)  # at most the request in flight

"""One dependency's health as one use of it sees it: warn once when it goes down, once when it is back, count
outages, and skip it for a moment after a failure so a dead host does not add a connect timeout to every request.

Each use keeps its own state (PostgreSQL's audit writer and its key checks, say): what one use suffers, such as a
writer waiting on a batch, must not switch another into its outage behaviour. Only failures to reach the dependency
belong here; a dependency that answers slowly or refuses a query is up.
"""

from __future__ import annotations

import logging
import time

from server.telemetry import prometheus

log = logging.getLogger(__name__)


class Outage:
    def __init__(self, dependency: str, *, use: str | None = None, retry_after_s: float = 1.0) -> None:
        self.dependency = dependency
        self.use = use
        self._retry_after_s = retry_after_s
        self._down_since: float | None = None
        self._next_try = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    @property
    def _what(self) -> str:
        return f"{self.dependency} ({self.use})" if self.use else self.dependency

    def should_try(self) -> bool:
        """False for a moment after a failure; then one request finds out whether it is back."""
        return self._down_since is None or time.monotonic() >= self._next_try

    def failed(self, exc: BaseException, consequence: str) -> None:
        now = time.monotonic()
        self._next_try = now + self._retry_after_s
        if self._down_since is not None:
            return
        self._down_since = now
        prometheus.dependency_outages.labels(self.dependency, self.use or "all").inc()
        # The exception's type only: a driver's message can carry a host name or user.
        log.warning("%s is unreachable (%s): %s", self._what, type(exc).__name__, consequence)

    def succeeded(self) -> None:
        if self._down_since is None:
            return
        log.info("%s is reachable again after %.1f s", self._what, time.monotonic() - self._down_since)
        self._down_since = None

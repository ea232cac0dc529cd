"""Keys whose rate-limit window refuses any request, remembered on this replica until it frees.

A request's body is parsed and validated on the event loop before its key's RPM is checked (the pipeline reads the
model from it first): a key past its limit could send body after body, each parsed only to be refused
(docs/security.md has the cost). A refusal that held whatever the request (too many requests, or the tokens already
spent, decided before any prompt is counted) says when the window frees (Retry-After); until then the key's next
requests are refused before their bodies are read, with what the limiter said, the wait counted down. Per replica:
another replica finds out on its own first refusal. A key whose limit an admin raises meanwhile waits out at most the
wait it was told.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

from server.access.ratelimit import Decision, reset_duration

_PRUNE_PAST = 1024  # remembered keys before the expired ones are swept out


class StandingRefusals:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, tuple[float, Decision]] = {}

    def note(self, key_id: str, decision: Decision) -> None:
        """`key_id`'s window refused a request whatever it asked (`decision`): every request until its retry."""
        now = self._clock()
        if len(self._until) >= _PRUNE_PAST:
            self._until = {key: held for key, held in self._until.items() if held[0] > now}
        wait = decision.retry_after_s if decision.wait_s is None else decision.wait_s
        if wait > 0:  # the exact wait, not Retry-After's whole seconds: a window freeing in 5 ms stands for 5 ms
            self._until[key_id] = (now + wait, decision)

    def standing(self, key_id: str) -> Decision | None:
        """The refusal that still holds for `key_id`, its wait what is left of it; None when there is none."""
        held = self._until.get(key_id)
        if held is None:
            return None
        until, decision = held
        left = until - self._clock()
        if left <= 0:
            del self._until[key_id]
            return None
        headers = dict(decision.headers)
        reset = f"x-ratelimit-reset-{decision.limited_by}"
        if reset in headers:
            headers[reset] = reset_duration(left * 1000)
        return replace(decision, retry_after_s=max(math.ceil(left), 1), headers=headers, wait_s=left)

"""Failed attempts per client address, for a secret that must not be guessed at full speed (the admin key).

After `max_failures` failures within `window_s` of an address's first one, that address is refused until the window
ends, with its key right or wrong (else guessing would go on, and only a correct guess would get through). A success
does not wipe the count, so guesses interleaved with an operator's calls from a shared address (an ingress) still
count. The memory is bounded: beyond `max_addresses` the address seen longest ago is forgotten.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Failures:
    count: int
    since: float


class FailureThrottle:
    def __init__(
        self,
        *,
        max_failures: int = 10,
        window_s: float = 60.0,
        max_addresses: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_failures = max_failures
        self._window_s = window_s
        self._max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def retry_after_s(self, address: str) -> int | None:
        """Seconds `address` must wait before it may try again; None: it may try now."""
        failures = self._current(address)
        if failures is None or failures.count < self._max_failures:
            return None
        return max(1, math.ceil(failures.since + self._window_s - self._clock()))

    def failed(self, address: str) -> None:
        failures = self._current(address)
        if failures is None:
            self._failures[address] = _Failures(1, self._clock())
        else:
            failures.count += 1
        self._failures.move_to_end(address)
        while len(self._failures) > self._max_addresses:
            self._failures.popitem(last=False)

    def _current(self, address: str) -> _Failures | None:
        failures = self._failures.get(address)
        if failures is not None and self._clock() - failures.since >= self._window_s:
            del self._failures[address]
            return None
        return failures

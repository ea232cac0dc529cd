"""Events per identity in a window: a count that, once full, refuses that identity until its window ends.

Two uses: failed admin-key attempts per client address (a secret must not be guessed at full speed) and model loads
per API key (a key must not make every request a load). After `max_events` events within `window_s` of an identity's
first one, that identity is refused until the window ends: for the admin key with its key right or wrong (else
guessing would go on, and only a correct guess would get through), and a success does not wipe the count, so guesses
interleaved with an operator's calls from a shared address (an ingress) still count. The memory is bounded: beyond
`max_identities` the identity seen longest ago is forgotten.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Events:
    count: int
    since: float


class Throttle:
    def __init__(
        self,
        *,
        max_events: int = 10,
        window_s: float = 60.0,
        max_identities: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_events = max_events
        self._window_s = window_s
        self._max_identities = max_identities
        self._clock = clock
        self._events: OrderedDict[str, _Events] = OrderedDict()

    def retry_after_s(self, identity: str) -> int | None:
        """Seconds `identity` must wait before it may go on; None: it may now."""
        events = self._current(identity)
        if events is None or events.count < self._max_events:
            return None
        return max(1, math.ceil(events.since + self._window_s - self._clock()))

    def count(self, identity: str) -> None:
        """One more event of `identity`'s."""
        events = self._current(identity)
        if events is None:
            self._events[identity] = _Events(1, self._clock())
        else:
            events.count += 1
        self._events.move_to_end(identity)
        while len(self._events) > self._max_identities:
            self._events.popitem(last=False)

    def _current(self, identity: str) -> _Events | None:
        events = self._events.get(identity)
        if events is not None and self._clock() - events.since >= self._window_s:
            del self._events[identity]
            return None
        return events

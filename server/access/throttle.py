"""Events per identity in a window: a count that, once full, refuses that identity until its window ends.

Two uses: failed admin-key attempts per client address (a secret must not be guessed at full speed) and model loads
per API key (a key must not make every request a load). After `max_events` events within the last `window_s`, that
identity is refused until the oldest of them is `window_s` old (a sliding window: no burst of twice the limit across
a window's edge): for the admin key with its key right or wrong (else guessing would go on, and only a correct guess
would get through), and a success does not wipe the count, so guesses interleaved with an operator's calls from a
shared address (an ingress) still count. The memory is bounded: beyond
`max_identities` the identity seen longest ago is forgotten.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable


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
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after_s(self, identity: str) -> int | None:
        """Seconds `identity` must wait before it may go on; None: it may now."""
        events = self._current(identity)
        if len(events) < self._max_events:
            return None
        return max(1, math.ceil(events[0] + self._window_s - self._clock()))

    def count(self, identity: str) -> None:
        """One more event of `identity`'s."""
        events = self._current(identity)
        events.append(self._clock())
        self._events[identity] = events
        self._events.move_to_end(identity)
        while len(self._events) > self._max_identities:
            self._events.popitem(last=False)

    def _current(self, identity: str) -> deque[float]:
        """`identity`'s events within the window (at most the last `max_events`: only the oldest of those decides)."""
        events = self._events.get(identity)
        if events is None:
            return deque(maxlen=self._max_events)
        while events and self._clock() - events[0] >= self._window_s:
            events.popleft()
        return events

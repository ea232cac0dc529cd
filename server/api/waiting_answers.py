"""The memory a replica lends to answers waiting on their clients, and what happens when it runs out.

The send timeout and its least rate (`answer_departure.py`) bound how long a client may hold its waiting answer, not
how many clients hold one at once: a key with no request limit could open connection after connection, each asking
for a large answer and taking just the least rate of it, until the replica ran out of memory. So the bytes waiting for
clients that are not keeping up (not yet taken: in the server's buffers and the kernel's queues) are counted together,
and when an answer's arrival takes them past `GGUFSTACK_MAX_WAITING_ANSWER_BYTES`, the connections holding the most are
dropped until they fit again. Redis bounds its clients' output buffers the same way (`maxmemory-clients`: the clients
using the most memory are disconnected first). So that one key cannot fill the replica's budget and have other keys'
answers dropped, each key's waiting answers are held within `GGUFSTACK_MAX_WAITING_ANSWER_BYTES_PER_KEY` first, its
own largest dropped past it. A client that keeps up never waits here: its buffer stays under the transport's
high-water mark.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from server.telemetry import prometheus


class _Budget(NamedTuple):
    reason: str  # the drop's label in ggufstack_http_answers_dropped_total
    setting: str
    whose: str  # whose answers it bounds, as the log line says


_REPLICA = _Budget("memory_budget", "GGUFSTACK_MAX_WAITING_ANSWER_BYTES", "all")
_PER_KEY = _Budget("key_budget", "GGUFSTACK_MAX_WAITING_ANSWER_BYTES_PER_KEY", "its key's")


class WaitingConnection(Protocol):
    def waiting_bytes(self) -> int:
        """The bytes of its answer this connection holds in the server's memory."""
        ...

    def owner(self) -> str | None:
        """The API key whose answer it is (None: the admin key, or no keys)."""
        ...

    def drop(self, reason: str) -> None:
        """Abort the connection, and its buffer with it, logging `reason`."""
        ...


class WaitingAnswers:
    """The connections of one server whose writes are paused (their buffers past the high-water mark)."""

    def __init__(self, max_bytes: int, max_bytes_per_key: int = 0) -> None:
        self.max_bytes = max_bytes
        self.max_bytes_per_key = max_bytes_per_key  # 0: no bound per key
        self._waiting: set[WaitingConnection] = set()

    def waiting(self, connection: WaitingConnection) -> None:
        """`connection`'s client stopped keeping up with its answer: count its buffer, and make room if its key's
        buffers, then all of them, are past their budget (the new one included, so an answer larger than a budget is
        never held)."""
        self._waiting.add(connection)
        held = {each: each.waiting_bytes() for each in self._waiting}
        owner = connection.owner()
        if self.max_bytes_per_key and owner is not None:
            own = {each: size for each, size in held.items() if each.owner() == owner}
            self._make_room(own, self.max_bytes_per_key, _PER_KEY)
            held = {each: size for each, size in held.items() if each in self._waiting}
        self._make_room(held, self.max_bytes, _REPLICA)

    def done(self, connection: WaitingConnection) -> None:
        """`connection` caught up, or is gone."""
        self._waiting.discard(connection)

    def held_bytes(self) -> int:
        return sum(each.waiting_bytes() for each in self._waiting)

    def _make_room(self, held: dict[WaitingConnection, int], budget: int, which: _Budget) -> None:
        """Drop the connections of `held` holding the most until the rest fit `budget`."""
        reason, setting, whose = which
        total = sum(held.values())
        while total > budget:
            most = max(held, key=held.__getitem__)
            size = held.pop(most)
            self._waiting.discard(most)
            prometheus.answers_dropped.labels(reason).inc()
            most.drop(
                f"its {size} waiting bytes were the most when {whose} answers waiting on their clients held {total}, "
                f"past {setting} ({budget})"
            )
            total -= size

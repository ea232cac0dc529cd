"""The memory a replica lends to answers waiting on their clients, and what happens when it runs out.

The send timeout and its least rate (`answer_departure.py`) bound how long a client may hold its waiting answer, not
how many clients hold one at once: a key with no request limit could open connection after connection, each asking
for a large answer and taking just the least rate of it, until the replica ran out of memory. So the bytes waiting for
clients that are not keeping up (not yet taken: in the server's buffers and the kernel's queues) are counted together,
and when an answer's arrival takes them past `GGUFSTACK_MAX_WAITING_ANSWER_BYTES`, the connections holding the most are
dropped until they fit again.
Redis bounds its clients' output buffers the same way (`maxmemory-clients`: the clients using the most memory are
disconnected first). A client that keeps up never waits here: its buffer stays under the transport's high-water mark.
"""

from __future__ import annotations

from typing import Protocol

from server.telemetry import prometheus


class WaitingConnection(Protocol):
    def waiting_bytes(self) -> int:
        """The bytes of its answer this connection holds in the server's memory."""
        ...

    def drop(self, reason: str) -> None:
        """Abort the connection, and its buffer with it, logging `reason`."""
        ...


class WaitingAnswers:
    """The connections of one server whose writes are paused (their buffers past the high-water mark)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._waiting: set[WaitingConnection] = set()

    def waiting(self, connection: WaitingConnection) -> None:
        """`connection`'s client stopped keeping up with its answer: count its buffer, and make room if the buffers
        together are past the budget (the new one included, so an answer larger than the budget is never held)."""
        self._waiting.add(connection)
        held = {each: each.waiting_bytes() for each in self._waiting}
        total = sum(held.values())
        while total > self.max_bytes:
            most = max(held, key=held.__getitem__)
            size = held.pop(most)
            self._waiting.discard(most)
            prometheus.answers_dropped.labels("memory_budget").inc()
            most.drop(
                f"its {size} waiting bytes were the most when answers waiting on their clients held {total}, past "
                f"GGUFSTACK_MAX_WAITING_ANSWER_BYTES ({self.max_bytes})"
            )
            total -= size

    def done(self, connection: WaitingConnection) -> None:
        """`connection` caught up, or is gone."""
        self._waiting.discard(connection)

    def held_bytes(self) -> int:
        return sum(each.waiting_bytes() for each in self._waiting)

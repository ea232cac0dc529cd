"""How an answer leaves: a client that takes none of it is dropped, and the answer waiting for it freed.

An answer is written into the connection's buffer as fast as the server makes it, whole for a JSON body: a client
that leaves its socket unread (its receive window full, the connection kept open) holds that buffer in the server's
memory for as long as it likes (docs/security.md has what forty such clients held). Streams already end
when a chunk waits past the send timeout (`streaming.py`), but a JSON body is written in one go and its request is
over before a byte of it has left. So here, at the transport: while the buffer is past its high-water mark, a client
that takes no byte of it for `send_timeout_s` (`GGUFSTACK_STREAM_SEND_TIMEOUT_S`) has its connection aborted, the
buffer with it. A slow reader that keeps taking bytes is not cut off: the time starts over whenever it has taken
at least `send_min_bytes_per_s` (`GGUFSTACK_STREAM_SEND_MIN_BYTES_PER_S`) for each second of the period, or all that
was waiting. With progress alone counted, a client taking one byte per period held its answer for as long as it liked.
How many such answers a replica holds at once is bounded apart (`waiting_answers.py`).
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import math
import termios

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.api.waiting_answers import WaitingAnswers
from server.telemetry import prometheus

log = logging.getLogger(__name__)


class StalledReaderProtocol(HttpToolsProtocol):
    send_timeout_s = 30.0
    send_min_bytes_per_s = 0
    waiting_answers = WaitingAnswers(max_bytes=2**63)  # one per server: `http_protocol` sets it

    _write_timer: asyncio.TimerHandle | None = None
    _outstanding_at_check = 0  # the answer's bytes not yet taken when the current period began

    def pause_writing(self) -> None:
        super().pause_writing()
        self._outstanding_at_check = self._outstanding()
        self._arm()
        self.waiting_answers.waiting(self)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._disarm()
        self.waiting_answers.done(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.waiting_answers.done(self)
        super().connection_lost(exc)

    def waiting_bytes(self) -> int:
        # The kernel's queue too: uvloop keeps the whole answer alive until its last byte is sent (it buffers a view
        # of it, not a copy), and the kernel's socket memory is charged to the pod's memory as well.
        return self._outstanding()

    def owner(self) -> str | None:
        # The caller the route class authenticated (`server/api/gates.py`), on the request whose answer this is.
        cycle = getattr(self, "cycle", None)
        state = cycle.scope.get("state") if cycle is not None else None
        caller = state.get("caller") if isinstance(state, dict) else None
        key_id = getattr(caller, "key_id", None)
        return key_id if isinstance(key_id, str) else None

    def drop(self, reason: str) -> None:
        self._disarm()
        self.waiting_answers.done(self)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.warning("dropped %s: %s", client, reason)
        self.transport.abort()

    def _arm(self) -> None:
        self._disarm()
        self._write_timer = asyncio.get_running_loop().call_later(self.send_timeout_s, self._check_progress)

    def _disarm(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _outstanding(self) -> int:
        """Bytes written and not yet taken by the client: the transport's buffer and the kernel's send queue. The
        kernel queue is what shows a slow reader's progress: the transport's buffer moves into it only once a good
        part of it is free, which a client with a small window takes long to make."""
        queued = array.array("i", [0])
        try:
            fcntl.ioctl(self.transport.get_extra_info("socket").fileno(), termios.TIOCOUTQ, queued)  # SIOCOUTQ
        except (OSError, AttributeError):  # not a socket the kernel can tell about: the transport's buffer alone
            queued[0] = 0
        return self.transport.get_write_buffer_size() + queued[0]

    def _check_progress(self) -> None:
        self._write_timer = None
        buffered = self._outstanding()
        taken = self._outstanding_at_check - buffered
        least = min(self._outstanding_at_check, math.ceil(self.send_min_bytes_per_s * self.send_timeout_s))
        if taken > 0 and taken >= least:  # a slow reader, not a stalled one
            self._outstanding_at_check = buffered
            self._arm()
            return
        prometheus.answers_dropped.labels("too_slow").inc()
        self.drop(
            f"it took {max(taken, 0)} bytes of its answer in {self.send_timeout_s:.0f} s, under the least it must "
            f"({buffered} bytes waiting)"
        )

"""Bounds on a request's head (its request line and headers): how large it may be, and how long it may take.

uvicorn's httptools protocol buffers a head without any limit and waits for it without any timeout (h11's protocol has
a size limit; httptools has none to set): one client, before any key is checked, could make a replica hold a URL or
headers of hundreds of MiB, keep its event loop busy copying them, or hold connections open with heads that never
end. This protocol counts a head's bytes as they arrive and times it, on a new connection from its opening, on a
kept-alive one from the next request's first byte, to its last header. Past the size it answers 431, past the time
408, in the error JSON of the API the path serves, and closes the connection; a connection that sent nothing in that
time is closed without an answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.api.errors import anthropic_body, body, speaks_anthropic
from server.errors import APIError

log = logging.getLogger(__name__)


def head_too_large(max_bytes: int) -> APIError:
    return APIError(
        431,
        f"the request line and headers are larger than this server accepts ({max_bytes} bytes, "
        "GGUFSTACK_MAX_REQUEST_HEAD_BYTES)",
        code="request_head_too_large",
    )


def head_too_slow(timeout_s: float) -> APIError:
    return APIError(
        408,
        f"the request line and headers did not arrive within {timeout_s:g} s (GGUFSTACK_REQUEST_HEAD_TIMEOUT_S)",
        code="request_head_timeout",
    )


def raw_error_response(error: APIError, path: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole HTTP/1.1 response, written before any request exists to answer through the app."""
    content = anthropic_body(error) if speaks_anthropic(path) else body(error)
    payload = json.dumps(content.model_dump(), separators=(",", ":")).encode()
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}".encode()]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [b"content-type: application/json", b"content-length: %d" % len(payload), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


class BoundedHeadProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024
    head_timeout_s = 30.0

    _head_bytes = 0  # of the head arriving now, counted while `_reading_head`
    _reading_head = True  # from the end of the last request's body to the end of the next one's headers
    _head_begun = False  # the next request's first byte has come
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn declares it
        super().connection_made(transport)
        self._time_the_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timing()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # While a head is arriving, the parser is fed no more than the head's room, so a head past the limit is
        # refused before its excess is parsed; body bytes go through whole.
        while data and not self.transport.is_closing():
            if not self._reading_head:
                super().data_received(data)
                return
            room = self.max_head_bytes - self._head_bytes
            if room <= 0:
                self._refuse(head_too_large(self.max_head_bytes))
                return
            chunk, data = data[:room], data[room:]
            self._head_bytes += len(chunk)
            super().data_received(chunk)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a request kept alive or pipelined behind another: its head is timed afresh
            self._time_the_head()
        self._head_begun = True

    def on_headers_complete(self) -> None:
        self._reading_head = self._head_begun = False
        self._head_bytes = 0
        self._stop_timing()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Bytes from here on are the next request's head, but its timer starts only with its first byte: the client
        # may rightly send nothing while this request's answer streams.
        self._reading_head = True

    def _time_the_head(self) -> None:
        self._stop_timing()
        self._head_timer = asyncio.get_running_loop().call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_timing(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._reading_head:
            return
        if not self._head_begun:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        self._refuse(head_too_slow(self.head_timeout_s))

    def _refuse(self, error: APIError) -> None:
        self._stop_timing()
        path = getattr(self, "url", b"").split(b"?", 1)[0].decode("latin-1")
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.warning("refused a request head from %s: %s", client, error.message)
        self.transport.write(raw_error_response(error, path, self.server_state.default_headers))
        self.transport.close()

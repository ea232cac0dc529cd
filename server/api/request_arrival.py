"""Bounds on how a request arrives: how large its head (request line and headers) may be, and how long its head and
its body may take.

uvicorn's httptools protocol buffers a head without any limit and waits for a head or a body without any timeout
(h11's protocol has a size limit; httptools has none to set): one client, before any key is checked, could make a
replica hold a URL or headers of hundreds of MiB, keep its event loop busy copying them, or hold connections open
with heads or bodies that never end. This protocol counts a head's bytes as they arrive and times each part: a head
from a new connection's opening, or from a kept-alive request's first byte, to its last header; a body from there to
its last byte. Past the size it answers 431, past a time 408, in the error JSON of the API the path serves, and closes
the connection; a connection that sent nothing in its time is closed without an answer.

A refused client is often still sending (the rest of a large head, a body). A socket closed with bytes unread makes
the kernel reset the connection, and a client that takes the reset before it reads the answer never learns why. So,
as nginx's lingering close does, the answer goes out with the write side closed after it, and what the client still
sends is read and dropped until it closes its side, goes quiet, or a bounded time has passed.

Only the client's slowness counts. While the server is the one not reading (a pipelined request waits its turn, the
app has not taken the body so far, or has not yet asked for a body the client holds back until it does, as
`Expect: 100-continue` lets it), the time starts over; and the answer itself is never timed, so a client
waiting minutes for a long generation is not cut off.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from server.api.errors import response
from server.errors import APIError
from server.telemetry import prometheus

log = logging.getLogger(__name__)

Phase = Literal["head", "body"]
# The scope key that carries the status this protocol answered a request's body with: the app, which sees only a
# disconnect, answers something else that never goes out, and the access line and metrics must say what did.
ANSWERED_STATUS = "ggufstack.answered_status"


def head_too_large(max_bytes: int) -> APIError:
    return APIError(
        431,
        f"the request line and headers are larger than this server accepts ({max_bytes} bytes, "
        "GGUFSTACK_MAX_REQUEST_HEAD_BYTES)",
        code="request_head_too_large",
    )


def not_http() -> APIError:
    return APIError(400, "the request could not be parsed as HTTP/1.1", code="invalid_http_request")


def too_slow(phase: Phase, timeout_s: float) -> APIError:
    what, setting = {
        "head": ("request line and headers", "GGUFSTACK_REQUEST_HEAD_TIMEOUT_S"),
        "body": ("request body", "GGUFSTACK_REQUEST_BODY_TIMEOUT_S"),
    }[phase]
    return APIError(
        408, f"the {what} did not arrive within {timeout_s:g} s ({setting})", code=f"request_{phase}_timeout"
    )


def raw_error_response(error: APIError, path: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The error response the app would give for `path`, as the bytes of a whole HTTP/1.1 response: written where no
    request exists to answer through the app."""
    rendered = response(error, path)
    headers = [*default_headers, *rendered.raw_headers, (b"connection", b"close")]
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}".encode()]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + bytes(rendered.body)


class _ParserRefusalLine(logging.Filter):
    """uvicorn logs "Invalid HTTP request received." before it hands bytes its parser refuses to
    `send_400_response`, which refuses and logs them here, with the client: one line for one refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _UVICORN_PARSER_REFUSAL


_UVICORN_PARSER_REFUSAL = "Invalid HTTP request received."


def drop_uvicorns_refusal_line() -> None:
    """Drop uvicorn's own line for bytes its parser refuses (the protocol logs the refusal); once per process."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _ParserRefusalLine) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(_ParserRefusalLine())


class BoundedArrivalProtocol(HttpToolsProtocol):
    max_head_bytes = 64 * 1024
    head_timeout_s = 30.0
    body_timeout_s = 60.0
    # After a refusal, how long a client may go quiet, and how long in all, before the connection closes under it:
    # nginx's lingering_timeout and lingering_time defaults.
    linger_idle_s = 5.0
    linger_max_s = 30.0

    _head_bytes = 0  # of the head arriving now, counted while `_reading_head`
    _reading_head = True  # from the end of the last request's body to the end of the next one's headers
    _head_begun = False  # the next request's first byte has come
    _phase: Phase = "head"
    _timer: asyncio.TimerHandle | None = None  # the phase's time, or the lingering close's
    _server_held = False  # the server was the one not reading when the current period began
    _lingering = False
    _linger_until = 0.0
    _last_byte_at = 0.0  # while lingering

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn declares it
        super().connection_made(transport)
        self._time("head")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timing()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # a refused request's rest: dropped
            self._last_byte_at = asyncio.get_running_loop().time()
            return
        if self._reading_head and self._timer is None:
            # The next head's time starts with its first byte, whatever it is. Line breaks before a request line
            # begin no message (the parser skips them) yet stop uvicorn's keep-alive timer: untimed, one "\r"
            # after an answer held the connection open for good.
            self._time("head")
        # While a head is arriving, the parser is fed no more than the head's room, so a head past the limit is
        # refused before its excess is parsed; body bytes go through whole.
        while data and not self._refused_or_closing():
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

    def _refused_or_closing(self) -> bool:
        """Nothing more is parsed once a refusal went out (the parser may refuse bytes midway through a chunk)."""
        return self._lingering or self.transport.is_closing()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:  # a request kept alive or pipelined behind another: its head is timed afresh
            self._time("head")
        self._head_begun = True

    def on_headers_complete(self) -> None:
        self._reading_head = self._head_begun = False
        self._head_bytes = 0
        self._time("body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._stop_timing()
        # Bytes from here on are the next request's head, but its time starts only with its first byte: the client
        # may rightly send nothing while this request's answer streams.
        self._reading_head = True

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser refuses (logged by uvicorn with `msg`): the API's error JSON instead
        of plain text, under the same rules as every refusal here."""
        self._refuse(not_http())

    def shutdown(self) -> None:
        if self._lingering:  # the answer went out: nothing to wait for when the server stops
            self.transport.close()
            return
        super().shutdown()

    def handle_websocket_upgrade(self) -> None:
        self._stop_timing()  # the connection is the WebSocket protocol's from here on
        super().handle_websocket_upgrade()

    def _timeout_s(self, phase: Phase) -> float:
        return self.head_timeout_s if phase == "head" else self.body_timeout_s

    def _time(self, phase: Phase) -> None:
        self._stop_timing()
        self._phase = phase
        self._server_held = False
        self._timer = asyncio.get_running_loop().call_later(self._timeout_s(phase), self._timed_out)

    def _stop_timing(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _earlier_answer_pending(self, in_head: bool) -> bool:
        """While a head arrives, `cycle` is the request before it; while a body arrives, its own."""
        cycle: RequestResponseCycle | None = self.cycle  # None before the connection's first request
        if in_head:
            return cycle is not None and not cycle.response_complete
        return bool(self.pipeline)

    def _continue_not_sent(self) -> bool:
        """A client that sent `Expect: 100-continue` waits for the app to ask for the body before sending it."""
        return self._phase == "body" and self.cycle.waiting_for_100_continue

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        held = self.flow.read_paused or self._earlier_answer_pending(self._phase == "head") or self._continue_not_sent()
        if held or self._server_held:
            # The server is the one not reading, or was when this period began and may have stopped only a moment
            # ago (sent its 100 Continue, resumed reading): the client gets a whole period from now.
            self._time(self._phase)
            self._server_held = held
            return
        if self._phase == "head" and not self._head_begun:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        self._refuse(too_slow(self._phase, self._timeout_s(self._phase)))

    def _refuse(self, error: APIError) -> None:
        self._stop_timing()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.warning("refused a request from %s: %s", client, error.message)
        prometheus.http_refused.labels(error.code or str(error.status)).inc()
        # An answer goes out only where it cannot be taken for another request's: none is pending before this one,
        # and this one's has not begun. (`_reading_head`, not the timed phase: bytes the parser refuses may come
        # before a request has begun.)
        in_head = self._reading_head
        answered = self._earlier_answer_pending(in_head) if in_head else self.cycle.response_started
        if answered:
            self.transport.close()
            return
        # Before the next request has begun, `url` is still the last one's: its path would pick the error's shape.
        url = getattr(self, "url", b"") if self._head_begun or not in_head else b""
        path = url.split(b"?", 1)[0].decode("latin-1")
        self.transport.write(raw_error_response(error, path, self.server_state.default_headers))
        self._close_after_answer(error.status, body_refused=not in_head)

    def _close_after_answer(self, status: int, *, body_refused: bool) -> None:
        """Close the write side after the answer, and the connection once the client has had time to read it."""
        cycle: RequestResponseCycle | None = self.cycle
        if body_refused and cycle is not None:  # the app's request is gone
            cycle.scope[ANSWERED_STATUS] = status  # type: ignore[literal-required]  # a key of ours in the scope
            cycle.disconnected = True
            cycle.message_event.set()
        if not self.transport.can_write_eof():  # TLS: no half-close to offer
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = True
        self._last_byte_at = asyncio.get_running_loop().time()
        self._linger_until = self._last_byte_at + self.linger_max_s
        self.flow.resume_reading()
        self._linger()

    def _linger(self) -> None:
        """Close `linger_idle_s` after the client's last byte, never past `linger_max_s` after the answer; a byte
        only moves the time (no timer per read). The client's own close ends it sooner (uvicorn's `eof_received`
        lets the transport close)."""
        self._timer = None
        loop = asyncio.get_running_loop()
        close_at = min(self._last_byte_at + self.linger_idle_s, self._linger_until)
        if loop.time() >= close_at:
            self.transport.close()
        else:
            self._timer = loop.call_at(close_at, self._linger)

"""A request's head is bounded in size, its head and body in time (server/api/request_arrival.py): without the bounds,
uvicorn's httptools protocol buffers a URL or headers of any size and waits for the rest forever, so most tests here
would hang until their socket timeout instead of getting their answer. Only the client's slowness counts: the rest
guard against cutting a request the server itself is slow to read or answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from server.api.http_protocol import http_protocol
from server.api.middleware import RequestContextMiddleware
from server.api.request_arrival import not_http
from server.config.settings import load_settings
from server.telemetry import prometheus
from server.telemetry.logging import access_log
from tests.support.protocol_server import ProtocolServer, running_protocol_server
from tests.support.server import ServerProcess

LIMIT = 64 * 1024  # the default GGUFSTACK_MAX_REQUEST_HEAD_BYTES
TIMEOUT_S = 0.5
LINGER_IDLE_S = 2.0


def _connect(url: str) -> socket.socket:
    address = urlsplit(url)
    return socket.create_connection((address.hostname or "127.0.0.1", address.port or 80), timeout=10)


def _answer(sock: socket.socket | Remainder) -> tuple[int, dict[str, str], bytes]:
    """Everything the server sends until it closes the connection: status, headers, body."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


class Responses:
    """Responses with a Content-Length, read one at a time from a connection that stays open."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def _fill(self, until: int | bytes) -> None:
        while (len(self.buffer) < until) if isinstance(until, int) else (until not in self.buffer):
            chunk = self.sock.recv(65536)
            assert chunk, f"closed with {self.buffer!r} read"
            self.buffer += chunk

    def next(self) -> tuple[int, bytes]:
        self._fill(b"\r\n\r\n")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
        self._fill(length)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(lines[0].split()[1]), body


class Remainder:
    """What a connection still has to say after the responses read from it, as a socket to read it from."""

    def __init__(self, responses: Responses) -> None:
        self.responses = responses

    def recv(self, size: int) -> bytes:
        if self.responses.buffer:
            data, self.responses.buffer = self.responses.buffer, b""
            return data
        return self.responses.sock.recv(size)


@pytest.mark.parametrize("part", ["url", "headers"])
def test_a_head_past_the_limit_is_refused_before_it_ends(demo_server: ServerProcess, part: str) -> None:
    with _connect(demo_server.base_url) as sock:
        if part == "url":
            sock.sendall(b"GET /v1/models?q=" + b"a" * LIMIT)
        else:
            header = b"x-padding-%d: " + b"b" * 1000 + b"\r\n"
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + b"".join(header % i for i in range(70)))
        status, headers, body = _answer(sock)  # the head never ends: only the limit can answer
    assert status == 431 and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error["code"] == "request_head_too_large" and "GGUFSTACK_MAX_REQUEST_HEAD_BYTES" in error["message"]


def test_the_messages_api_is_refused_in_its_own_error_shape(demo_server: ServerProcess) -> None:
    with _connect(demo_server.base_url) as sock:
        sock.sendall(b"POST /v1/messages?q=" + b"a" * LIMIT)
        status, _, body = _answer(sock)
    assert status == 431
    answer = json.loads(body)
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"


def test_a_head_within_the_limit_is_served(demo_server: ServerProcess) -> None:
    with _connect(demo_server.base_url) as sock:
        padding = b"x-padding: " + b"b" * (LIMIT - 200) + b"\r\n"
        sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\n" + padding + b"connection: close\r\n\r\n")
        status, _, body = _answer(sock)
    assert status == 200, body


@pytest.mark.parametrize(
    ("path", "shape"), [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")], ids=["openai", "anthropic"]
)
def test_bytes_that_are_not_http_get_the_apis_error_json(demo_server: ServerProcess, path: str, shape: str) -> None:
    with _connect(demo_server.base_url) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost x\r\n\r\n".encode())  # a header without its colon
        status, headers, body = _answer(sock)
    assert status == 400 and headers["content-type"] == "application/json"
    answer = json.loads(body)
    if shape == "anthropic":
        assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    else:
        assert answer["error"]["code"] == "invalid_http_request"


async def _app(scope: dict, receive: Any, send: Any) -> None:
    """Answers "ok" once it has read the body; /slow only after three timeouts, as a long generation would, and
    /slow-reader reads its body only then."""
    if scope["path"] in ("/slow", "/slow-reader"):
        await asyncio.sleep(3 * TIMEOUT_S)
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


TimedServer = ProtocolServer


@contextlib.contextmanager
def _running_timed_server(linger_idle_s: float = LINGER_IDLE_S, linger_max_s: float = 3.0) -> Iterator[TimedServer]:
    """uvicorn with the server's protocol and short times, in this process."""
    settings = load_settings(request_head_timeout_s=TIMEOUT_S, request_body_timeout_s=TIMEOUT_S)
    lingering = {"linger_idle_s": linger_idle_s, "linger_max_s": linger_max_s}
    protocol = type("Protocol", (http_protocol(settings),), lingering)
    app = RequestContextMiddleware(_app)  # the server's access line and metrics around the test app
    with running_protocol_server(app, protocol) as server:
        yield server


@pytest.fixture(scope="module")
def timed_server() -> Iterator[TimedServer]:
    with _running_timed_server() as server:
        yield server


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(timed_server: TimedServer) -> None:
    with _connect(timed_server.url) as sock:
        assert sock.recv(100) == b""


def test_a_head_that_does_not_end_in_time_is_a_408(timed_server: TimedServer) -> None:
    with _connect(timed_server.url) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        status, _, body = _answer(sock)
    assert status == 408
    assert json.loads(body)["error"]["code"] == "request_head_timeout"


def test_a_slow_answer_is_not_cut_and_the_next_head_is_timed_afresh(timed_server: TimedServer) -> None:
    with _connect(timed_server.url) as sock:
        responses = Responses(sock)
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        assert responses.next() == (200, b"ok"), "the client waits for its answer; its head was complete"
        time.sleep(2 * TIMEOUT_S)  # idle between requests: the keep-alive timeout's business, not the head's
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert responses.next() == (200, b"ok")
        sock.sendall(b"GET / HTTP/1.1\r\n")
        status, _, body = _answer(sock)
    assert status == 408, body


@pytest.mark.parametrize("idle", [b"\r", b"\r\n", b"\n" * 100])
def test_line_breaks_after_an_answer_do_not_hold_the_connection_untimed(timed_server: TimedServer, idle: bytes) -> None:
    """Line breaks begin no request, yet stop the keep-alive timer (60 s here): the head's time must hold them."""
    with _connect(timed_server.url) as sock:
        responses = Responses(sock)
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert responses.next() == (200, b"ok")
        sock.sendall(idle)
        assert timed_server.wait_closed(sock, timeout=4 * TIMEOUT_S) >= 0.5 * TIMEOUT_S
        assert sock.recv(100) == b"", "nothing was asked: nothing is answered"


def test_a_line_break_before_a_request_line_is_skipped(timed_server: TimedServer) -> None:
    with _connect(timed_server.url) as sock:
        responses = Responses(sock)
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert responses.next() == (200, b"ok")
        sock.sendall(b"\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert responses.next() == (200, b"ok")


def test_pipelined_requests_are_answered_in_turn(timed_server: TimedServer) -> None:
    with _connect(timed_server.url) as sock:
        responses = Responses(sock)
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert [responses.next(), responses.next()] == [(200, b"ok"), (200, b"ok")]


def test_a_partial_head_pipelined_behind_a_slow_answer_waits_its_turn(timed_server: TimedServer) -> None:
    with _connect(timed_server.url) as sock:
        responses = Responses(sock)
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\n")
        assert responses.next() == (200, b"ok"), "the earlier answer first, never a 408 in its place"
        status, _, body = _answer(Remainder(responses))
    assert status == 408, body


def test_a_body_that_stops_is_a_408(timed_server: TimedServer) -> None:
    with _connect(timed_server.url) as sock:
        sock.sendall(b'POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"model":')
        status, _, body = _answer(sock)
    assert status == 408
    answer = json.loads(body)
    assert answer["type"] == "error" and "GGUFSTACK_REQUEST_BODY_TIMEOUT_S" in answer["error"]["message"]


def test_a_body_the_app_reads_late_is_not_cut(timed_server: TimedServer) -> None:
    # 1 MiB, sent at once: the server stops reading past 64 KiB until the app takes the body, three timeouts later.
    with _connect(timed_server.url) as sock:
        payload = b"x" * (1 << 20)
        sock.sendall(b"POST /slow-reader HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload)
        assert Responses(sock).next() == (200, b"ok")


def test_a_body_held_back_for_100_continue_is_not_timed_until_the_app_asks(timed_server: TimedServer) -> None:
    # The 100 Continue goes out at a random point of the server's timing period; the client, which takes most of a
    # period to send, must still have a whole one from there. Three tries: without that, each fails more often than not.
    for _ in range(3):
        with _connect(timed_server.url) as sock:
            head = b"POST /slow-reader HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n"
            sock.sendall(head)
            assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n", "the app asked, three timeouts later"
            time.sleep(0.6 * TIMEOUT_S)
            sock.sendall(b"{}")
            assert Responses(sock).next() == (200, b"ok")


def _send_until_refused(sock: socket.socket, data: bytes) -> threading.Thread:
    def send() -> None:
        with contextlib.suppress(OSError):  # the server may close before it has read everything
            sock.sendall(data)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


def test_a_client_still_sending_a_head_past_the_limit_reads_its_431(timed_server: TimedServer) -> None:
    # Closed at once with 4 MiB still arriving, the connection was reset, and most such clients got the reset
    # before the answer: it must be read every time.
    header = b"x-padding-%d: " + b"b" * 1000 + b"\r\n"
    head = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + b"".join(header % i for i in range(4000))
    for _ in range(5):
        with _connect(timed_server.url) as sock:
            sender = _send_until_refused(sock, head)
            time.sleep(0.2)  # the refusal goes out while the head still arrives
            status, _, body = _answer(sock)
            sender.join(10)
        assert status == 431, body


def test_a_refused_connection_closes_once_the_client_has_gone_quiet(timed_server: TimedServer) -> None:
    with _connect(timed_server.url) as sock:
        sock.sendall(b"GET /v1/models?q=" + b"a" * LIMIT)
        assert _answer(sock)[0] == 431  # the answer ends (the server closed its side)
        sock.sendall(b"more of the same")  # read and dropped, not answered with a reset
        lingered = timed_server.wait_closed(sock)
    assert lingered >= LINGER_IDLE_S / 2, "closed while the client might still have been reading"


@contextlib.contextmanager
def _trickling(sock: socket.socket) -> Iterator[None]:
    """A byte every 50 ms on `sock` while the block runs (until the server closes it)."""
    stop = threading.Event()

    def trickle() -> None:
        with contextlib.suppress(OSError):
            while not stop.wait(0.05):
                sock.send(b"a")

    trickling = threading.Thread(target=trickle, daemon=True)
    trickling.start()
    try:
        yield
    finally:
        stop.set()
        trickling.join(10)


def test_a_refused_client_that_keeps_sending_is_closed_all_the_same(timed_server: TimedServer) -> None:
    with _connect(timed_server.url) as sock:
        sock.sendall(b"GET /v1/models?q=" + b"a" * LIMIT)
        assert _answer(sock)[0] == 431
        with _trickling(sock):
            timed_server.wait_closed(sock)


def test_a_refused_client_still_sending_is_not_taken_for_a_quiet_one() -> None:
    # The idle time counts from the client's last byte, not from the answer.
    with _running_timed_server(linger_idle_s=1.0, linger_max_s=30.0) as own, _connect(own.url) as sock:
        sock.sendall(b"GET /v1/models?q=" + b"a" * LIMIT)
        assert _answer(sock)[0] == 431
        with _trickling(sock):
            time.sleep(2.5)
            assert own.holds(sock), "closed while the client was still sending"
        own.wait_closed(sock)


def test_a_refused_client_that_closes_its_side_is_let_go_at_once(timed_server: TimedServer) -> None:
    with _connect(timed_server.url) as sock:
        sock.sendall(b"GET /v1/models?q=" + b"a" * LIMIT)
        assert _answer(sock)[0] == 431
        sock.shutdown(socket.SHUT_WR)
        assert timed_server.wait_closed(sock) < LINGER_IDLE_S


def test_a_server_stopping_does_not_wait_for_a_refused_connection() -> None:
    with _running_timed_server() as own, _connect(own.url) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        assert _answer(sock)[0] == 408  # a body refused: uvicorn would wait for its request's connection
        assert own.holds(sock), "lingering"
        stopping = time.monotonic()
        own.server.should_exit = True
        own.thread.join(10)
        assert time.monotonic() - stopping < LINGER_IDLE_S


def test_a_refused_body_is_logged_and_counted_with_the_status_the_client_got(
    timed_server: TimedServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The app saw only a disconnect, and its own answer (here a 200) never went out.
    counted = prometheus.http_requests.labels("unmatched", "POST", "408")
    before = counted._value.get()
    with caplog.at_level(logging.INFO, logger=access_log.name):
        with _connect(timed_server.url) as sock:
            sock.sendall(b"POST /refused-body HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
            assert _answer(sock)[0] == 408
        deadline = time.monotonic() + 10
        while not (logged := [r for r in caplog.records if "/refused-body" in r.getMessage()]):
            assert time.monotonic() < deadline, "no access line"
            time.sleep(0.02)
    assert [r.fields["status"] for r in logged] == [408]  # type: ignore[attr-defined]
    assert counted._value.get() == before + 1


def test_bytes_the_parser_refuses_midway_through_a_chunk_get_one_answer(
    timed_server: TimedServer, caplog: pytest.LogCaptureFixture
) -> None:
    # More than the head's room in one send: the parser refuses the first part, and the rest must not be parsed.
    with _connect(timed_server.url) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost x\r\n\r\n" + b"a" * (2 * LIMIT))
        status, _, body = _answer(sock)
    assert status == 400 and b"HTTP/1.1 4" not in body, body  # one answer
    assert json.loads(body)["error"]["code"] == "invalid_http_request"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "the rest was fed to the parser"


def test_a_refusal_before_a_request_begins_is_not_shaped_by_the_one_before(timed_server: TimedServer) -> None:
    with _connect(timed_server.url) as sock:
        responses = Responses(sock)
        sock.sendall(b"GET /v1/messages HTTP/1.1\r\nhost: x\r\n\r\n")
        assert responses.next() == (200, b"ok")
        sock.sendall(b"\r\n" * LIMIT)  # line breaks begin no request, and fill the head's room
        status, _, body = _answer(Remainder(responses))
    assert status == 431
    assert json.loads(body)["error"]["code"] == "request_head_too_large", "not Anthropic's shape: no path was asked"


def test_bytes_the_parser_refuses_are_logged_once(timed_server: TimedServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), _connect(timed_server.url) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost x\r\n\r\n")
        assert _answer(sock)[0] == 400
    refused = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage().partition(": ")[2] for r in refused] == [not_http().message], "uvicorn's line as well"


@pytest.mark.parametrize(
    ("sent", "code"),
    [
        (b"GET /?q=" + b"a" * LIMIT, "request_head_too_large"),
        (b"GET / HTTP/1.1\r\n", "request_head_timeout"),
        (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\n\r\n{", "request_body_timeout"),
        (b"GET / HTTP/1.1\r\nhost x\r\n\r\n", "invalid_http_request"),
    ],
    ids=["head_too_large", "head_timeout", "body_timeout", "not_http"],
)
def test_each_refusal_is_counted_by_its_code(timed_server: TimedServer, sent: bytes, code: str) -> None:
    counted = prometheus.http_refused.labels(code)
    before = counted._value.get()
    with _connect(timed_server.url) as sock:
        sock.sendall(sent)
        assert json.loads(_answer(sock)[2])["error"]["code"] == code
    assert counted._value.get() == before + 1

"""A request's head is bounded in size, its head and body in time (server/api/request_arrival.py): without the bounds,
uvicorn's httptools protocol buffers a URL or headers of any size and waits for the rest forever, so most tests here
would hang until their socket timeout instead of getting their answer. Only the client's slowness counts: the rest
guard against cutting a request the server itself is slow to read or answer."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn

from server.api.http_protocol import http_protocol
from server.config.settings import load_settings
from tests.support.server import ServerProcess

LIMIT = 64 * 1024  # the default GGUFSTACK_MAX_REQUEST_HEAD_BYTES
TIMEOUT_S = 0.5


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


async def _app(scope: dict, receive: Any, send: Any) -> None:
    """Answers "ok" once it has read the body; /slow only after three timeouts, as a long generation would, and
    /slow-reader reads its body only then."""
    if scope["path"] in ("/slow", "/slow-reader"):
        await asyncio.sleep(3 * TIMEOUT_S)
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def timed_server() -> Iterator[str]:
    """uvicorn with the server's protocol and a short head timeout, in this process."""
    settings = load_settings(request_head_timeout_s=TIMEOUT_S, request_body_timeout_s=TIMEOUT_S)
    config = uvicorn.Config(_app, lifespan="off", log_config=None, http=http_protocol(settings), timeout_keep_alive=60)
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(timed_server: str) -> None:
    with _connect(timed_server) as sock:
        assert sock.recv(100) == b""


def test_a_head_that_does_not_end_in_time_is_a_408(timed_server: str) -> None:
    with _connect(timed_server) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        status, _, body = _answer(sock)
    assert status == 408
    assert json.loads(body)["error"]["code"] == "request_head_timeout"


def test_a_slow_answer_is_not_cut_and_the_next_head_is_timed_afresh(timed_server: str) -> None:
    with _connect(timed_server) as sock:
        responses = Responses(sock)
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        assert responses.next() == (200, b"ok"), "the client waits for its answer; its head was complete"
        time.sleep(2 * TIMEOUT_S)  # idle between requests: the keep-alive timeout's business, not the head's
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert responses.next() == (200, b"ok")
        sock.sendall(b"GET / HTTP/1.1\r\n")
        status, _, body = _answer(sock)
    assert status == 408, body


def test_pipelined_requests_are_answered_in_turn(timed_server: str) -> None:
    with _connect(timed_server) as sock:
        responses = Responses(sock)
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert [responses.next(), responses.next()] == [(200, b"ok"), (200, b"ok")]


def test_a_partial_head_pipelined_behind_a_slow_answer_waits_its_turn(timed_server: str) -> None:
    with _connect(timed_server) as sock:
        responses = Responses(sock)
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\n")
        assert responses.next() == (200, b"ok"), "the earlier answer first, never a 408 in its place"
        status, _, body = _answer(Remainder(responses))
    assert status == 408, body


def test_a_body_that_stops_is_a_408(timed_server: str) -> None:
    with _connect(timed_server) as sock:
        sock.sendall(b'POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"model":')
        status, _, body = _answer(sock)
    assert status == 408
    answer = json.loads(body)
    assert answer["type"] == "error" and "GGUFSTACK_REQUEST_BODY_TIMEOUT_S" in answer["error"]["message"]


def test_a_body_the_app_reads_late_is_not_cut(timed_server: str) -> None:
    # 1 MiB, sent at once: the server stops reading past 64 KiB until the app takes the body, three timeouts later.
    with _connect(timed_server) as sock:
        payload = b"x" * (1 << 20)
        sock.sendall(b"POST /slow-reader HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(payload) + payload)
        assert Responses(sock).next() == (200, b"ok")


def test_a_body_held_back_for_100_continue_is_not_timed_until_the_app_asks(timed_server: str) -> None:
    with _connect(timed_server) as sock:
        head = b"POST /slow-reader HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n"
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n", "the app asked, three timeouts later"
        sock.sendall(b"{}")
        assert Responses(sock).next() == (200, b"ok")

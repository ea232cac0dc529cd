"""An answer waiting for its client: one that takes none of it within the send timeout is dropped, the answer freed;
one that reads slowly is served whole; and answers waiting together are held within the replica's budget."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from server.access.caller import Caller
from server.api.http_protocol import http_protocol
from server.config.settings import load_settings
from server.telemetry import prometheus
from tests.support.protocol_server import ProtocolServer, running_protocol_server

SEND_TIMEOUT_S = 0.5
BIG = 8 * 1024 * 1024  # far past what the kernel's socket buffers take in


async def _app(scope: dict, receive: Any, send: Any) -> None:
    """A JSON-sized answer sent in one go, as a cached or non-streamed completion is (`/<MiB>`: of that size), for
    the key the query string names (`?key=a`), as the route class leaves its caller on the request's state."""
    size = int(scope["path"][1:]) * 1024 * 1024 if scope["path"][1:].isdigit() else BIG
    if scope["query_string"].startswith(b"key="):
        scope.setdefault("state", {})["caller"] = Caller(key_id=scope["query_string"][4:].decode())
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(size).encode())]})
    await send({"type": "http.response.body", "body": b"x" * size})


@pytest.fixture(scope="module")
def server() -> Iterator[ProtocolServer]:
    settings = load_settings(stream_send_timeout_s=SEND_TIMEOUT_S)
    with running_protocol_server(_app, http_protocol(settings)) as running:
        yield running


@pytest.fixture(scope="module")
def demanding() -> Iterator[ProtocolServer]:
    """A minimum rate far above what the slow reader below takes: 32 KiB for each send-timeout period."""
    settings = load_settings(stream_send_timeout_s=SEND_TIMEOUT_S, stream_send_min_bytes_per_s=65536)
    with running_protocol_server(_app, http_protocol(settings)) as running:
        yield running


@pytest.fixture(scope="module")
def budgeted() -> Iterator[ProtocolServer]:
    """Room for 20 MiB of waiting answers, and a send timeout that never fires in a test."""
    settings = load_settings(
        max_waiting_answer_bytes=20 * 1024 * 1024, max_waiting_answer_bytes_per_key=14 * 1024 * 1024
    )
    with running_protocol_server(_app, http_protocol(settings)) as running:
        yield running


def _asking(server: ProtocolServer, path: str = "/") -> socket.socket:
    url = urlsplit(server.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client whose buffers fill at once
    sock.connect((url.hostname, url.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return sock


def test_a_client_that_takes_none_of_its_answer_is_dropped(server: ProtocolServer) -> None:
    with _asking(server) as sock:
        time.sleep(0.2)
        assert server.holds(sock)
        assert server.wait_closed(sock, timeout=8 * SEND_TIMEOUT_S) > 0


def test_a_slow_reader_that_keeps_taking_bytes_gets_its_whole_answer(server: ProtocolServer) -> None:
    with _asking(server) as sock:
        received = 0
        for _ in range(8):  # for four times the send timeout, a little at a time, never pausing as long as it
            time.sleep(0.6 * SEND_TIMEOUT_S)
            chunk = sock.recv(4096)
            assert chunk, f"dropped after {received} bytes"
            received += len(chunk)
        while received < BIG:  # then the rest as fast as it comes
            chunk = sock.recv(1 << 20)
            assert chunk, f"dropped after {received} bytes"
            received += len(chunk)
        assert received >= BIG


def _reading_slowly(server: ProtocolServer, sock: socket.socket) -> bool:
    """Whether the server still holds the connection of a client that read up to 4 KiB every 0.6 of a send timeout,
    eight times. (A dropped client may go on reading: the kernel still sends what it had queued.)"""
    for _ in range(8):
        time.sleep(0.6 * SEND_TIMEOUT_S)
        if not server.holds(sock):
            return False
        sock.recv(4096)
    return server.holds(sock)


def test_a_reader_slower_than_the_least_rate_is_dropped(demanding: ProtocolServer) -> None:
    """Progress alone kept a connection: a client taking one byte per period held its answer's memory for as long as
    that took (a megabyte: a year at the default timeout). Now each period must take the least rate's worth."""
    with _asking(demanding) as sock:
        assert not _reading_slowly(demanding, sock)


def test_the_same_reader_within_the_least_rate_keeps_its_connection(server: ProtocolServer) -> None:
    with _asking(server) as sock:
        assert _reading_slowly(server, sock)


def _budget_drops() -> float:
    return prometheus.REGISTRY.get_sample_value(prometheus.ANSWERS_DROPPED, {"reason": "memory_budget"}) or 0.0


def test_past_the_replica_budget_the_connection_holding_the_most_is_dropped(budgeted: ProtocolServer) -> None:
    """Each client stays within the send timeout's rules, yet together they held as much memory as they liked (a key
    with no request limit could open connections until the replica ran out). Now the answers waiting together are
    held within GGUFSTACK_MAX_WAITING_ANSWER_BYTES: the connection holding the most goes first."""
    drops = _budget_drops()
    with _asking(budgeted, "/20") as large:
        time.sleep(0.3)  # the 20 MiB answer waits: some MiB in the kernel's queue, the rest in the server's buffer
        assert budgeted.holds(large)
        with _asking(budgeted, "/12") as small:  # its 12 MiB takes the two past 20 MiB
            assert budgeted.wait_closed(large, timeout=5) >= 0
            time.sleep(0.3)
            assert budgeted.holds(small)
            received = 0
            while received < 12 * 1024 * 1024:  # and the one left is served whole
                chunk = small.recv(1 << 20)
                assert chunk, f"dropped after {received} bytes"
                received += len(chunk)
    assert _budget_drops() == drops + 1


def test_within_the_budget_answers_wait_together(budgeted: ProtocolServer) -> None:
    with _asking(budgeted, "/8") as one, _asking(budgeted, "/8") as two:
        time.sleep(0.5)
        assert budgeted.holds(one) and budgeted.holds(two)


def test_an_answer_larger_than_the_budget_drops_its_own_connection_and_the_server_goes_on(
    budgeted: ProtocolServer,
) -> None:
    """The connection at fault is dropped from inside the transport's own write (where it pauses): nothing breaks."""
    with _asking(budgeted, "/24") as alone:
        assert budgeted.wait_closed(alone, timeout=5) >= 0
    with _asking(budgeted, "/1") as next_one:
        received = 0
        while received < 1024 * 1024:
            chunk = next_one.recv(1 << 20)
            assert chunk, f"dropped after {received} bytes"
            received += len(chunk)


def test_one_keys_waiting_answers_are_held_within_its_share(budgeted: ProtocolServer) -> None:
    """Another key's answer stays; this key's own largest goes once its answers pass their share (14 MiB here)."""
    with _asking(budgeted, "/4?key=b") as other, _asking(budgeted, "/8?key=a") as first:
        time.sleep(0.3)
        assert budgeted.holds(other) and budgeted.holds(first)
        with _asking(budgeted, "/7?key=a") as second:  # key a: 15 MiB waiting, past its 14; all: 19, within 20
            assert budgeted.wait_closed(first, timeout=5) >= 0
            time.sleep(0.3)
            assert budgeted.holds(second) and budgeted.holds(other)

"""Threat: a key opens a streaming generation and stops reading its socket (reads the headers, then nothing, the
connection left open). The engine generates the whole answer, but the stages around it see its last event, and so
charge its tokens against TPM, write its audit row and return its model lease, only once the HTTP response has sent
every chunk before it: the client decides when. Measured: 4 x 400 tokens generated within seconds, yet no charge, no
audit row and a lease held for as long as the client kept the socket open (60 s, and longer if it liked). So a key
could generate past its TPM (its next requests met a window its earlier answers were never charged to) and keep a
model from being evicted or a swapped-out model's memory from being freed. Now a chunk (or ping) the client does not
accept within `GGUFSTACK_STREAM_SEND_TIMEOUT_S` ends the response as a client gone away: charged, audited 499, the
lease returned."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import DEMO_NO_EOS
from tests.server.security.conftest import MODEL, Plane, eventually, own_plane
from tests.support.postgres import Postgres
from tests.support.redis import Redis


@pytest.fixture(scope="module")
def stalling_plane(postgres: Postgres, redis_server: Redis, demo_gguf, tmp_path_factory) -> Iterator[Plane]:
    workdir = tmp_path_factory.mktemp("stalled-readers")
    with own_plane(postgres, redis_server, demo_gguf, workdir, "stalled", GGUFSTACK_STREAM_SEND_TIMEOUT_S="2") as own:
        yield own


def _stalled_stream(plane: Plane, key: str) -> socket.socket:
    """A streaming request whose client reads the status line and then nothing: a small receive buffer, and large
    chunks (20 log-probabilities a token, 4 choices), so the server's buffers fill long before the answer ends."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story. " + uuid.uuid4().hex}],
        "max_tokens": 400,
        "n": 4,
        "logprobs": True,
        "top_logprobs": 20,
        "logit_bias": DEMO_NO_EOS,
        "stream": True,
    }
    raw = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", plane.server.port))
    sock.sendall(head.encode() + raw)
    assert sock.recv(64).startswith(b"HTTP/1.1 200")
    return sock


def _in_flight(plane: Plane) -> float:
    metrics = httpx.get(f"{plane.url}/metrics", timeout=10).text
    return float(re.search(r"^ggufstack_generations_running (\S+)", metrics, re.M).group(1))


def test_a_client_that_stops_reading_is_charged_recorded_and_lets_its_lease_go(stalling_plane: Plane) -> None:
    plane = stalling_plane
    created = plane.create_key(tpm=1_000_000)
    sock = _stalled_stream(plane, created["key"])
    try:
        # All while the client keeps its socket open and reads nothing more.
        rows = eventually(
            lambda: plane.sql("SELECT status, completion_tokens FROM audit_log WHERE key_id = %s", created["id"]),
            timeout=40,
        )
        [(status, completion_tokens)] = rows
        assert status == 499 and completion_tokens > 0  # the generation stops where the client was given up
        assert eventually(lambda: plane.usage(created["id"])["completion_tokens"] == completion_tokens)
        assert eventually(lambda: _in_flight(plane) == 0)
        # Ended by whichever of the two send timeouts fires first with the same limit: the stream's (a chunk not
        # taken) or the transport's (a buffer not drained, answer_departure.py); both end it as a client gone away.
        log = plane.server.log()
        assert "its response is ended" in log or "bytes of its answer in" in log
    finally:
        sock.close()


def test_a_slow_reader_that_keeps_reading_gets_its_whole_answer(stalling_plane: Plane) -> None:
    """The timeout is per chunk, not per response: a client reading slower than the server writes still gets
    everything, as long as it takes each chunk within the timeout."""
    plane = stalling_plane
    created = plane.create_key(tpm=1_000_000)
    sock = _stalled_stream(plane, created["key"])
    received = b""
    try:
        sock.settimeout(30)
        while not received.endswith(b"0\r\n\r\n"):
            time.sleep(0.005)
            chunk = sock.recv(2048)
            if not chunk:
                break
            received += chunk
    finally:
        sock.close()
    assert b"data: [DONE]" in received
    rows = eventually(lambda: plane.sql("SELECT status FROM audit_log WHERE key_id = %s", created["id"]))
    assert rows == [(200,)]

"""uvicorn with the server's HTTP protocol (`server/api/http_protocol.py`), in this process, around a test app: for
the tests of how requests arrive and answers leave, which need short times and a view of the open connections."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class ProtocolServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def holds(self, sock: socket.socket) -> bool:
        """Whether the server still has `sock`'s connection open."""
        port = sock.getsockname()[1]
        return any(c.client and c.client[1] == port for c in list(self.server.server_state.connections))

    def wait_closed(self, sock: socket.socket, timeout: float = 10) -> float:
        """Seconds until the server closed `sock`'s connection."""
        started = time.monotonic()
        while self.holds(sock):
            assert time.monotonic() - started < timeout, "the server kept the connection open"
            time.sleep(0.02)
        return time.monotonic() - started


@contextlib.contextmanager
def running_protocol_server(app: Any, protocol: type[HttpToolsProtocol]) -> Iterator[ProtocolServer]:
    config = uvicorn.Config(app, lifespan="off", log_config=None, http=protocol, timeout_keep_alive=60)
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield ProtocolServer(f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread)
    finally:
        server.should_exit = True
        thread.join(10)

"""What answers waiting on clients that read nothing cost a replica, under GGUFSTACK_MAX_WAITING_ANSWER_BYTES.

Run: uv run --no-sync python -m bench.waiting_answers [--clients 40] [--answer-mib 6]
For each budget (none, the default, a small one) starts uvicorn with the server's HTTP protocol around an app that
answers every request with one JSON-sized body, as a cached or non-streamed completion is sent, opens `--clients`
connections that ask and then read nothing, and prints the server's resident memory before and after, the bytes its
buffers hold for them, and how many connections it dropped to stay within the budget.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.ports import free_port

SERVER = """
import sys, uvicorn
from server.api.http_protocol import http_protocol
from server.config.settings import load_settings
from server.telemetry import prometheus

size, port, budget = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
protocol = http_protocol(load_settings(max_waiting_answer_bytes=budget))

async def app(scope, receive, send):
    if scope["path"] == "/held":
        dropped = prometheus.REGISTRY.get_sample_value(prometheus.ANSWERS_DROPPED, {"reason": "memory_budget"}) or 0
        body = f"{protocol.waiting_answers.held_bytes()} {int(dropped)}".encode()
    else:
        body = b"x" * size
    length = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": length})
    await send({"type": "http.response.body", "body": body})

uvicorn.run(app, host="127.0.0.1", port=port, http=protocol, log_level="error", lifespan="off")
"""


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _round(budget: int, clients: int, size: int) -> tuple[float, float, int, int]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(size), str(port), str(budget)])
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(f"{url}/held", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        before = _rss_mib(server.pid)
        socks = []
        for _ in range(clients):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            socks.append(sock)
        time.sleep(2)
        held, dropped = (int(v) for v in httpx.get(f"{url}/held", timeout=10).text.split())
        after = _rss_mib(server.pid)
        for sock in socks:
            sock.close()
        return before, after, held, dropped
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--answer-mib", type=float, default=6)
    args = parser.parse_args()
    size = int(args.answer_mib * 2**20)
    print(f"{args.clients} clients reading nothing of a {args.answer_mib:g} MiB answer each")
    print(f"{'budget':>12} {'RSS before':>11} {'RSS after':>10} {'held':>10} {'dropped':>8}")
    for label, budget in (("none", 2**62), ("256 MiB", 256 * 2**20), ("64 MiB", 64 * 2**20)):
        before, after, held, dropped = _round(budget, args.clients, size)
        print(f"{label:>12} {before:>8.0f} MiB {after:>6.0f} MiB {held / 2**20:>6.0f} MiB {dropped:>8}")


if __name__ == "__main__":
    main()

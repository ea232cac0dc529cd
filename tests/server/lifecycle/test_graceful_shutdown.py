"""SIGTERM, as Kubernetes sends it: streams in flight finish, new requests get 503, the process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEMO_MODEL_ID, DEMO_NO_EOS
from tests.support.server import ServerProcess, start_server


@dataclass
class Stream:
    started: asyncio.Event = field(default_factory=asyncio.Event)
    texts: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int | None = None
    done: bool = False


async def _stream(client: httpx.AsyncClient, prompt: str, max_tokens: int, out: Stream) -> None:
    body = {
        "model": DEMO_MODEL_ID,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "logit_bias": DEMO_NO_EOS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                out.done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                out.errors.append(chunk["error"])
            elif chunk["choices"]:
                out.texts.append(chunk["choices"][0]["text"])
                out.finish_reason = chunk["choices"][0]["finish_reason"] or out.finish_reason
                out.started.set()
            elif chunk.get("usage"):
                out.completion_tokens = chunk["usage"]["completion_tokens"]


def _start(tmp_path: Path, **env: str) -> ServerProcess:
    server = start_server(tmp_path, {"GGUFSTACK_N_SLOTS": "8", "GGUFSTACK_N_CTX": "1024", **env})
    server.wait_ready()
    return server


async def _exit_code(server: ServerProcess, timeout: float) -> int:
    return await asyncio.to_thread(server.process.wait, timeout)


async def test_sigterm_drains_every_stream_in_flight_and_exits_0(tmp_path: Path) -> None:
    # A drain timeout no loaded CI machine reaches: this test is about every stream finishing.
    server = _start(tmp_path, GGUFSTACK_DRAIN_TIMEOUT_S="600")
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            streams = [Stream() for _ in range(8)]
            tasks = [asyncio.create_task(_stream(client, f"Story {i}:", 64, s)) for i, s in enumerate(streams)]
            await asyncio.wait_for(asyncio.gather(*(s.started.wait() for s in streams)), 60)
            server.process.send_signal(signal.SIGTERM)

            ready = await client.get("/health/ready")
            for _ in range(50):
                if ready.status_code == 503:
                    break
                await asyncio.sleep(0.02)
                ready = await client.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["state"] == "draining"
            late = await client.post("/v1/completions", json={"model": DEMO_MODEL_ID, "prompt": "Hi", "max_tokens": 2})
            assert late.status_code == 503
            assert late.json()["error"]["code"] == "server_shutting_down"
            assert int(late.headers["retry-after"]) >= 1
            assert not any(s.done for s in streams), "the drain began before the streams ended"

            await asyncio.wait_for(asyncio.gather(*tasks), 120)
        for s in streams:
            assert s.errors == [] and s.done
            assert s.finish_reason == "length" and s.completion_tokens == 64
        assert await _exit_code(server, 30) == 0
        assert "drained: no generation in flight" in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["drain timeout", "second SIGTERM"])
async def test_streams_left_at_the_end_get_an_error_event_not_a_cut(tmp_path: Path, how: str) -> None:
    timeout = "1" if how == "drain timeout" else "60"
    server = _start(tmp_path, GGUFSTACK_DRAIN_TIMEOUT_S=timeout)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
            streams = [Stream() for _ in range(2)]
            tasks = [asyncio.create_task(_stream(client, f"Tale {i}:", 1000, s)) for i, s in enumerate(streams)]
            await asyncio.wait_for(asyncio.gather(*(s.started.wait() for s in streams)), 60)
            server.process.send_signal(signal.SIGTERM)
            if how == "second SIGTERM":
                await asyncio.sleep(0.3)
                server.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for s in streams:
            assert s.done, "the stream ended with [DONE], not a dropped connection"
            assert [e["code"] for e in s.errors] == ["server_shutting_down"]
            assert s.finish_reason is None and len(s.texts) < 1000
        assert await _exit_code(server, 30) == 0
    finally:
        server.stop()

"""Threat: /tokenize with `with_pieces` as a memory and event-loop bomb. A short input can be many tokens (each emoji
is three byte tokens in SmolLM2's vocabulary): 262,144 emoji, a 1 MB body within every limit, were 786,432 tokens, each
made a pydantic object in the worker thread and checked and written again by FastAPI on the event loop. One such
request took 21 s, raised the server's peak memory by 776 MB and held /health/live for 3.4 s (found by a review,
2026-12-08; four at once took a replica from 650 MB to 3 GB). The answer is now written as JSON bytes in the worker
thread, each distinct token's piece decoded once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.protocol.ops import TokenizeResponse
from tests.support.server import ServerProcess, start_server

EMOJI = "\U0001f600"


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_gguf: Path) -> Iterator[ServerProcess]:
    started = start_server(tmp_path_factory.mktemp("tokenize-pieces"), {"GGUFSTACK_MODEL_PATH": str(demo_gguf)})
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def _peak_kib(server: ServerProcess) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])


def test_a_million_pieces_cost_the_server_tens_of_megabytes_not_hundreds(server: ServerProcess) -> None:
    before = _peak_kib(server)
    r = httpx.post(f"{server.base_url}/tokenize", json={"content": EMOJI * 262_144, "with_pieces": True}, timeout=120)
    assert r.status_code == 200, r.text[:500]
    grown_mib = (_peak_kib(server) - before) / 1024
    pieces = TokenizeResponse.model_validate_json(r.content).tokens
    assert len(pieces) == 3 * 262_144
    assert grown_mib < 300, f"the server's peak memory grew {grown_mib:.0f} MiB (776 before the fix)"


def test_pieces_written_as_json_read_back_as_the_text(server: ServerProcess) -> None:
    text = 'He said "hi" \\ then\n\tleft\x01, ' + EMOJI + " für 東京"
    r = httpx.post(f"{server.base_url}/tokenize", json={"content": text, "with_pieces": True}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    pieces = json.loads(r.content)["tokens"]
    ids = httpx.post(f"{server.base_url}/tokenize", json={"content": text}, timeout=30).json()["tokens"]
    assert [p["id"] for p in pieces] == ids
    # A piece that is part of a character (the emoji's, these kanji's) is written as U+FFFD, as before.
    joined = "".join(p["piece"] for p in pieces)
    assert joined.startswith('He said "hi" \\ then\n\tleft\x01, ') and " für " in joined
    assert httpx.post(f"{server.base_url}/detokenize", json={"tokens": ids}, timeout=30).json() == {"content": text}

"""Startup and single-stream numbers for the serving slice: Blob download speed, cold and cached start, tok/s.

Run: uv run --no-sync python -m bench.startup
Starts Azurite and the real server on loopback, uploads the demo GGUF, and prints one table.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from pathlib import Path

import httpx
from azure.storage.blob import BlobServiceClient

from server.model_source.local import demo_model
from tests.support.azurite import start_azurite
from tests.support.server import start_server

MODEL_ID = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS = 128


def timed_start(workdir: Path, env: dict[str, str]) -> tuple[float, str, object]:
    started = time.monotonic()
    server = start_server(workdir, env)
    server.wait_ready(300)
    return time.monotonic() - started, server.log(), server


def single_stream(base_url: str) -> tuple[float, float]:
    body = {
        "model": MODEL_ID,
        "prompt": "Write a long story about a lighthouse keeper.",
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
        "stream": True,
        "logit_bias": {"0": -100, "2": -100},
    }
    sent = time.monotonic()
    first = None
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and first is None:
                first = time.monotonic()
    done = time.monotonic()
    return (first or done) - sent, (NEW_TOKENS - 1) / max(done - (first or done), 1e-9)


def main() -> None:
    gguf = demo_model()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        azurite = start_azurite(work / "azurite")
        try:
            container = BlobServiceClient.from_connection_string(azurite.connection_string).create_container("models")
            sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
            with gguf.open("rb") as f:
                container.upload_blob(MODEL_ID, f, metadata={"sha256": sha}, max_concurrency=4)
            env = {"GGUFSTACK_BLOB_CONNECTION_STRING": azurite.connection_string, "GGUFSTACK_BLOB_NAME": MODEL_ID}
            cold_s, cold_log, server = timed_start(work / "server", env)
            rate = re.search(r"downloaded .*?: ([\d.]+) MiB in ([\d.]+) s \(([\d.]+) MiB/s\)", cold_log)
            ttft, tok_s = single_stream(server.base_url)
            server.stop()
            cached_s, cached_log, server = timed_start(work / "server", env)
            server.stop()
        finally:
            azurite.stop()
    assert rate and "cache hit" in cached_log
    rows = [
        ("model", f"{MODEL_ID} ({gguf.stat().st_size / 2**20:.1f} MiB)"),
        ("download from Blob (Azurite, loopback)", f"{rate.group(3)} MiB/s ({rate.group(1)} MiB in {rate.group(2)} s)"),
        ("cold start: process to ready (download, verify, load, warm-up)", f"{cold_s:.1f} s"),
        ("cached start: process to ready (0 bytes downloaded)", f"{cached_s:.1f} s"),
        ("single stream: time to first token", f"{ttft * 1000:.0f} ms"),
        (f"single stream: decode speed over {NEW_TOKENS} tokens", f"{tok_s:.1f} tok/s"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()

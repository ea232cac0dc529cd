"""Threat: one bad model version silently ends hot swaps. The watcher caught only verification errors: a GGUF header
claiming an absurd string length (MemoryError), or any other unexpected failure of a check, ended the watcher task
while readiness stayed green, so the server stayed on its old model for good and nobody could tell. Header counts,
sizes and nesting are now bounded (a clean refusal), a version is refused on any error, the watcher keeps watching,
and a stopped watcher shows in readiness and a metric.

A swap in place that frees the old model, fails to load the new one and then fails to reload the old one used to
leave the pod not ready forever while /health/live said alive: now the old model is retried with backoff, and once the
server has had no model for GGUFSTACK_LOST_MODEL_RESTART_S, /health/live fails so Kubernetes restarts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import ContainerClient
from gguf import GGUFValueType

from server.api.app import create_app
from server.config.settings import load_settings
from server.lifecycle.holder import ModelHolder
from server.lifecycle.watcher import ModelWatcher
from server.model_source.base import FetchResult
from server.model_source.blob import BlobLocation, BlobModelSource
from server.model_source.errors import VerificationError
from server.model_source.facts import read_facts
from tests.support.azurite import Azurite


def _string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def _header(n_tensors: int, fields: list[bytes], tensors: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(fields)) + b"".join(fields) + tensors + b"\0" * 64


def _field(key: str, value_type: GGUFValueType, payload: bytes) -> bytes:
    return _string(key) + struct.pack("<I", value_type) + payload


STRING_BOMB = _header(0, [_field("general.name", GGUFValueType.STRING, struct.pack("<Q", 2**62))])
HEADERS = {
    "a 2^62-byte string": STRING_BOMB,
    "nested arrays": _header(
        0,
        [
            _field(
                "x",
                GGUFValueType.ARRAY,
                struct.pack("<IQ", GGUFValueType.ARRAY, 1)
                + struct.pack("<IQ", GGUFValueType.ARRAY, 1)
                + struct.pack("<IQ", GGUFValueType.UINT8, 1)
                + b"\1",
            )
        ],
    ),
    "2^40 array items": _header(0, [_field("x", GGUFValueType.ARRAY, struct.pack("<IQ", GGUFValueType.UINT8, 2**40))]),
    "2^40 tensors": _header(2**40, []),
    "2^40 fields": b"GGUF" + struct.pack("<IQQ", 3, 0, 2**40) + b"\0" * 64,
    "a 1000-dimension tensor": _header(1, [], _string("t") + struct.pack("<I", 1000) + b"\1" * 64),
}


@pytest.mark.parametrize("header", list(HEADERS.values()), ids=list(HEADERS))
def test_absurd_header_claims_are_a_clean_refusal(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(header)
    with pytest.raises(VerificationError, match="not a readable GGUF file"):
        read_facts(path)


def _upload(container: ContainerClient, data: bytes) -> str:
    blob = container.upload_blob("m.gguf", data, overwrite=True, metadata={"sha256": hashlib.sha256(data).hexdigest()})
    return blob.get_blob_properties().etag.strip('"')


async def _wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_the_watcher_refuses_a_hostile_header_and_keeps_watching(
    azurite: Azurite, container: ContainerClient, tmp_path: Path
) -> None:
    settings = load_settings(model_watch_interval_s=0.05, cache_dir=tmp_path)
    location = BlobLocation(container.container_name, "m.gguf", connection_string=azurite.connection_string)
    source = BlobModelSource(location, tmp_path)
    first = _upload(container, STRING_BOMB + b"first")
    holder = ModelHolder()
    serving = FetchResult(tmp_path / "none.gguf", 0, 0.0, first, None, f'"{first}"')
    watcher = asyncio.create_task(ModelWatcher(settings, holder, source, serving).run())
    try:
        second = _upload(container, STRING_BOMB + b"second")
        await _wait_for(lambda: holder.refused is not None or watcher.done())
        assert not watcher.done(), watcher.exception()
        assert holder.refused.version == second and "not a readable GGUF file" in holder.refused.reason
        third = _upload(container, HEADERS["nested arrays"])
        await _wait_for(lambda: holder.refused.version == third or watcher.done())
        assert not watcher.done(), watcher.exception()
    finally:
        watcher.cancel()


async def test_liveness_fails_once_a_failed_swap_in_place_left_no_model_for_too_long() -> None:
    app = create_app(load_settings(lost_model_restart_s=0.2))
    holder: ModelHolder = app.state.holder
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as client:
        assert (await client.get("/health/live")).status_code == 200
        holder.lost("the new model failed and reloading the old one failed: out of memory (retrying)")
        assert (await client.get("/health/live")).status_code == 200  # within the bound: the reload may succeed
        await asyncio.sleep(0.3)
        failing = await client.get("/health/live")
    assert failing.status_code == 503
    assert failing.json()["status"] == "failing" and "out of memory" in failing.json()["reason"]
    assert holder.readiness().ready is False


def test_a_stopped_watcher_shows_in_readiness() -> None:
    holder = ModelHolder()
    holder.watcher_stopped = "RuntimeError: boom"
    assert "the model watcher stopped (RuntimeError: boom)" in holder.readiness().reason

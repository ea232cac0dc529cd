"""Publishing models against Azurite with both real models: push, list, roll back, and what is refused."""

from __future__ import annotations

import hashlib
import threading
import tracemalloc
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

from server.model_source.blob import BlobLocation, BlobModelSource
from server.model_source.catalogue import ARCHIVE_PREFIX, PublishError
from server.model_source.errors import VerificationError
from server.model_source.facts import GGUFFacts, memory_estimate, read_facts
from server.model_source.publish import BLOCK_BYTES, ModelPublisher
from tests.support.azurite import Azurite


def blob_sha256(container: ContainerClient, name: str) -> str:
    hasher = hashlib.sha256()
    for chunk in container.download_blob(name).chunks():
        hasher.update(chunk)
    return hasher.hexdigest()


def test_facts_of_both_models(demo_gguf: Path, gemma_gguf: Path) -> None:
    smol = read_facts(demo_gguf)
    assert (smol.architecture, smol.quantization, smol.context_length, smol.layers) == ("llama", "Q4_1", 8192, 30)
    assert 130e6 < smol.parameters < 140e6
    # 30 layers x 3 KV heads x (64 + 64) dims x 2 bytes, as llama.cpp sizes an f16 cache.
    assert smol.kv_bytes_per_token == 30 * 3 * 128 * 2
    gemma = read_facts(gemma_gguf)
    assert (gemma.architecture, gemma.quantization, gemma.context_length) == ("gemma3", "Q4_K_M", 32768)
    assert 260e6 < gemma.parameters < 280e6
    assert gemma.weights_bytes < gemma_gguf.stat().st_size
    assert GGUFFacts.from_metadata(gemma.to_metadata()) == gemma


def test_memory_estimate_is_weights_plus_a_kv_cache_per_slot(demo_gguf: Path) -> None:
    facts = read_facts(demo_gguf)
    estimate = memory_estimate(facts, n_ctx=4096, n_slots=8)
    assert estimate.kv_cache_bytes == 4096 * 8 * facts.kv_bytes_per_token
    assert estimate.total_bytes == facts.weights_bytes + estimate.kv_cache_bytes


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n" * 100)
    with pytest.raises(VerificationError, match="not a GGUF file"):
        read_facts(text)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 64)
    with pytest.raises(VerificationError, match="not a readable GGUF file"):
        read_facts(truncated)


def test_push_uploads_blocks_with_sha256_and_facts_and_the_server_source_verifies_it(
    azurite: Azurite, container: ContainerClient, demo_gguf: Path, demo_sha256: str, tmp_path: Path
) -> None:
    progressed: list[int] = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            progressed.append(n)

    result = ModelPublisher(container, concurrency=4).push(demo_gguf, "m.gguf", progress=progress)
    assert result.sha256 == demo_sha256 and result.previous is None
    assert sum(progressed) == demo_gguf.stat().st_size and len(progressed) > 1
    assert max(progressed) <= BLOCK_BYTES
    blob = container.get_blob_client("m.gguf")
    props = blob.get_blob_properties()
    assert props.metadata["sha256"] == demo_sha256
    assert GGUFFacts.from_metadata(props.metadata) == read_facts(demo_gguf)
    assert len(blob.get_block_list("committed")[0]) == len(progressed)
    assert blob_sha256(container, "m.gguf") == demo_sha256
    location = BlobLocation(container.container_name, "m.gguf", connection_string=azurite.connection_string)
    fetched = BlobModelSource(location, tmp_path).fetch()
    assert fetched.sha256 == demo_sha256


def test_push_never_holds_the_whole_file_in_memory(container: ContainerClient, gemma_gguf: Path) -> None:
    size = gemma_gguf.stat().st_size
    tracemalloc.start()
    try:
        ModelPublisher(container, concurrency=2).push(gemma_gguf, "g.gguf")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # At most 2 x concurrency blocks are read ahead of the upload; the SDK copies one block per request at most.
    assert peak < 8 * BLOCK_BYTES < size / 3, f"peak {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"


def test_push_over_a_model_keeps_it_and_rollback_restores_it(
    container: ContainerClient, demo_gguf: Path, demo_sha256: str, gemma_gguf: Path, gemma_sha256: str
) -> None:
    publisher = ModelPublisher(container)
    publisher.push(demo_gguf, "m.gguf")
    second = publisher.push(gemma_gguf, "m.gguf")
    assert second.previous is not None and second.previous.sha256 == demo_sha256

    (model,) = publisher.list()
    assert model.name == "m.gguf" and not model.versioning
    assert [v.sha256 for v in model.versions] == [gemma_sha256, demo_sha256]
    assert model.current.facts is not None and model.current.facts.architecture == "gemma3"
    assert model.versions[1].facts is not None and model.versions[1].facts.architecture == "llama"

    restored = publisher.rollback("m.gguf")
    assert restored.sha256 == demo_sha256
    assert blob_sha256(container, "m.gguf") == demo_sha256
    assert [v.sha256 for v in publisher.describe("m.gguf").versions] == [demo_sha256, gemma_sha256]

    forward = publisher.rollback("m.gguf", to=gemma_sha256[:12])
    assert forward.sha256 == gemma_sha256
    assert blob_sha256(container, "m.gguf") == gemma_sha256
    # One archived copy per content: rolling back and forth does not pile copies up.
    archived = [b.name for b in container.list_blobs(name_starts_with=ARCHIVE_PREFIX)]
    assert len(archived) == 1


def test_rollback_refusals_are_one_line(container: ContainerClient, demo_gguf: Path) -> None:
    publisher = ModelPublisher(container)
    with pytest.raises(PublishError, match="does not exist"):
        publisher.rollback("m.gguf")
    publisher.push(demo_gguf, "m.gguf")
    with pytest.raises(PublishError, match="no earlier version"):
        publisher.rollback("m.gguf")
    with pytest.raises(PublishError, match="no version 2020-01-01"):
        publisher.rollback("m.gguf", to="2020-01-01")


def test_archived_copies_are_bounded_by_keep(container: ContainerClient, tmp_path: Path, demo_gguf: Path) -> None:
    publisher = ModelPublisher(container, keep_archived=2)
    base = demo_gguf.read_bytes()
    for i in range(4):
        variant = tmp_path / f"v{i}.gguf"
        variant.write_bytes(base + bytes([i]) * 32)  # trailing bytes: still a readable GGUF, another sha256
        publisher.push(variant, "m.gguf")
    assert len(publisher.describe("m.gguf").versions) == 3  # the current one and two archived


def test_a_push_racing_another_write_is_refused_not_lost(container: ContainerClient, demo_gguf: Path) -> None:
    publisher = ModelPublisher(container, concurrency=1)
    publisher.push(demo_gguf, "m.gguf")
    raced = threading.Event()

    def someone_else_writes(_: int) -> None:
        if not raced.is_set():
            raced.set()
            container.upload_blob("m.gguf", b"GGUF" + b"\0" * 60, overwrite=True)

    with pytest.raises(PublishError, match="changed meanwhile"):
        publisher.push(demo_gguf, "m.gguf", progress=someone_else_writes)
    assert container.get_blob_client("m.gguf").get_blob_properties().size == 64


def test_a_non_gguf_push_changes_nothing(container: ContainerClient, demo_gguf: Path, tmp_path: Path) -> None:
    publisher = ModelPublisher(container)
    publisher.push(demo_gguf, "m.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\x89PNG" + b"\0" * 1000)
    with pytest.raises(VerificationError):
        publisher.push(junk, "m.gguf")
    assert len(publisher.describe("m.gguf").versions) == 1

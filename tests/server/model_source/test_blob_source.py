"""BlobModelSource against Azurite: what is downloaded, verified, cached and refused."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient, ContentSettings

from server.model_source import blob
from server.model_source.base import FetchResult
from server.model_source.blob import BlobLocation, BlobModelSource
from server.model_source.errors import SourceUnavailableError, VerificationError
from tests.support.azurite import Azurite

FAKE_GGUF = b"GGUF" + (3).to_bytes(4, "little") + bytes(range(256)) * 4096  # a valid header, about 1 MiB


def source(azurite: Azurite, container: ContainerClient, cache: Path, name: str = "m.gguf") -> BlobModelSource:
    location = BlobLocation(container.container_name, name, connection_string=azurite.connection_string)
    return BlobModelSource(location, cache, concurrency=4)


def upload(container: ContainerClient, data: bytes, name: str = "m.gguf", **kwargs: object) -> None:
    container.upload_blob(name, data, overwrite=True, max_concurrency=2, **kwargs)


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def sha256_meta(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest()}


def test_download_verifies_sha256_and_second_fetch_downloads_nothing(
    azurite: Azurite, container: ContainerClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upload(container, FAKE_GGUF, metadata=sha256_meta(FAKE_GGUF))
    caplog.set_level(logging.INFO)
    first = source(azurite, container, tmp_path).fetch()
    assert first.bytes_downloaded == len(FAKE_GGUF)
    assert first.path.read_bytes() == FAKE_GGUF
    assert "sha256 verified" in caplog.text
    second = source(azurite, container, tmp_path).fetch()
    assert second.cache_hit and second.path == first.path
    assert "cache hit" in caplog.text


def test_content_md5_is_verified_when_there_is_no_sha256(
    azurite: Azurite, container: ContainerClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    md5 = hashlib.md5(FAKE_GGUF, usedforsecurity=False).digest()
    upload(container, FAKE_GGUF, content_settings=ContentSettings(content_md5=md5))
    caplog.set_level(logging.INFO)
    assert source(azurite, container, tmp_path).fetch().path.read_bytes() == FAKE_GGUF
    assert "Content-MD5 verified" in caplog.text


def test_wrong_content_md5_is_refused(azurite: Azurite, container: ContainerClient, tmp_path: Path) -> None:
    upload(container, FAKE_GGUF)
    # The service checks an MD5 sent with an upload, so a wrong one can only be set afterwards, as rot would.
    container.get_blob_client("m.gguf").set_http_headers(ContentSettings(content_md5=b"\0" * 16))
    with pytest.raises(VerificationError, match="MD5"):
        source(azurite, container, tmp_path).fetch()
    assert files(tmp_path) == []


def test_wrong_sha256_is_refused_and_leaves_nothing_behind(
    azurite: Azurite, container: ContainerClient, tmp_path: Path
) -> None:
    upload(container, FAKE_GGUF, metadata={"sha256": "0" * 64})
    with pytest.raises(VerificationError, match="sha256"):
        source(azurite, container, tmp_path).fetch()
    assert files(tmp_path) == []


def test_a_refused_version_is_not_downloaded_again(
    azurite: Azurite, container: ContainerClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    upload(container, FAKE_GGUF, metadata={"sha256": "0" * 64})
    src = source(azurite, container, tmp_path)
    with pytest.raises(VerificationError):
        src.fetch()
    caplog.set_level(logging.INFO)
    with pytest.raises(VerificationError, match="sha256"):
        src.fetch()
    assert "downloading" not in caplog.text


def test_non_gguf_with_a_matching_checksum_is_refused(
    azurite: Azurite, container: ContainerClient, tmp_path: Path
) -> None:
    junk = b"<html>not a model</html>" * 1000
    upload(container, junk, metadata=sha256_meta(junk))
    with pytest.raises(VerificationError, match="not a GGUF file"):
        source(azurite, container, tmp_path).fetch()
    assert files(tmp_path) == []


def test_leftover_partial_download_is_discarded_not_trusted_and_one_being_written_is_kept(
    azurite: Azurite, container: ContainerClient, tmp_path: Path
) -> None:
    upload(container, FAKE_GGUF, metadata=sha256_meta(FAKE_GGUF))
    src = source(azurite, container, tmp_path)
    entry = src.fetch().path
    stale = entry.with_name(entry.name + ".12345.partial")
    stale.write_bytes(FAKE_GGUF[:1000])
    entry.unlink()
    with blob._downloads.writing(entry.with_name("sha256-" + "0" * 64 + ".gguf")) as written:
        written.write_bytes(b"another version, being downloaded by another thread")
        result = src.fetch()
        assert written.exists(), "removed under the download writing it"
    assert result.bytes_downloaded == len(FAKE_GGUF)
    assert not stale.exists()


def test_new_blob_version_is_downloaded_and_the_one_before_the_previous_pruned(
    azurite: Azurite, container: ContainerClient, tmp_path: Path
) -> None:
    upload(container, FAKE_GGUF, metadata=sha256_meta(FAKE_GGUF))
    oldest = source(azurite, container, tmp_path).fetch().path
    newer = FAKE_GGUF + b"v2"
    upload(container, newer, metadata=sha256_meta(newer))
    new = source(azurite, container, tmp_path).fetch()
    assert new.path != oldest and new.bytes_downloaded == len(newer)
    assert oldest.exists()  # the previous model stays cached: rolling back to it downloads nothing
    for later in (b"v3", b"v4"):
        upload(container, FAKE_GGUF + later, metadata=sha256_meta(FAKE_GGUF + later))
        source(azurite, container, tmp_path).fetch()
    assert not oldest.exists() and new.path.exists()


def test_the_cache_is_keyed_by_content_so_a_rollback_downloads_nothing(
    azurite: Azurite, container: ContainerClient, tmp_path: Path
) -> None:
    upload(container, FAKE_GGUF, metadata=sha256_meta(FAKE_GGUF))
    first = source(azurite, container, tmp_path).fetch()
    newer = FAKE_GGUF + b"v2"
    upload(container, newer, metadata=sha256_meta(newer))
    source(azurite, container, tmp_path).fetch()
    upload(container, FAKE_GGUF, metadata=sha256_meta(FAKE_GGUF))  # same content, a new ETag
    again = source(azurite, container, tmp_path).fetch()
    assert again.cache_hit and again.path == first.path and again.etag != first.etag


def test_probe_is_a_conditional_request_on_the_etag(
    azurite: Azurite, container: ContainerClient, tmp_path: Path
) -> None:
    upload(container, FAKE_GGUF, metadata=sha256_meta(FAKE_GGUF))
    src = source(azurite, container, tmp_path)
    etag = src.probe(None)
    assert etag is not None and src.probe(etag) is None
    upload(container, FAKE_GGUF + b"v2")
    changed = src.probe(etag)
    assert changed is not None and changed != etag


def test_a_pinned_version_is_served_from_its_archived_copy(
    azurite: Azurite, container: ContainerClient, tmp_path: Path, demo_gguf: Path, demo_sha256: str
) -> None:
    from server.model_source.publish import ModelPublisher

    publisher = ModelPublisher(container)
    publisher.push(demo_gguf, "m.gguf")
    variant = tmp_path / "variant.gguf"
    variant.write_bytes(demo_gguf.read_bytes() + b"v2")
    publisher.push(variant, "m.gguf")
    location = BlobLocation(container.container_name, "m.gguf", connection_string=azurite.connection_string)
    pinned = BlobModelSource(location, tmp_path, pinned_version=demo_sha256[:12])
    assert pinned.fetch().sha256 == demo_sha256
    with pytest.raises(SourceUnavailableError, match="no version"):
        BlobModelSource(location, tmp_path, pinned_version="feedfacefeedface").fetch()


def test_missing_blob_and_unreachable_endpoint_are_transient(
    azurite: Azurite, container: ContainerClient, tmp_path: Path
) -> None:
    with pytest.raises(SourceUnavailableError, match="does not exist"):
        source(azurite, container, tmp_path, "absent.gguf").fetch()
    dead = BlobLocation(
        "models", "m.gguf", connection_string=azurite.connection_string.replace(f":{azurite.port}/", ":9/")
    )
    with pytest.raises(SourceUnavailableError, match="unreachable"):
        BlobModelSource(dead, tmp_path).fetch()


def test_blob_names_with_slashes_are_flattened_inside_the_cache(
    azurite: Azurite, container: ContainerClient, tmp_path: Path
) -> None:
    name = "team/llama/model.gguf"
    upload(container, FAKE_GGUF, name=name, metadata=sha256_meta(FAKE_GGUF))
    path = source(azurite, container, tmp_path, name).fetch().path
    assert path.resolve().is_relative_to(tmp_path.resolve())
    assert path.parent.name == "team%2Fllama%2Fmodel.gguf"


@pytest.mark.parametrize("sources", ["one", "two"])
def test_fetches_of_the_same_version_at_once_share_one_download(
    azurite: Azurite, container: ContainerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: str
) -> None:
    # Two catalogue entries on one blob, or a reload while a cancelled watcher's download still runs in its thread:
    # both wrote the same `.partial`, and one removed or renamed it under the other (FileNotFoundError).
    data = b"GGUF" + (3).to_bytes(4, "little") + bytes(range(256)) * (4096 * 17)  # 17 MiB: three ranges
    upload(container, data, metadata=sha256_meta(data))
    first = source(azurite, container, tmp_path)
    second = first if sources == "one" else source(azurite, container, tmp_path)
    progress = blob._Progress.__call__

    def slow_first(self: blob._Progress, current: int, total: int | None) -> None:
        if threading.current_thread().name == "first":
            time.sleep(0.5)  # the first download is under way when the second begins
        progress(self, current, total)

    monkeypatch.setattr(blob._Progress, "__call__", slow_first)
    results: dict[str, FetchResult | BaseException] = {}

    def fetch(name: str, src: BlobModelSource) -> None:
        try:
            results[name] = src.fetch()
        except BaseException as exc:
            results[name] = exc

    threads = [threading.Thread(target=fetch, args=(n, s), name=n) for n, s in (("first", first), ("second", second))]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    for thread in threads:
        thread.join(60)
    fetched = [results["first"], results["second"]]
    assert all(isinstance(r, FetchResult) for r in fetched), fetched
    assert sorted(r.bytes_downloaded for r in fetched if isinstance(r, FetchResult)) == [0, len(data)]
    assert [p.name.endswith(".gguf") for p in files(tmp_path)] == [True]

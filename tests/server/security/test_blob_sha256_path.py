"""Threat: a blob's metadata writing outside the model cache. The server names a cached model after the blob's
`sha256` metadata (`sha256-<value>.gguf`), and used to take the value as it was: metadata such as `../../x` put the
download's partial file, and a cache hit's touch, outside the cache directory. Anyone who may set a blob's metadata
(not only a `ggufstack model push`) could aim it. Only exactly 64 hexadecimal digits are accepted; anything else is a
refused version (VerificationError), checked before the path is built.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

from server.model_source.blob import BlobLocation, BlobModelSource
from server.model_source.errors import VerificationError
from tests.support.azurite import Azurite

FAKE_GGUF = b"GGUF" + (3).to_bytes(4, "little") + bytes(range(256)) * 64


def _fetch(azurite: Azurite, container: ContainerClient, cache: Path, sha256: str):
    container.upload_blob("m.gguf", FAKE_GGUF, overwrite=True, metadata={"sha256": sha256})
    location = BlobLocation(container.container_name, "m.gguf", connection_string=azurite.connection_string)
    return BlobModelSource(location, cache).fetch()


@pytest.mark.parametrize(
    "sha256",
    [
        "../../../../escaped",
        "a" * 63,
        "a" * 65,
        "g" * 64,
        "/" + "a" * 63,
        "a" * 32 + "/../" + "a" * 28,
    ],
)
def test_sha256_metadata_that_is_not_64_hex_digits_is_refused_before_it_names_a_file(
    azurite: Azurite, container: ContainerClient, tmp_path: Path, sha256: str
) -> None:
    cache = tmp_path / "deep" / "er" / "cache"
    with pytest.raises(VerificationError, match="not 64 hexadecimal digits"):
        _fetch(azurite, container, cache, sha256)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written


def test_a_real_sha256_in_capitals_is_accepted(azurite: Azurite, container: ContainerClient, tmp_path: Path) -> None:
    digest = hashlib.sha256(FAKE_GGUF).hexdigest()
    fetched = _fetch(azurite, container, tmp_path, f" {digest.upper()} ")
    assert fetched.sha256 == digest and fetched.path.name == f"sha256-{digest}.gguf"

"""Publishing models to the container the servers watch: push and roll back (the catalogue lists them).

A push uploads the file in parallel blocks (Content-MD5 on each), computes its sha256 while reading it, and commits
the block list with the sha256 and the GGUF facts as metadata, in one step: a server never sees a half-written blob.
The commit is conditional on the blob the push started from, so two pushes racing on one blob cannot lose one of them
silently.

Earlier versions are kept one of two ways, chosen per blob by what the account does:
- blob versioning on (real Azure, recommended): the service keeps every version; rollback copies the chosen version
  over the current one (Azure's documented way to restore a version), which makes it a new current version.
- no versioning (Azurite, or an account without it): before a push or rollback replaces the current blob, it is
  copied server-side to `ARCHIVE_PREFIX<name>/<version id>`, with its metadata; rollback copies an archived copy back.
  The version id of an archived copy is the time its content became current, in Azure's version id format.
Either way, the servers identify a model by its sha256, so rolling back to a model they still have cached costs no
download.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from pathlib import Path
from typing import TypedDict

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobClient, BlobProperties, ContainerClient, ContentSettings

from server.model_source.catalogue import (
    ARCHIVED_NS_KEY,
    CHANGED_MEANWHILE,
    CURRENT_SINCE_KEY,
    SHA256_KEY,
    ModelBlob,
    ModelCatalogue,
    ModelVersion,
    PublishError,
    archive_dir,
    first_line,
    matching_version,
    version_stamp,
)
from server.model_source.facts import GGUFFacts, read_facts

MIB = 1024 * 1024
BLOCK_BYTES = 8 * MIB
DEFAULT_KEEP_ARCHIVED = 5
_COPY_POLL_S = 0.5
_COPY_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class PushResult:
    name: str
    sha256: str
    size: int
    facts: GGUFFacts
    seconds: float
    version_id: str
    previous: ModelVersion | None


# The SDK passes a keyword it does not use (an etag without a condition, say) on to the HTTP session, which refuses
# it: a condition's keywords are given only when set, never as None.
class _Match(TypedDict, total=False):
    etag: str
    match_condition: MatchConditions


class _CopyOptions(_Match, total=False):
    metadata: dict[str, str]
    source_etag: str
    source_match_condition: MatchConditions


class ModelPublisher(ModelCatalogue):
    """Push and roll back the GGUF blobs of one container (and list them, as its catalogue)."""

    def __init__(
        self, container: ContainerClient, *, concurrency: int = 4, keep_archived: int = DEFAULT_KEEP_ARCHIVED
    ) -> None:
        super().__init__(container)
        self._concurrency = concurrency
        self._keep_archived = keep_archived

    def push(
        self,
        path: Path,
        name: str,
        *,
        facts: GGUFFacts | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> PushResult:
        """Upload `path` as blob `name`; `progress` is called with the bytes of each block once it is stored.

        `facts` are those of `read_facts(path)` when the caller has read them already (to refuse a file before
        showing progress); a file that is not GGUF is refused before anything is uploaded.
        """
        if not path.is_file():
            raise PublishError(f"{path} is not a file")
        facts = facts or read_facts(path)
        started = time.monotonic()
        blob = self._container.get_blob_client(name)
        current = self._call(name, lambda: _properties_or_none(blob))
        size = path.stat().st_size
        block_ids, sha256 = self._stage_blocks(blob, path, progress or (lambda _n: None))
        previous = None
        if current is not None:
            previous = self._version_of(current, is_current=False)
            if current.version_id is None:
                self._call(name, lambda: self._archive(blob, current))
        metadata = {SHA256_KEY: sha256, **facts.to_metadata()}
        condition: _Match = (
            {"etag": current.etag, "match_condition": MatchConditions.IfNotModified}
            if current is not None
            else {"match_condition": MatchConditions.IfMissing}
        )
        try:
            committed = blob.commit_block_list(
                [BlobBlock(block_id) for block_id in block_ids],
                metadata=metadata,
                content_settings=ContentSettings(content_type="application/octet-stream"),
                **condition,
            )
        except (ResourceModifiedError, ResourceExistsError):
            raise PublishError(CHANGED_MEANWHILE.format(name=name)) from None
        except AzureError as exc:
            raise PublishError(f"cannot commit blob {name}: {first_line(exc)}") from None
        return PushResult(name, sha256, size, facts, time.monotonic() - started, _version_id(committed), previous)

    def _stage_blocks(self, blob: BlobClient, path: Path, progress: Callable[[int], None]) -> tuple[list[str], str]:
        """Read the file once, in order (for the sha256), while up to `concurrency` blocks upload at a time."""
        hasher = hashlib.sha256()
        # Block ids must have one length within a blob; a per-push prefix keeps a racing push's blocks apart.
        prefix = uuid.uuid4().hex
        block_ids: list[str] = []
        # Bounds the blocks read but not yet stored, hence the memory a push needs, whatever the file size.
        in_memory = threading.BoundedSemaphore(self._concurrency * 2)
        pending: set[Future[None]] = set()

        def stage(block_id: str, data: bytes) -> None:
            try:
                # validate_content sends each block's Content-MD5; the service refuses a block corrupted on the way.
                blob.stage_block(block_id, data, validate_content=True)
                progress(len(data))
            finally:
                in_memory.release()

        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="push") as pool, path.open("rb") as f:
            try:
                for index in count():
                    in_memory.acquire()
                    data = f.read(BLOCK_BYTES)
                    if not data:
                        in_memory.release()
                        break
                    hasher.update(data)
                    block_id = base64.b64encode(f"{prefix}-{index:08d}".encode()).decode()
                    block_ids.append(block_id)
                    pending.add(pool.submit(stage, block_id, data))
                    pending = self._raise_first_failure(pending, blob.blob_name)
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                self._raise_first_failure(done, blob.blob_name)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return block_ids, hasher.hexdigest()

    @staticmethod
    def _raise_first_failure(futures: set[Future[None]], name: str) -> set[Future[None]]:
        still_running = set()
        for future in futures:
            if not future.done():
                still_running.add(future)
            elif (exc := future.exception()) is not None:
                raise PublishError(f"upload of blob {name} failed: {first_line(exc)}")
        return still_running

    def rollback(self, name: str, to: str | None = None) -> ModelVersion:
        """Make an earlier version current again: `to` (a version id or a sha256 prefix), or by default the newest
        version whose content differs from the current one. Returns the version now current."""
        model = self.describe(name)
        target = self._pick(model, to)
        blob = self._container.get_blob_client(name)
        current_props = self._call(name, blob.get_blob_properties)
        archive_blob = target.archive_blob
        if archive_blob is None:
            source_url = f"{blob.url}{'&' if '?' in blob.url else '?'}versionid={target.version_id}"
        else:
            self._call(name, lambda: self._archive(blob, current_props))
            source_url = self._container.get_blob_client(archive_blob).url
        self._call(name, lambda: self._copy(blob, source_url, etag=current_props.etag))
        if archive_blob is not None:
            # Its content is current again; it is archived anew when something replaces it.
            self._call(name, lambda: self._container.delete_blob(archive_blob))
        return self._version_of(self._call(name, blob.get_blob_properties), is_current=True)

    @staticmethod
    def _pick(model: ModelBlob, to: str | None) -> ModelVersion:
        older = model.versions[1:]
        if to is None:
            for version in older:
                if version.sha256 is None or version.sha256 != model.current.sha256:
                    return version
            raise PublishError(f"blob {model.name} has no earlier version to roll back to")
        found = matching_version(model, to)
        if found.is_current or (model.current.sha256 and found.sha256 == model.current.sha256):
            raise PublishError(f"version {to} of blob {model.name} is the current one already")
        return found

    def _archive(self, blob: BlobClient, current: BlobProperties) -> None:
        sha256 = (current.metadata or {}).get(SHA256_KEY)
        directory = archive_dir(blob.blob_name)
        existing = sorted(
            self._container.list_blobs(name_starts_with=directory, include=["metadata"]),
            key=lambda p: p.name,
            reverse=True,
        )
        # Named by when the content became current; the sha256 (or ETag) keeps two pushes in one second apart.
        tag = (sha256 or current.etag.strip('"'))[:12]
        archive = self._container.get_blob_client(f"{directory}{version_stamp(current.last_modified)}-{tag}")
        metadata = {
            **(current.metadata or {}),
            ARCHIVED_NS_KEY: str(time.time_ns()),
            CURRENT_SINCE_KEY: current.last_modified.isoformat(),
        }
        self._copy(archive, blob.url, source_etag=current.etag, metadata=metadata)
        # One archived copy per content (the newest), and no more than keep_archived of them.
        kept = 1
        for props in existing:
            if props.name == archive.blob_name:
                continue
            same_content = sha256 is not None and (props.metadata or {}).get(SHA256_KEY) == sha256
            if same_content or kept >= self._keep_archived:
                self._container.delete_blob(props.name)
            else:
                kept += 1

    def _copy(
        self,
        target: BlobClient,
        source_url: str,
        *,
        etag: str | None = None,
        source_etag: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        """Server-side copy, waited for (copies within an account usually finish at once); the source's metadata
        comes along unless `metadata` replaces it."""
        options: _CopyOptions = {} if metadata is None else {"metadata": metadata}
        if etag is not None:
            options.update({"etag": etag, "match_condition": MatchConditions.IfNotModified})
        if source_etag is not None:
            options.update({"source_etag": source_etag, "source_match_condition": MatchConditions.IfNotModified})
        started = time.monotonic()
        status = _str_or_none(target.start_copy_from_url(source_url, **options)["copy_status"])
        while status == "pending":
            if time.monotonic() - started > _COPY_TIMEOUT_S:
                raise PublishError(f"copy to blob {target.blob_name} did not finish in {_COPY_TIMEOUT_S:.0f} s")
            time.sleep(_COPY_POLL_S)
            status = target.get_blob_properties().copy.status
        if status != "success":
            raise PublishError(f"copy to blob {target.blob_name} ended with status {status}")


def _str_or_none(value: str | datetime) -> str | None:
    # The SDK types every value of its replies as str | datetime; the copy status is a str.
    return value if isinstance(value, str) else None


def _version_id(committed: dict[str, str | datetime]) -> str:
    """The version id of a commit; where versioning is off, a stamp of its Last-Modified time in that format."""
    version_id = committed.get("version_id")
    if isinstance(version_id, str) and version_id:
        return version_id
    last_modified = committed["last_modified"]
    if not isinstance(last_modified, datetime):
        raise PublishError(f"the service's reply to a commit has no time in last_modified: {last_modified!r}")
    return version_stamp(last_modified)


def _properties_or_none(blob: BlobClient) -> BlobProperties | None:
    try:
        return blob.get_blob_properties()
    except ResourceNotFoundError:
        return None

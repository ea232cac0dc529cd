"""Azure Blob storage as the model source: ranged parallel download, checksum and header verification, atomic
publication into a cache keyed by the file's sha256 (from the blob's metadata; else by the blob's version or ETag).

Keying by content means a rollback to a model still in the cache, or a restart after a swap, downloads nothing. The
cache keeps the `KEEP_CACHED` most recently used files per blob: the serving model, the one before it, and a new one
being swapped in; a file the server refused to serve is discarded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import CredentialUnavailableError
from azure.storage.blob import BlobClient, BlobProperties, ContainerClient

from server.config.redaction import redact_urls, redacted_url
from server.model_source.base import FetchResult
from server.model_source.catalogue import ModelCatalogue, PublishError
from server.model_source.errors import ModelSourceError, SourceUnavailableError, VerificationError
from server.model_source.gguf import check_gguf_header
from server.model_source.storage import container_client

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

MIB = 1024 * 1024
_CHUNK_BYTES = 8 * MIB
_HASH_BLOCK = 4 * MIB
_PROGRESS_EVERY_S = 2.0
# The new model, the serving one and the one before it (a rollback target) while a swap runs.
KEEP_CACHED = 3
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class BlobLocation:
    container: str
    name: str
    account_url: str | None = None
    connection_string: str | None = None

    def describe(self) -> str:
        where = redacted_url(self.account_url) if self.account_url else "connection string"
        return f"blob {self.container}/{self.name} ({where})"


class BlobModelSource:
    """Downloads one blob into `cache_dir` at most once per content.

    With `pinned_version` (a version id or sha256 prefix, as `ggufstack model list` shows) it serves that version of
    the blob: a blob version where the account keeps versions, else the archived copy `model push` made.
    """

    def __init__(
        self, location: BlobLocation, cache_dir: Path, *, concurrency: int = 4, pinned_version: str | None = None
    ) -> None:
        self.location = location
        self.pinned_version = pinned_version
        self._cache_dir = cache_dir
        self._concurrency = concurrency
        self._container: ContainerClient | None = None
        self._client: BlobClient | None = None
        self._rejected: dict[str, str] = {}

    def describe(self) -> str:
        return self.location.describe()

    def default_model_id(self) -> str:
        return self.location.name.rsplit("/", 1)[-1]

    @property
    def _blob(self) -> BlobClient:
        # Built on first use, inside the loader's retry loop: a credential that cannot even be constructed (bad
        # AZURE_* variables) then shows as a readiness reason instead of killing the process at startup.
        if self._client is None:
            loc = self.location
            # Ranges of a long download keep a few quick retries (one lost chunk must not restart gigabytes); the
            # properties probe gets none, see fetch().
            self._container = container_client(
                loc.container,
                account_url=loc.account_url,
                connection_string=loc.connection_string,
                max_single_get_size=_CHUNK_BYTES,
                max_chunk_get_size=_CHUNK_BYTES,
            )
            self._client = self._pinned_blob() if self.pinned_version else self._container.get_blob_client(loc.name)
        return self._client

    def _pinned_blob(self) -> BlobClient:
        assert self._container is not None and self.pinned_version is not None
        try:
            version = ModelCatalogue(self._container).find(self.location.name, self.pinned_version)
        except PublishError as exc:
            raise SourceUnavailableError(f"pinned version: {exc}") from None
        if version.archive_blob is not None:
            return self._container.get_blob_client(version.archive_blob)
        if version.is_current:
            return self._container.get_blob_client(self.location.name)
        return self._container.get_blob_client(self.location.name, version_id=version.version_id)

    def probe(self, known_etag: str | None) -> str | None:
        """The blob's ETag if it differs from `known_etag`, else None: one conditional request (304 when unchanged)."""

        def changed_properties() -> BlobProperties | None:
            if known_etag is None:
                return self._blob.get_blob_properties(retry_total=0)
            try:
                return self._blob.get_blob_properties(
                    retry_total=0, etag=known_etag, match_condition=MatchConditions.IfModified
                )
            except (ResourceNotModifiedError, ResourceModifiedError):
                return None

        props = self._call(changed_properties)
        return None if props is None else props.etag

    def fetch(self) -> FetchResult:
        """Return a verified local copy of the blob, downloading it only if this version is not cached."""
        started = time.monotonic()
        # No SDK retries here: the loader retries with its own backoff and reports readiness in between.
        props = self._call(self._blob.get_blob_properties, retry_total=0)
        version = self.pinned_version or props.version_id or props.etag.strip('"')
        sha256 = self._vouched_sha256(props)
        target = self._entry_dir() / (f"sha256-{sha256}.gguf" if sha256 else f"{_safe(version)}.gguf")
        # One download per file at a time, process-wide: two catalogue entries on the same blob, or a reload while a
        # cancelled watcher's download still runs in its thread, fetch the same version; the second waits and finds
        # the first's file.
        with _downloads.of(target):
            if target.is_file() and target.stat().st_size == props.size:
                target.touch()  # most recently used: kept by the pruning of the next download
                log.info(
                    "cache hit: %s version %s at %s (0 bytes downloaded)", self.location.describe(), version, target
                )
                return FetchResult(target, 0, time.monotonic() - started, version, sha256, props.etag)
            if version in self._rejected:
                raise VerificationError(self._rejected[version])
            target.parent.mkdir(parents=True, exist_ok=True)
            with _downloads.writing(target) as partial:
                self._download(props, partial)
                try:
                    self._verify(props, partial)
                except VerificationError as exc:
                    self._rejected[version] = str(exc)
                    raise
                os.replace(partial, target)
                _fsync_dir(target.parent)
            self._prune(keep=target)
        seconds = time.monotonic() - started
        log.info(
            "downloaded %s version %s: %.1f MiB in %.1f s (%.1f MiB/s)",
            self.location.describe(),
            version,
            props.size / MIB,
            seconds,
            props.size / MIB / max(seconds, 1e-6),
        )
        return FetchResult(target, props.size, seconds, version, sha256, props.etag)

    def discard(self, path: Path) -> None:
        """Drop a cached file the server refused (it failed to load), so it takes no place a good model needs."""
        if path.parent == self._entry_dir():
            path.unlink(missing_ok=True)

    def _entry_dir(self) -> Path:
        return self._cache_dir / _safe(self.location.container) / _safe(self.location.name)

    def _prune(self, keep: Path) -> None:
        # A file still mapped by the model being swapped out stays readable after its unlink (POSIX).
        others = sorted((p for p in self._entry_dir().glob("*.gguf") if p != keep), key=_mtime, reverse=True)
        for old in others[KEEP_CACHED - 1 :]:
            old.unlink(missing_ok=True)

    def _download(self, props: BlobProperties, partial: Path) -> None:
        progress = _Progress(self.location.describe(), props.size)
        with partial.open("wb") as f:
            # Pinning the ETag makes the service refuse ranges from a blob replaced mid-download (412), so a file is
            # never stitched together from two versions.
            downloader = self._call(
                self._blob.download_blob,
                etag=props.etag,
                match_condition=MatchConditions.IfNotModified,
                max_concurrency=self._concurrency,
                progress_hook=progress,
            )
            self._call(downloader.readinto, f)
            f.flush()
            os.fsync(f.fileno())
        if partial.stat().st_size != props.size:
            raise SourceUnavailableError(f"download of {self.location.describe()} ended early; will retry")

    def _vouched_sha256(self, props: BlobProperties) -> str | None:
        """The blob's sha256 metadata, which names its cache file: anything but 64 hex digits (a path, say) is
        refused before it is used."""
        value = (props.metadata or {}).get("sha256")
        if value is None:
            return None
        sha256 = value.strip().lower()
        if not _SHA256.fullmatch(sha256):
            raise VerificationError(
                f"{self.location.describe()} has sha256 metadata that is not 64 hexadecimal digits: {value[:80]!r}"
            )
        return sha256

    def _verify(self, props: BlobProperties, path: Path) -> None:
        expected_sha256 = self._vouched_sha256(props)
        content_md5 = props.content_settings.content_md5
        if expected_sha256:
            actual = _digest(path, hashlib.sha256())
            if actual != expected_sha256:
                raise VerificationError(
                    f"{self.location.describe()} failed verification: sha256 is {actual}, "
                    f"metadata says {expected_sha256}"
                )
            log.info("sha256 verified: %s", actual)
        elif content_md5:
            actual = _digest(path, hashlib.md5(usedforsecurity=False))
            expected = bytes(content_md5).hex()
            if actual != expected:
                raise VerificationError(
                    f"{self.location.describe()} failed verification: MD5 is {actual}, Content-MD5 says {expected}"
                )
            log.info("Content-MD5 verified: %s", actual)
        else:
            log.warning(
                "%s has no sha256 metadata or Content-MD5: only its GGUF header is checked", self.location.describe()
            )
        check_gguf_header(path)

    def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run an SDK call, translating its exceptions into transient or permanent model-source errors."""
        try:
            return fn(*args, **kwargs)
        except ResourceNotFoundError:
            raise SourceUnavailableError(f"{self.location.describe()} does not exist (yet)") from None
        except ResourceModifiedError:
            raise SourceUnavailableError(f"{self.location.describe()} changed during download; will retry") from None
        except (ClientAuthenticationError, CredentialUnavailableError) as exc:
            raise SourceUnavailableError(
                f"cannot authenticate to {self.location.describe()}: {_first_line(exc)}"
            ) from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise SourceUnavailableError(f"{self.location.describe()} is unreachable: {_first_line(exc)}") from None
        except HttpResponseError as exc:
            raise SourceUnavailableError(
                f"{self.location.describe()} answered HTTP {exc.status_code}: {_first_line(exc)}"
            ) from None
        except AzureError as exc:
            raise ModelSourceError(f"{self.location.describe()}: {_first_line(exc)}") from None


class _Progress:
    """Logs bytes, MiB/s and ETA at most every few seconds; the SDK calls it from its download threads."""

    def __init__(self, what: str, total: int) -> None:
        self._what = what
        self._total = total
        self._started = self._last = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, current: int, total: int | None) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < _PROGRESS_EVERY_S and current < self._total:
                return
            self._last = now
        rate = current / max(now - self._started, 1e-6)
        eta = (self._total - current) / rate if rate else float("inf")
        log.info(
            "downloading %s: %.1f/%.1f MiB (%.0f%%), %.1f MiB/s, ETA %.0f s",
            self._what,
            current / MIB,
            self._total / MIB,
            100 * current / max(self._total, 1),
            rate / MIB,
            eta,
        )


class _Downloads:
    """The downloads this process runs, by the cache file each one makes: one at a time per file, each into a
    `.partial` of its own, and leftovers of a crashed process (never resumed: their bytes were never verified) removed
    without touching a partial another thread is writing."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._per_file: dict[Path, threading.Lock] = {}
        self._partials: set[Path] = set()

    def of(self, target: Path) -> threading.Lock:
        with self._guard:
            return self._per_file.setdefault(target, threading.Lock())

    @contextlib.contextmanager
    def writing(self, target: Path) -> Iterator[Path]:
        partial = target.with_name(f"{target.name}.{os.getpid()}-{uuid.uuid4().hex}.partial")
        with self._guard:
            for stale in target.parent.glob("*.partial"):
                if stale not in self._partials:
                    stale.unlink(missing_ok=True)
            self._partials.add(partial)
        try:
            yield partial
        finally:
            partial.unlink(missing_ok=True)
            with self._guard:
                self._partials.discard(partial)


_downloads = _Downloads()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # pruned meanwhile by another blob version's download
        return 0.0


def _digest(path: Path, hasher: hashlib._Hash) -> str:
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe(name: str) -> str:
    return quote(name, safe="")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # An SDK's message may quote the URL it called, SAS and all.
    return redact_urls(text.splitlines()[0]) if text else type(exc).__name__

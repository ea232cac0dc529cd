"""The catalogue of models in the container the servers watch: each blob's versions, current one first, whether
the account keeps versions itself or this tool archived copies (see `publish.py` for how they are made).

The blob source reads it to find a pinned version; `ggufstack model list/info` show it.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobProperties, ContainerClient

from server.model_source.errors import ModelSourceError
from server.model_source.facts import GGUFFacts

ARCHIVE_PREFIX = "ggufstack-versions/"
SHA256_KEY = "sha256"
# Archived copies only: the order they were archived in, and when their content had become current.
ARCHIVED_NS_KEY = "ggufstack_archived_ns"
CURRENT_SINCE_KEY = "ggufstack_current_since"
T = TypeVar("T")
CHANGED_MEANWHILE = "blob {name} changed meanwhile (another push or rollback?): nothing was replaced, try again"


class PublishError(ModelSourceError):
    """A push, list or rollback cannot be done; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class ModelVersion:
    version_id: str
    sha256: str | None
    size: int
    modified: datetime
    is_current: bool
    facts: GGUFFacts | None
    # The blob holding this version when it is an archived copy (accounts without versioning).
    archive_blob: str | None = None


@dataclass(frozen=True, slots=True)
class ModelBlob:
    name: str
    current: ModelVersion
    versions: list[ModelVersion]  # newest first, the current one included
    versioning: bool


class ModelCatalogue:
    """The GGUF blobs of one container and their versions."""

    def __init__(self, container: ContainerClient) -> None:
        self._container = container

    def list(self) -> list[ModelBlob]:
        """Every model blob in the container with its versions (archived copies are shown as versions)."""
        listed = self._call(
            self._container.container_name,
            lambda: list(self._container.list_blobs(include=["metadata", "versions"])),
        )
        by_name: dict[str, list[BlobProperties]] = {}
        for props in listed:
            by_name.setdefault(props.name, []).append(props)
        models = []
        for name in sorted(by_name):
            if name.startswith(ARCHIVE_PREFIX):
                continue
            models.append(self._model(name, by_name[name], self._archived_from(by_name, name)))
        return [m for m in models if m is not None]

    def describe(self, name: str) -> ModelBlob:
        listed = self._call(
            name,
            lambda: [
                *self._container.list_blobs(name_starts_with=name, include=["metadata", "versions"]),
                *self._container.list_blobs(name_starts_with=archive_dir(name), include=["metadata"]),
            ],
        )
        by_name: dict[str, list[BlobProperties]] = {}
        for props in listed:
            by_name.setdefault(props.name, []).append(props)
        model = self._model(name, by_name.get(name, []), self._archived_from(by_name, name))
        if model is None:
            raise PublishError(f"blob {name} does not exist in container {self._container.container_name}")
        return model

    def _archived_from(
        self, by_name: dict[str, builtins.list[BlobProperties]], name: str
    ) -> builtins.list[BlobProperties]:
        directory = archive_dir(name)
        return [props for blob_name, found in by_name.items() if blob_name.startswith(directory) for props in found]

    def _model(
        self, name: str, own: builtins.list[BlobProperties], archived: builtins.list[BlobProperties]
    ) -> ModelBlob | None:
        current_props = [p for p in own if p.is_current_version is not False]
        if not current_props:
            return None
        current = self._version_of(current_props[0], is_current=True)
        versioning = current_props[0].version_id is not None
        if versioning:
            older = [self._version_of(p, is_current=False) for p in own if p.is_current_version is False]
            older.sort(key=lambda v: v.version_id, reverse=True)
        else:
            archived = sorted(archived, key=lambda p: int((p.metadata or {}).get(ARCHIVED_NS_KEY, "0")), reverse=True)
            older = [self._archived_version(p) for p in archived]
        return ModelBlob(name, current, [current, *older], versioning)

    @staticmethod
    def _version_of(props: BlobProperties, *, is_current: bool) -> ModelVersion:
        metadata = props.metadata or {}
        return ModelVersion(
            version_id=props.version_id or version_stamp(props.last_modified),
            sha256=metadata.get(SHA256_KEY),
            size=props.size,
            modified=props.last_modified,
            is_current=is_current,
            facts=GGUFFacts.from_metadata(metadata),
        )

    @staticmethod
    def _archived_version(props: BlobProperties) -> ModelVersion:
        metadata = props.metadata or {}
        since = metadata.get(CURRENT_SINCE_KEY)
        return ModelVersion(
            version_id=props.name.rsplit("/", 1)[-1],
            sha256=metadata.get(SHA256_KEY),
            size=props.size,
            modified=datetime.fromisoformat(since) if since else props.last_modified,
            is_current=False,
            facts=GGUFFacts.from_metadata(metadata),
            archive_blob=props.name,
        )

    def find(self, name: str, wanted: str) -> ModelVersion:
        """The version of blob `name` that `wanted` (a version id or sha256 prefix) names, the current one first."""
        return matching_version(self.describe(name), wanted)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ResourceNotFoundError:
            raise PublishError(f"{what} not found in container {self._container.container_name}") from None
        except ResourceModifiedError:
            raise PublishError(CHANGED_MEANWHILE.format(name=what)) from None
        except AzureError as exc:
            raise PublishError(f"{what}: {first_line(exc)}") from None


def names_version(version: ModelVersion, wanted: str) -> bool:
    """Whether `wanted` (a version id, or a sha256 prefix of 8+ characters) names `version`."""
    key = wanted.strip().lower()
    return version.version_id.lower() == key or (len(key) >= 8 and (version.sha256 or "").startswith(key))


def matching_version(model: ModelBlob, wanted: str) -> ModelVersion:
    for version in model.versions:
        if names_version(version, wanted):
            return version
    known = ", ".join(v.version_id for v in model.versions)
    raise PublishError(f"blob {model.name} has no version {wanted} (versions: {known})")


def archive_dir(name: str) -> str:
    return f"{ARCHIVE_PREFIX}{name}/"


def version_stamp(when: datetime) -> str:
    """A version id in Azure's format (UTC, seven fractional digits), for copies made where versioning is off."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

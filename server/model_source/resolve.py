"""Picks the model source the settings describe: the single model's, or a catalogue entry's."""

from __future__ import annotations

from server.config.models import ModelEntry
from server.config.settings import ModelSourceKind, Settings
from server.model_source.base import ModelSource
from server.model_source.blob import BlobLocation, BlobModelSource
from server.model_source.local import FileModelSource


def model_source(settings: Settings) -> ModelSource:
    if settings.model_source_kind is ModelSourceKind.BLOB:
        return blob_source(settings, settings.blob_name or "", settings.model_version)
    return FileModelSource(settings.model_path)


def entry_source(settings: Settings, entry: ModelEntry) -> ModelSource:
    if entry.blob is not None:
        return blob_source(settings, entry.blob, entry.version)
    return FileModelSource(entry.path)


def blob_source(settings: Settings, name: str, version: str | None) -> BlobModelSource:
    """A blob in the configured container; `version` pins one version of it."""
    location = BlobLocation(
        container=settings.blob_container,
        name=name,
        account_url=settings.blob_account_url,
        connection_string=(
            settings.blob_connection_string.get_secret_value() if settings.blob_connection_string else None
        ),
    )
    return BlobModelSource(
        location, settings.cache_dir, concurrency=settings.download_concurrency, pinned_version=version
    )
